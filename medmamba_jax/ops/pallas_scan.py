"""Selective scan as a fused Pallas kernel (Triton lowering on GPU, interpreter elsewhere).

Public functions:

* :func:`selective_scan_pallas` — same contract as ``selective_scan_reference``.
* :func:`cross_selective_scan_pallas` — SS2D's four directions, same contract as
  ``medmamba_jax.ops.cross_selective_scan``; the two backward directions walk the
  sequence from the end inside the kernel instead of reading flipped copies.

The kernels use a channels-minor layout, (batch, K, L, D), which is the layout SS2D's
activations already have; the mamba_ssm-layout entry point transposes to it.

The backward pass is a ``jax.custom_vjp``: the forward kernel saves only the state at
the start of every checkpoint chunk (``seg * ckpt_segs`` steps); the backward kernel
recomputes the states chunk by chunk in registers and runs the adjoint as a reverse
scan. Reductions over batch (dA, dD, d bias) and over the channel tiles of a group
(dB, dC) are per-program partial sums, added up here with plain XLA reductions.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from medmamba_jax.ops.pallas_kernels import Geometry, backward_kernel, forward_kernel
from medmamba_jax.ops.scan_config import ScanConfig
from medmamba_jax.ops.selective_scan import check_cross_shapes, check_shapes

try:  # the GPU-specific compiler parameters; absent in CPU-only installs of old versions
    from jax.experimental.pallas import triton as _plgpu
except ImportError:  # pragma: no cover
    _plgpu = None

_SQUEEZED = getattr(pl, "squeezed", None)  # None was the pre-0.7 spelling




def _interpret(interpret: bool | None) -> bool:
    """``interpret``, where None means: interpret exactly when the default backend is not a GPU."""
    return interpret if interpret is not None else jax.default_backend() != "gpu"


def _pow2_tile(dim: int, cap: int) -> int:
    """The power of two <= cap that pads dim least (ties go to the larger tile)."""
    best, best_pad = 1, dim
    t = 1
    while t <= cap:
        padded = -(-dim // t) * t
        if padded <= best_pad:
            best, best_pad = t, padded
        t *= 2
    return best


class _Plan:
    """Shapes and launch parameters of one call. Arrays use the grouped, channels-minor
    layout: u (b, Gu, L, Dp), delta/y (b, K, L, Dp), A (K, N, Dp), D/bias (K, 1, Dp),
    B/C (b, K, N, L), or (b, K, L, N) with ``config.bc_rows``."""

    def __init__(self, u, delta, A, config: ScanConfig, rev_from: int, softplus: bool,
                 interpret: bool | None = None, backward: bool = False):
        self.batch, self.groups_u, self.length, self.dim = u.shape
        self.groups, self.n_state = A.shape[0], A.shape[1]
        self.tile = _pow2_tile(self.dim, config.tile_cap(backward))
        if self.dim % self.tile:
            raise ValueError(f"internal: {self.dim} channels are not a multiple of the tile {self.tile}")
        self.n_tiles = self.dim // self.tile
        seg = max(1, min(config.seg, self.length))
        self.geo = Geometry(self.length, seg, config.ckpt_segs, rev_from, softplus, bool(config.bc_rows),
                            bool(config.prefetch))
        self.num_warps = config.warps(backward)
        self.u_dtype, self.delta_dtype = u.dtype, delta.dtype
        self.interpret = _interpret(interpret)

    @property
    def grid(self):
        return (self.batch, self.groups, self.n_tiles)

    def specs(self):
        """BlockSpecs of the shared inputs u, delta, A, B, C, D, bias."""
        sq, td, L, n, gu = _SQUEEZED, self.tile, self.length, self.n_state, self.groups_u
        row = pl.BlockSpec((sq, 1, td), lambda i, k, j: (k, 0, j))
        bc = pl.BlockSpec((sq, sq, *self.bc_block), lambda i, k, j: (i, k, 0, 0))
        return [
            pl.BlockSpec((sq, sq, L, td), lambda i, k, j: (i, k % gu, 0, j)),
            self.sequence_spec(),
            pl.BlockSpec((sq, n, td), lambda i, k, j: (k, 0, j)),
            bc,
            bc,
            row,
            row,
        ]

    @property
    def bc_block(self) -> tuple[int, int]:
        """One group's B or C (and dB, dC) in the kernels' layout."""
        return (self.length, self.n_state) if self.geo.bc_rows else (self.n_state, self.length)

    def sequence_spec(self):
        """A (b, K, L, Dp) array: delta, y, dy, du, ddelta."""
        sq = _SQUEEZED
        return pl.BlockSpec((sq, sq, self.length, self.tile), lambda i, k, j: (i, k, 0, j))

    def hs_spec(self):
        sq = _SQUEEZED
        return pl.BlockSpec((sq, sq, self.geo.n_chunks, self.n_state, self.tile), lambda i, k, j: (i, k, 0, 0, j))

    def call(self, kernel, in_specs, out_specs, out_shape):
        params = None
        if _plgpu is not None and not self.interpret:
            params = _plgpu.CompilerParams(num_warps=self.num_warps, num_stages=1)
        return pl.pallas_call(
            functools.partial(kernel, geo=self.geo),
            grid=self.grid,
            in_specs=in_specs,
            out_specs=out_specs,
            out_shape=out_shape,
            interpret=self.interpret,
            compiler_params=params,
        )


def _forward(plan: _Plan, args, save_states: bool):
    """y (b, K, L, Dp) float32, and with ``save_states`` the backward's chunk-start states
    hs (b, K, n_chunks, Np, Dp): for a forward only, writing hs would add about 0.8x the
    forward's unavoidable traffic."""
    b, k, dp, L, n = plan.batch, plan.groups, plan.dim, plan.length, plan.n_state
    y_shape = jax.ShapeDtypeStruct((b, k, L, dp), jnp.float32)
    if not save_states:
        return plan.call(forward_kernel, plan.specs(), plan.sequence_spec(), y_shape)(*args)
    hs_shape = jax.ShapeDtypeStruct((b, k, plan.geo.n_chunks, n, dp), jnp.float32)
    out_specs = (plan.sequence_spec(), plan.hs_spec())
    return plan.call(forward_kernel, plan.specs(), out_specs, (y_shape, hs_shape))(*args)


def _backward(plan: _Plan, args, hs, dy):
    b, k, dp, n, nt, td = plan.batch, plan.groups, plan.dim, plan.n_state, plan.n_tiles, plan.tile
    sq = _SQUEEZED
    per_dir = plan.sequence_spec()
    # When u is shared by two directions (SS2D), each direction writes its own du in fp32.
    du_dtype = plan.u_dtype if plan.groups_u == k else jnp.float32
    f32 = jnp.float32
    out_shape = (
        jax.ShapeDtypeStruct((b, k, plan.length, dp), du_dtype),
        jax.ShapeDtypeStruct((b, k, plan.length, dp), plan.delta_dtype),
        jax.ShapeDtypeStruct((b, k, n, dp), f32),
        jax.ShapeDtypeStruct((b, k, 1, dp), f32),
        jax.ShapeDtypeStruct((b, k, 1, dp), f32),
        jax.ShapeDtypeStruct((b, k, nt, *plan.bc_block), f32),
        jax.ShapeDtypeStruct((b, k, nt, *plan.bc_block), f32),
    )
    row = pl.BlockSpec((sq, sq, 1, td), lambda i, kk, j: (i, kk, 0, j))
    part = pl.BlockSpec((sq, sq, sq, *plan.bc_block), lambda i, kk, j: (i, kk, j, 0, 0))
    out_specs = (
        per_dir,
        per_dir,
        pl.BlockSpec((sq, sq, n, td), lambda i, kk, j: (i, kk, 0, j)),
        row,
        row,
        part,
        part,
    )
    in_specs = plan.specs() + [plan.hs_spec(), per_dir]
    return plan.call(backward_kernel, in_specs, out_specs, out_shape)(*args, hs, dy)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8, 9, 10))
def _scan(u, delta, A, B, C, D, bias, config: ScanConfig, rev_from: int, softplus: bool, interpret: bool | None):
    """Grouped-layout scan (see _Plan); returns y (b, K, L, Dp) float32."""
    args = (u, delta, A, B, C, D, bias)
    return _forward(_Plan(u, delta, A, config, rev_from, softplus, interpret), args, save_states=False)


def _scan_fwd(u, delta, A, B, C, D, bias, config, rev_from, softplus, interpret):
    args = (u, delta, A, B, C, D, bias)
    plan = _Plan(u, delta, A, config, rev_from, softplus, interpret)
    y, hs = _forward(plan, args, save_states=True)  # hs's layout does not depend on the tile
    return y, (args, hs)


def _scan_bwd(config, rev_from, softplus, interpret, res, dy):
    args, hs = res
    u, delta, A, B, C, D, bias = args
    plan = _Plan(u, delta, A, config, rev_from, softplus, interpret, backward=True)
    du, ddelta, dA, dD, dbias, dB, dC = _backward(plan, args, hs, dy)
    if plan.groups_u != plan.groups:  # directions k and k + Gu read the same sequence
        du = du.reshape(du.shape[0], -1, plan.groups_u, *du.shape[2:]).sum(axis=1)
    cast = lambda g, x: g.astype(x.dtype)  # noqa: E731
    return (
        cast(du, u),
        cast(ddelta, delta),
        cast(dA.sum(axis=0), A),
        cast(dB.sum(axis=2), B),
        cast(dC.sum(axis=2), C),
        cast(dD.sum(axis=0), D),
        cast(dbias.sum(axis=0), bias),
    )


_scan.defvjp(_scan_fwd, _scan_bwd)


def _pad_axis(x: jax.Array, axis: int, size: int) -> jax.Array:
    """Zero-pads one axis up to size. Zero channels/states stay exactly zero in the scan."""
    if x.shape[axis] == size:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, size - x.shape[axis])
    return jnp.pad(x, widths)


def _grouped_call(u, delta, A, B, C, D, bias, *, groups, softplus, rev_from, config, interpret):
    """Pads channels to the tile and N to a power of two, runs the kernel, crops y.

    u: (b, Gu, L, D); delta: (b, K, L, D); A: (K, D, N); B, C: (b, K, N, L); D, bias: (K*D,)
    or None (zero).
    Returns y (b, K, L, D) float32.
    """
    dim, n = delta.shape[3], A.shape[2]
    if 0 in u.shape:  # no positions, channels or batch: nothing to scan, and a grid cannot be empty
        return jnp.zeros(delta.shape, jnp.float32)
    zeros = jnp.zeros((groups, dim), jnp.float32)
    D = zeros if D is None else D.reshape(groups, dim)
    bias = zeros if bias is None else bias.reshape(groups, dim)
    # Both tiles are powers of two, so padding to the larger one suits both kernels.
    widest = max(_pow2_tile(dim, config.tile_cap(backward)) for backward in (False, True))
    dp = -(-dim // widest) * widest
    n_p = pl.next_power_of_2(n)  # Triton tensors must have power-of-two sizes
    u, delta = _pad_axis(u, 3, dp), _pad_axis(delta, 3, dp)
    D, bias = (_pad_axis(x, 1, dp)[:, None, :] for x in (D, bias))
    A = jnp.swapaxes(_pad_axis(_pad_axis(A, 1, dp), 2, n_p), 1, 2)
    B, C = _pad_axis(B, 2, n_p), _pad_axis(C, 2, n_p)
    if config.bc_rows:
        B, C = jnp.swapaxes(B, 2, 3), jnp.swapaxes(C, 2, 3)
    y = _scan(u, delta, A, B, C, D, bias, config, rev_from, softplus, interpret)
    return y[..., :dim]


def selective_scan_pallas(
    u, delta, A, B, C, D=None, delta_bias=None, delta_softplus: bool = False,
    config: ScanConfig = ScanConfig(), interpret: bool | None = None,
) -> jax.Array:  # fmt: skip
    """Fused selective scan. u, delta: (b, K*D, L); A: (K*D, N); B, C: (b, K, N, L);
    D, delta_bias: (K*D,) or None. Returns y (b, K*D, L) float32.

    ``config``: the kernels' tile, segment and warp sizes. ``interpret``: run the kernels in
    Pallas's interpreter (True) or compiled for the GPU (False); None interprets exactly when
    the default backend is not a GPU."""
    batch, groups, dim, n, length = check_shapes(u, delta, A, B, C, D, delta_bias)
    channels_minor = lambda x: jnp.swapaxes(x.reshape(batch, groups, dim, length), 2, 3)  # noqa: E731
    y = _grouped_call(
        channels_minor(u), channels_minor(delta), A.reshape(groups, dim, n), B, C, D, delta_bias,
        groups=groups, softplus=delta_softplus, rev_from=groups, config=config, interpret=interpret,
    )  # fmt: skip
    return jnp.swapaxes(y, 2, 3).reshape(batch, groups * dim, length)


def cross_selective_scan_pallas(
    u2, delta, A, B, C, D, delta_bias, config: ScanConfig = ScanConfig(), interpret: bool | None = None
) -> jax.Array:
    """SS2D scan. u2: (b, 2, L, D); delta: (b, 4, L, D); A: (4D, N); B, C: (b, 4, N, L);
    D, delta_bias: (4D,) or None. Direction k reads u2[:, k % 2]; k = 2, 3 run from the end.
    All in forward order. Returns y (b, 4, L, D) float32. ``config`` and ``interpret`` as
    in :func:`selective_scan_pallas`."""
    batch, length, dim = check_cross_shapes(u2, delta, A, B, C, D, delta_bias)
    return _grouped_call(
        u2, delta, A.reshape(4, dim, -1), B, C, D, delta_bias,
        groups=4, softplus=True, rev_from=2, config=config, interpret=interpret,
    )  # fmt: skip
