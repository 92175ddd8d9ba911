"""Shared numerical helpers and fixture paths for the parity tests."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

DATA = Path(__file__).parent / "data"
SHARED_PARITY = Path(__file__).resolve().parents[2] / "shared" / "parity"


def fresh_rng() -> np.random.Generator:
    """A generator with a new seed on every call, printed so that pytest shows it with a
    failure; MEDMAMBA_TEST_SEED=N replays one."""
    seed = int(os.environ.get("MEDMAMBA_TEST_SEED") or secrets.randbits(32))
    print(f"random inputs from seed {seed} (replay: MEDMAMBA_TEST_SEED={seed})")
    return np.random.default_rng(seed)


def rel_err(actual, expected) -> float:
    """Norm-wise relative error ||actual - expected||_2 / ||expected||_2, in float64."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


# The selective scan's arguments, in the order selective_scan takes them.
NAMES = ("u", "delta", "A", "B", "C", "D", "delta_bias")


def as_float32(arrays) -> list:
    """The scan arguments named in NAMES, taken from a mapping (an .npz file), as float32 arrays."""
    return [jnp.asarray(arrays[name], jnp.float32) for name in NAMES]


def value_and_grads(fn, args, dy):
    """y and d sum(y * dy) / d args for every non-None arg (keyed by NAMES), as one jitted
    program (one compile: interpret-mode Pallas kernels are cheap to run but slow to compile)."""
    live = [i for i, a in enumerate(args) if a is not None]

    def full(xs):
        out = list(args)
        for i, x in zip(live, xs):
            out[i] = x
        return out

    @jax.jit
    def run(xs, dy):
        y, vjp = jax.vjp(lambda *xs: fn(*full(xs)), *xs)
        return y, vjp(dy)

    y, grads = run([args[i] for i in live], jnp.asarray(dy, jnp.float32))
    return y, dict(zip([NAMES[i] for i in live], grads))
