"""Exceptions for bad training inputs; ``str(err)`` is a one-line message for the user."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config key is unknown or has an unusable value."""


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a NaN loss, a checkpoint for another architecture)."""


def expected_errors() -> tuple[type[Exception], ...]:
    """Exceptions that mean bad input (their message is the explanation), not a bug.

    train.py and the analysis commands turn these into one ``error:`` line and exit
    status 1. An OSError (a missing file, a read-only or full disk) names its cause and
    path. Imported on call: CheckpointError's module loads Orbax, which importing
    this module (the config does) should not.
    """
    from medmamba_jax.data.errors import DataError
    from medmamba_jax.params import CheckpointError

    return (DataError, ConfigError, TrainingError, CheckpointError, OSError)
