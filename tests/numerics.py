"""Shared numerical helpers and fixture paths for the parity tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

DATA = Path(__file__).parent / "data"
SHARED_PARITY = Path(__file__).resolve().parents[2] / "shared" / "parity"


def rel_err(actual, expected) -> float:
    """Norm-wise relative error ||actual - expected||_2 / ||expected||_2, in float64."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))
