"""Selective scan on CPUs: numba kernels (``cpu_kernels``) reached through ``jax.pure_callback``.

Public functions:

* :func:`selective_scan_cpu` — same contract as ``selective_scan_reference``.
* :func:`cross_selective_scan_cpu` — SS2D's four directions, same contract as
  ``medmamba_jax.ops.cross_selective_scan``; the reversed directions walk the sequence
  from the end inside the kernel instead of reading flipped copies.

The kernels take dt already biased and softplus'ed and leave out the skip term D*u:
both are cheap elementwise XLA work, differentiated by JAX. The scan proper is a
``jax.custom_vjp``: the forward saves its inputs and the state before every chunk of
``chunk`` positions; the backward recomputes each chunk's states from there and runs
the adjoint as a reverse scan, so memory stays O(inputs + L*N*D / chunk).

The callbacks run on the host thread XLA calls them from; numba's thread pool then
spreads the (batch, direction, channel tile) units over the cores. Under ``vmap`` the
callback runs once per mapped element (``vmap_method="sequential"``). Under a sharded
``jit`` XLA gathers the operands to one device for the callback, which is fine on a
CPU host (the kernel uses every core anyway).
"""

from __future__ import annotations

import functools
import threading

import jax
import jax.numpy as jnp
import numpy as np

from medmamba_jax.ops.cpu_kernels import backward_kernel, forward_kernel
from medmamba_jax.ops.selective_scan import add_skip, check_cross_shapes, prepare_inputs

DEFAULT_CHUNK = 32  # positions between saved states: hs is 16/32 of dt's size at N = 16
DEFAULT_TILE = 32  # channels per unit: four AVX2 vectors, a (16, 32) state of 2 KiB

# numba's default thread pool must not be entered by two host threads at once, and XLA
# may run two independent callbacks concurrently.
_KERNEL_LOCK = threading.Lock()


def _host(array) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.float32)


def _host_forward(u, dt, A, B, C, *, rev_from, chunk, tile, save_states):
    u, dt, A, B, C = map(_host, (u, dt, A, B, C))
    batch, n_dirs, length, dim = dt.shape
    y = np.empty(dt.shape, np.float32)
    n_chunks = -(-length // chunk) if save_states else 0
    hs = np.empty((batch, n_dirs, n_chunks, A.shape[1], dim), np.float32)
    with _KERNEL_LOCK:
        forward_kernel(u, dt, A, B, C, rev_from, chunk, tile, y, hs, save_states)
    return (y, hs) if save_states else y


def _host_backward(u, dt, A, B, C, hs, dy, *, rev_from, chunk, tile):
    u, dt, A, B, C, hs, dy = map(_host, (u, dt, A, B, C, hs, dy))
    batch, n_dirs, length, dim = dt.shape
    n_state, n_tiles = A.shape[1], -(-dim // tile)
    du, ddt = np.empty(dt.shape, np.float32), np.empty(dt.shape, np.float32)
    dA = np.empty((batch, n_dirs, n_state, dim), np.float32)
    dB = np.empty((batch, n_dirs, n_tiles, length, n_state), np.float32)
    dC = np.empty_like(dB)
    with _KERNEL_LOCK:
        backward_kernel(u, dt, A, B, C, hs, dy, rev_from, chunk, tile, du, ddt, dA, dB, dC)
    return du, ddt, dA, dB, dC


def _like(shape, dtype=jnp.float32) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, dtype)


def _forward(u, dt, A, B, C, rev_from, chunk, tile, save_states):
    batch, n_dirs, length, dim = dt.shape
    out = _like(dt.shape)
    if save_states:
        out = (out, _like((batch, n_dirs, -(-length // chunk), A.shape[1], dim)))
    host = functools.partial(_host_forward, rev_from=rev_from, chunk=chunk, tile=tile, save_states=save_states)
    return jax.pure_callback(host, out, u, dt, A, B, C, vmap_method="sequential")


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _scan(u, dt, A, B, C, rev_from: int, chunk: int, tile: int):
    """Channels-minor scan (layouts in ``cpu_kernels``), float32 in and out; y (b, K, L, D)."""
    return _forward(u, dt, A, B, C, rev_from, chunk, tile, save_states=False)


def _scan_fwd(u, dt, A, B, C, rev_from, chunk, tile):
    y, hs = _forward(u, dt, A, B, C, rev_from, chunk, tile, save_states=True)
    return y, (u, dt, A, B, C, hs)


def _scan_bwd(rev_from, chunk, tile, residuals, dy):
    u, dt, A, B, C, hs = residuals
    batch, n_dirs, length, dim = dt.shape
    n_tiles = -(-dim // tile)
    out = (
        _like(dt.shape),
        _like(dt.shape),
        _like((batch, *A.shape)),
        _like((batch, n_dirs, n_tiles, length, A.shape[1])),
        _like((batch, n_dirs, n_tiles, length, A.shape[1])),
    )
    host = functools.partial(_host_backward, rev_from=rev_from, chunk=chunk, tile=tile)
    du, ddt, dA, dB, dC = jax.pure_callback(host, out, u, dt, A, B, C, hs, dy, vmap_method="sequential")
    groups_u = u.shape[1]
    if groups_u != n_dirs:  # directions k and k + Gu read the same sequence
        du = du.reshape(batch, n_dirs // groups_u, groups_u, length, dim).sum(axis=1)
    return du, ddt, dA.sum(axis=0), dB.sum(axis=2), dC.sum(axis=2)


_scan.defvjp(_scan_fwd, _scan_bwd)


def _checked_settings(chunk: int, tile: int) -> tuple[int, int]:
    if chunk < 1 or tile < 1:
        raise ValueError(f"chunk and tile must be at least 1, got chunk={chunk}, tile={tile}")
    return int(chunk), int(tile)


def selective_scan_cpu(
    u, delta, A, B, C, D=None, delta_bias=None, delta_softplus: bool = False,
    *, chunk: int = DEFAULT_CHUNK, tile: int = DEFAULT_TILE,
) -> jax.Array:  # fmt: skip
    """Selective scan in mamba_ssm's layout. u, delta: (b, K*D, L); A: (K*D, N);
    B, C: (b, K, N, L); D, delta_bias: (K*D,) or None. Returns y (b, K*D, L) float32.
    ``chunk``: positions between the states saved for the backward; ``tile``: channels
    per kernel unit."""
    chunk, tile = _checked_settings(chunk, tile)
    x = prepare_inputs(u, delta, A, B, C, D, delta_bias, delta_softplus)
    batch, groups, dim, length = x.u.shape
    if 0 in x.u.shape or A.shape[1] == 0:
        return add_skip(jnp.zeros(x.u.shape, jnp.float32).reshape(u.shape), u, D)
    minor = lambda a: jnp.swapaxes(a, -1, -2)  # noqa: E731
    y = _scan(minor(x.u), minor(x.dt), minor(x.A), minor(x.B), minor(x.C), groups, chunk, tile)
    return add_skip(minor(y).reshape(batch, groups * dim, length), u, D)


def cross_selective_scan_cpu(
    u2, delta, A, B, C, D, delta_bias, *, chunk: int = DEFAULT_CHUNK, tile: int = DEFAULT_TILE
) -> jax.Array:
    """SS2D scan. u2: (b, 2, L, D); delta: (b, 4, L, D); A: (4D, N); B, C: (b, 4, N, L);
    D, delta_bias: (4D,) or None. Direction k reads u2[:, k % 2]; k = 2, 3 run from the end.
    All in forward order. Returns y (b, 4, L, D) float32."""
    chunk, tile = _checked_settings(chunk, tile)
    batch, length, dim = check_cross_shapes(u2, delta, A, B, C, D, delta_bias)
    f32 = jnp.float32
    per_direction = lambda v: v.astype(f32).reshape(1, 4, 1, dim)  # noqa: E731  (4D,) -> broadcastable
    u2 = u2.astype(f32)
    dt = delta.astype(f32)
    if delta_bias is not None:
        dt = dt + per_direction(delta_bias)
    dt = jax.nn.softplus(dt)
    if 0 in u2.shape or A.shape[1] == 0:
        y = jnp.zeros(delta.shape, f32)
    else:
        A = jnp.swapaxes(A.astype(f32).reshape(4, dim, -1), 1, 2)
        B, C = (jnp.swapaxes(x.astype(f32), 2, 3) for x in (B, C))
        y = _scan(u2, dt, A, B, C, 2, chunk, tile)
    if D is not None:
        y = y + per_direction(D) * jnp.concatenate([u2, u2], axis=1)
    return y
