"""Selective-scan ops: one entry point, several implementations of the same function."""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from medmamba_jax.ops.scan_config import ScanConfig
from medmamba_jax.ops.selective_scan import (
    check_cross_shapes,
    check_shapes,
    selective_scan_associative,
    selective_scan_reference,
)

SCAN_IMPLS = ("auto", "reference", "associative", "pallas", "cpu")


def _pallas_impl(scan_config: ScanConfig, interpret: bool | None) -> Callable:
    try:
        from medmamba_jax.ops.pallas_scan import selective_scan_pallas
    except ImportError as err:
        raise NotImplementedError(
            "impl='pallas' is not available in this build; use impl='associative'"
        ) from err
    return functools.partial(selective_scan_pallas, config=scan_config, interpret=interpret)


def _cpu_module():
    try:
        from medmamba_jax.ops import cpu_scan
    except (ImportError, ValueError) as err:  # numba is missing, or no thread-safe layer loads
        raise NotImplementedError(f"impl='cpu' needs numba with a thread-safe threading layer ({err}); "
                                  "use impl='associative'") from err
    return cpu_scan


def _cpu_available() -> bool:
    try:
        _cpu_module()
    except NotImplementedError:
        return False
    return True


def resolve_impl(impl: str) -> str:
    """Maps 'auto' to 'pallas' on a GPU backend, 'cpu' on a CPU backend (when numba is
    installed) and 'associative' otherwise."""
    if impl not in SCAN_IMPLS:
        raise ValueError(f"unknown scan impl {impl!r}; choose one of {SCAN_IMPLS}")
    if impl == "auto":
        backend = jax.default_backend()
        if backend == "gpu":
            return "pallas"
        return "cpu" if backend == "cpu" and _cpu_available() else "associative"
    return impl


def _implementation(impl: str, scan_config: ScanConfig, interpret: bool | None) -> Callable:
    impl = resolve_impl(impl)
    if impl == "pallas":
        return _pallas_impl(scan_config, interpret)
    if impl == "cpu":
        return _cpu_module().selective_scan_cpu
    return {"reference": selective_scan_reference, "associative": selective_scan_associative}[impl]


def selective_scan(
    u: jax.Array,
    delta: jax.Array,
    A: jax.Array,
    B: jax.Array,
    C: jax.Array,
    D: jax.Array | None = None,
    delta_bias: jax.Array | None = None,
    delta_softplus: bool = False,
    *,
    impl: str = "associative",
    scan_config: ScanConfig = ScanConfig(),
    interpret: bool | None = None,
) -> jax.Array:
    """Mamba's selective scan with ``mamba_ssm.selective_scan_fn``'s layout.

    Args:
      u, delta: (batch, K*D, L).
      A: (K*D, N), negative.
      B, C: (batch, K, N, L); group k serves channels k*D ... (k+1)*D - 1.
      D, delta_bias: (K*D,) or None.
      delta_softplus: apply softplus to delta + delta_bias.
      impl: 'reference', 'associative', 'pallas', 'cpu' or 'auto'.
      scan_config, interpret: the Pallas kernel's block sizes, and whether it runs in
        Pallas's interpreter (None: exactly when the backend is not a GPU); 'pallas' only.

    Returns:
      y: (batch, K*D, L) float32.
    """
    fn = _implementation(impl, scan_config, interpret)
    return fn(u, delta, A, B, C, D, delta_bias, delta_softplus)


def cross_selective_scan(
    u2: jax.Array,
    delta: jax.Array,
    A: jax.Array,
    B: jax.Array,
    C: jax.Array,
    D: jax.Array,
    delta_bias: jax.Array,
    *,
    impl: str = "associative",
    scan_config: ScanConfig = ScanConfig(),
    interpret: bool | None = None,
) -> jax.Array:
    """SS2D's four scan directions over two sequences, with softplus on delta.

    Direction k reads sequence ``u2[:, k % 2]``; directions 2 and 3 run it backwards.
    Every per-direction input and output is indexed in its sequence's forward order,
    so callers never build flipped copies. Sequences are channels-minor, the layout of
    SS2D's (b, H, W, D) activations flattened over H, W.

    Args:
      u2: (batch, 2, L, D), the row-major and column-major sequences.
      delta: (batch, 4, L, D).
      A: (4*D, N). B, C: (batch, 4, N, L). D, delta_bias: (4*D,).
      impl, scan_config, interpret: as in :func:`selective_scan`.

    Returns:
      y: (batch, 4, L, D) float32.
    """
    batch, length, dim = check_cross_shapes(u2, delta, A, B, C, D, delta_bias)
    impl = resolve_impl(impl)
    if impl == "pallas":
        from medmamba_jax.ops.pallas_scan import cross_selective_scan_pallas

        return cross_selective_scan_pallas(u2, delta, A, B, C, D, delta_bias, scan_config, interpret)
    if impl == "cpu":
        return _cpu_module().cross_selective_scan_cpu(u2, delta, A, B, C, D, delta_bias)

    def directed(arr):  # flips directions 2, 3 along L; axis 1 is the direction
        return jnp.concatenate([arr[:, :2], jnp.flip(arr[:, 2:], axis=-1)], axis=1)

    def mamba_layout(arr):  # (b, 4, D, L) -> (b, 4*D, L) in scan order
        return directed(arr).reshape(batch, 4 * dim, length)

    u2_t = jnp.swapaxes(u2, 2, 3)  # transpose the two sequences once, then duplicate
    y = selective_scan(
        mamba_layout(jnp.concatenate([u2_t, u2_t], axis=1)),
        mamba_layout(jnp.swapaxes(delta, 2, 3)),
        A,
        directed(B),
        directed(C),
        D,
        delta_bias,
        delta_softplus=True,
        impl=impl,
    )
    return jnp.swapaxes(directed(y.reshape(batch, 4, dim, length)), 2, 3)


__all__ = [
    "SCAN_IMPLS",
    "ScanConfig",
    "check_shapes",
    "cross_selective_scan",
    "resolve_impl",
    "selective_scan",
    "selective_scan_associative",
    "selective_scan_reference",
]
