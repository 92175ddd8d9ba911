"""Selective scan (Mamba's S6 recurrence) in plain JAX.

Layout and meaning follow ``mamba_ssm.selective_scan_fn``:

* ``u``, ``delta``: (batch, K*D, L)
* ``A``: (K*D, N), already negative
* ``B``, ``C``: (batch, K, N, L); group k serves channels k*D ... (k+1)*D - 1
* ``D``, ``delta_bias``: (K*D,)

With dt = softplus(delta + delta_bias) (softplus only if ``delta_softplus``)::

    h_t = exp(dt_t * A) * h_{t-1} + (dt_t * u_t) * B_t
    y_t = <h_t, C_t> + D * u_t

B-bar is dt * B, not the exact zero-order hold: that is what the released
MedMamba weights were trained with. State and accumulation are float32 and the
output is float32 whatever the input dtype.

Two implementations live here, each a function of the same signature:

* :func:`selective_scan_reference`: a sequential ``lax.scan`` over L.
* :func:`selective_scan_associative`: ``lax.associative_scan`` inside chunks of
  the sequence, with a sequential carry between chunks. Each chunk is
  rematerialised in the backward pass, so the (batch, K*D, L, N) state tensor
  never lives in memory for more than one chunk at a time.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

DEFAULT_CHUNK = 16


class ScanInputs(NamedTuple):
    """Inputs in float32, grouped per direction: u and dt are (b, K, D, L)."""

    u: jax.Array
    dt: jax.Array
    A: jax.Array  # (K, D, N)
    B: jax.Array  # (b, K, N, L)
    C: jax.Array  # (b, K, N, L)


def check_shapes(u, delta, A, B, C, D=None, delta_bias=None) -> tuple[int, int, int, int, int]:
    """Validates the selective_scan layout and returns (batch, K, D, N, L)."""
    if u.ndim != 3:
        raise ValueError(f"u must be (batch, K*D, L), got shape {u.shape}")
    batch, channels, length = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"delta must have u's shape {u.shape}, got {delta.shape}")
    if A.ndim != 2 or A.shape[0] != channels:
        raise ValueError(f"A must be ({channels}, N), got {A.shape}")
    n_state = A.shape[1]
    if B.ndim != 4 or B.shape[0] != batch or B.shape[2:] != (n_state, length):
        raise ValueError(f"B must be ({batch}, K, {n_state}, {length}), got {B.shape}")
    groups = B.shape[1]
    if C.shape != B.shape:
        raise ValueError(f"C must have B's shape {B.shape}, got {C.shape}")
    if channels % groups:
        raise ValueError(f"K*D={channels} is not a multiple of the {groups} groups of B and C")
    for name, vec in (("D", D), ("delta_bias", delta_bias)):
        if vec is not None and vec.shape != (channels,):
            raise ValueError(f"{name} must be ({channels},), got {vec.shape}")
    return batch, groups, channels // groups, n_state, length


def check_cross_shapes(u2, delta, A, B, C, D, delta_bias) -> tuple[int, int, int]:
    """Validates the cross-scan layout (u2 (b, 2, L, D), delta (b, 4, L, D)); returns (batch, L, D)."""
    if u2.ndim != 4 or u2.shape[1] != 2:
        raise ValueError(f"u2 must be (batch, 2, L, D), got shape {u2.shape}")
    batch, _, length, dim = u2.shape
    if delta.shape != (batch, 4, length, dim):
        raise ValueError(f"delta must be ({batch}, 4, {length}, {dim}), got {delta.shape}")
    if B.ndim != 4 or B.shape[1] != 4:  # one B and C per direction: fewer groups is another layer
        raise ValueError(f"B must be ({batch}, 4, N, {length}), one group per direction, got {B.shape}")
    mamba_layout = jax.ShapeDtypeStruct((batch, 4 * dim, length), delta.dtype)
    check_shapes(mamba_layout, mamba_layout, A, B, C, D, delta_bias)
    return batch, length, dim


def prepare_inputs(u, delta, A, B, C, D, delta_bias, delta_softplus) -> ScanInputs:
    """Checks every shape (D is added later, by add_skip), casts to float32, applies the bias
    and softplus, and splits channels per group."""
    batch, groups, dim, n_state, length = check_shapes(u, delta, A, B, C, D, delta_bias)
    f32 = jnp.float32
    dt = delta.astype(f32)
    if delta_bias is not None:
        dt = dt + delta_bias.astype(f32)[:, None]
    if delta_softplus:
        dt = jax.nn.softplus(dt)
    grouped = (batch, groups, dim, length)
    return ScanInputs(
        u=u.astype(f32).reshape(grouped),
        dt=dt.reshape(grouped),
        A=A.astype(f32).reshape(groups, dim, n_state),
        B=B.astype(f32),
        C=C.astype(f32),
    )


def add_skip(y: jax.Array, u: jax.Array, D: jax.Array | None) -> jax.Array:
    """y + D*u on (b, K*D, L) arrays, in float32."""
    if D is None:
        return y
    return y + D.astype(jnp.float32)[:, None] * u.astype(jnp.float32)


def selective_scan_reference(
    u, delta, A, B, C, D=None, delta_bias=None, delta_softplus: bool = False
) -> jax.Array:
    """Sequential recurrence, one ``lax.scan`` step per position. Returns (b, K*D, L) float32."""
    x = prepare_inputs(u, delta, A, B, C, D, delta_bias, delta_softplus)
    batch, groups, dim, length = x.u.shape

    def step(h, inputs):
        u_t, dt_t, b_t, c_t = inputs  # (b,K,D), (b,K,D), (b,K,N), (b,K,N)
        h = jnp.exp(dt_t[..., None] * x.A) * h + (dt_t * u_t)[..., None] * b_t[:, :, None, :]
        # A product-and-sum, not a dot, so no backend lowers it to reduced precision.
        return h, jnp.sum(h * c_t[:, :, None, :], axis=-1)

    time_major = (
        jnp.moveaxis(x.u, -1, 0),
        jnp.moveaxis(x.dt, -1, 0),
        jnp.moveaxis(x.B, -1, 0),
        jnp.moveaxis(x.C, -1, 0),
    )
    h0 = jnp.zeros((batch, groups, dim, x.A.shape[-1]), jnp.float32)
    _, ys = jax.lax.scan(step, h0, time_major)
    y = jnp.moveaxis(ys, 0, -1).reshape(batch, groups * dim, length)
    return add_skip(y, u, D)


def _combine(left, right):
    a_left, b_left = left
    a_right, b_right = right
    return a_left * a_right, a_right * b_left + b_right


@functools.partial(jax.checkpoint, prevent_cse=False)
def _scan_chunk(h0, A, chunk):
    """One chunk: h0 (b,K,D,N), A (K,D,N), chunk arrays (b,K,D|N,T). Returns (h_T, y)."""
    u_c, dt_c, b_c, c_c = chunk
    decay = jnp.exp(dt_c[..., None] * A[:, :, None, :])  # (b,K,D,T,N)
    drive = (dt_c * u_c)[..., None] * jnp.swapaxes(b_c, -1, -2)[:, :, None]  # (b,K,D,T,N)
    drive = drive.at[:, :, :, 0].add(decay[:, :, :, 0] * h0)
    _, h = jax.lax.associative_scan(_combine, (decay, drive), axis=3)
    y = jnp.sum(h * jnp.swapaxes(c_c, -1, -2)[:, :, None], axis=-1)  # (b,K,D,T)
    return h[:, :, :, -1], y


def selective_scan_associative(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    delta_bias=None,
    delta_softplus: bool = False,
    chunk_size: int = DEFAULT_CHUNK,
) -> jax.Array:
    """Chunked associative scan. Returns (b, K*D, L) float32.

    Peak memory of the forward and backward passes is about five
    (b, K*D, chunk_size, N) float32 arrays, independent of L.
    """
    x = prepare_inputs(u, delta, A, B, C, D, delta_bias, delta_softplus)
    batch, groups, dim, length = x.u.shape
    chunk_size = max(1, min(chunk_size, length))
    n_chunks = -(-length // chunk_size)
    pad = n_chunks * chunk_size - length

    def to_chunks(arr):
        # Zero padding at the end is harmless: the recurrence is causal and the tail is dropped.
        arr = jnp.pad(arr, [(0, 0)] * (arr.ndim - 1) + [(0, pad)])
        arr = arr.reshape(*arr.shape[:-1], n_chunks, chunk_size)
        return jnp.moveaxis(arr, -2, 0)

    chunks = tuple(to_chunks(a) for a in (x.u, x.dt, x.B, x.C))
    h0 = jnp.zeros((batch, groups, dim, x.A.shape[-1]), jnp.float32)
    _, ys = jax.lax.scan(lambda h, c: _scan_chunk(h, x.A, c), h0, chunks)
    y = jnp.moveaxis(ys, 0, -2).reshape(batch, groups, dim, n_chunks * chunk_size)
    y = y[..., :length].reshape(batch, groups * dim, length)
    return add_skip(y, u, D)
