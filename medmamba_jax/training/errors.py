"""Exceptions for bad training inputs; ``str(err)`` is a one-line message for the user."""


class ConfigError(ValueError):
    """A config key is unknown or has an unusable value."""


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a NaN loss, a checkpoint for another architecture)."""
