"""Exceptions for bad training inputs; ``str(err)`` is a one-line message for the user."""

from __future__ import annotations

import contextlib
from typing import Iterator

from medmamba_jax.data.errors import DataError
from medmamba_jax.extras import MissingExtra


class ConfigError(ValueError):
    """A config key is unknown or has an unusable value."""


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a NaN loss, a checkpoint for another architecture)."""


@contextlib.contextmanager
def out_of_memory_as(what: str, advice: str) -> Iterator[None]:
    """Turns XLA's RESOURCE_EXHAUSTED (a device out of memory) into a one-line TrainingError
    naming ``what`` ran out and ``advice`` on what to lower; other errors pass unchanged."""
    try:
        yield
    except Exception as err:  # XLA raises jax.errors.JaxRuntimeError; this module does not import JAX
        if "RESOURCE_EXHAUSTED" not in str(err):
            raise
        detail = str(err).splitlines()[0].split("RESOURCE_EXHAUSTED:")[-1].strip()
        raise TrainingError(f"out of memory {what} ({detail}): {advice}") from None


def expected_errors() -> tuple[type[Exception], ...]:
    """Exceptions that mean bad input (their message is the explanation), not a bug.

    train.py and the analysis commands turn these into one ``error:`` line and exit
    status 1. An OSError (a missing file, a read-only or full disk) names its cause and
    path.
    """
    from medmamba_jax.params import CheckpointError  # loads Orbax, which importing this module (the config does) should not

    return (DataError, ConfigError, TrainingError, CheckpointError, OSError, MissingExtra)
