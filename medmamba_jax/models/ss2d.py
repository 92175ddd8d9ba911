"""SS2D: VMamba's 2-D selective-scan block, as in the released MedMamba code."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from medmamba_jax.models import init
from medmamba_jax.ops import ScanConfig, cross_selective_scan, resolve_impl


class SS2D(nnx.Module):
    """SS2D: in_proj -> dwconv3x3 -> SiLU -> 4-way scan -> LN -> *SiLU(z) -> out_proj.

    Input and output are (batch, H, W, d_model). The four directions are row-major,
    column-major, and both reversed; their outputs are summed.

    The stacked per-direction parameters keep the upstream layout:
    ``x_proj_weight`` (4, dt_rank + 2N, d_inner), ``dt_projs_weight`` (4, d_inner, dt_rank),
    ``dt_projs_bias`` (4, d_inner), ``A_logs`` (4*d_inner, N), ``Ds`` (4*d_inner,).

    ``scan_impl`` chooses the scan (``medmamba_jax.ops.SCAN_IMPLS``); ``scan_config`` and
    ``scan_interpret`` reach the Pallas kernel only (see ``medmamba_jax.ops.selective_scan``).
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 3,
        expand: int = 2,
        dt_rank: int | None = None,
        *,
        scan_impl: str = "auto",
        scan_config: ScanConfig = ScanConfig(),
        scan_interpret: bool | None = None,
        dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.d_model = d_model
        self.d_state = d_state
        self.d_inner = expand * d_model
        self.dt_rank = dt_rank or math.ceil(d_model / 16)
        self.scan_impl = scan_impl
        self.scan_config, self.scan_interpret = scan_config, scan_interpret
        d_inner, rank = self.d_inner, self.dt_rank

        self.in_proj = init.linear(d_model, 2 * d_inner, use_bias=False, dtype=dtype, rngs=rngs)
        self.conv2d = init.conv(
            d_inner, d_inner, d_conv, padding=(d_conv - 1) // 2, groups=d_inner, dtype=dtype, rngs=rngs
        )
        key = rngs.params
        self.x_proj_weight = nnx.Param(
            init.torch_default_uniform(key(), (4, rank + 2 * d_state, d_inner), fan_in=d_inner)
        )
        self.dt_projs_weight = nnx.Param(
            init.torch_default_uniform(key(), (4, d_inner, rank), fan_in=rank)
        )
        self.dt_projs_bias = nnx.Param(init.dt_bias(key(), (4, d_inner)))
        a = jnp.broadcast_to(jnp.arange(1, d_state + 1, dtype=jnp.float32), (4 * d_inner, d_state))
        self.A_logs = nnx.Param(jnp.log(a))
        self.Ds = nnx.Param(jnp.ones((4 * d_inner,), jnp.float32))
        self.out_norm = nnx.LayerNorm(d_inner, epsilon=1e-5, rngs=rngs)
        self.out_proj = init.linear(d_inner, d_model, use_bias=False, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        batch, height, width, _ = x.shape
        xz = self.in_proj(x)
        x, z = jnp.split(xz, 2, axis=-1)
        x = jax.nn.silu(self.conv2d(x))  # (b, H, W, d_inner)
        y = self.scan(x)  # (b, H, W, d_inner) float32
        y = self.out_norm(y)
        y = y * jax.nn.silu(z).astype(y.dtype)
        return self.out_proj(y)

    def scan(self, x: jax.Array) -> jax.Array:
        """The 4-direction selective scan and merge: (b, H, W, d) -> (b, H, W, d) float32."""
        weights = (
            self.x_proj_weight[...],
            self.dt_projs_weight[...],
            self.dt_projs_bias[...],
            self.A_logs[...],
            self.Ds[...],
        )
        impl = resolve_impl(self.scan_impl)
        scan = functools.partial(cross_scan_and_merge, dt_rank=self.dt_rank, d_state=self.d_state, impl=impl,
                                 scan_config=self.scan_config, interpret=self.scan_interpret)
        if impl not in ("pallas", "cpu"):
            # The XLA scans' backward would keep every projected, transposed and chunked copy
            # of the sequence alive (most of a train step's memory); recomputing them from x
            # costs one more forward scan. The Pallas and CPU kernels already save only their
            # inputs and chunk-start states.
            scan = jax.checkpoint(scan)
        return scan(x, *weights)


def cross_scan_and_merge(
    x: jax.Array,
    x_proj_weight: jax.Array,
    dt_projs_weight: jax.Array,
    dt_projs_bias: jax.Array,
    A_logs: jax.Array,
    Ds: jax.Array,
    *,
    dt_rank: int,
    d_state: int,
    impl: str,
    scan_config: ScanConfig = ScanConfig(),
    interpret: bool | None = None,
) -> jax.Array:
    """SS2D's projections, 4-direction scan and merge: (b, H, W, d) -> (b, H, W, d) float32.

    The weights have SS2D's stacked layouts (see :class:`SS2D`); ``impl``, ``scan_config`` and
    ``interpret`` as in ``medmamba_jax.ops.cross_selective_scan``.
    """
    batch, height, width, dim = x.shape
    length = height * width
    x_hw = x.reshape(batch, length, dim)
    x_wh = jnp.swapaxes(x, 1, 2).reshape(batch, length, dim)
    u2 = jnp.stack([x_hw, x_wh], axis=1)  # (b, 2, L, d), channels minor like x

    # Direction k = 2*r + s reads sequence s, reversed if r; projections are pointwise
    # in L, so they can be computed on the forward sequences for all four directions.
    n_proj = x_proj_weight.shape[1]
    w = x_proj_weight.reshape(2, 2, n_proj, dim).astype(u2.dtype)
    x_dbl = jnp.einsum("bsld,rscd->brscl", u2, w).reshape(batch, 4, n_proj, length)
    dts, b_in, c_in = jnp.split(x_dbl, [dt_rank, dt_rank + d_state], axis=2)
    dts = jnp.einsum("bkrl,kdr->bkld", dts, dt_projs_weight.astype(dts.dtype))

    ys = cross_selective_scan(
        u2,
        dts,
        -jnp.exp(A_logs.astype(jnp.float32)),
        b_in,
        c_in,
        Ds,
        dt_projs_bias.reshape(-1),
        impl=impl,
        scan_config=scan_config,
        interpret=interpret,
    )  # (b, 4, L, d), float32
    y_hw = (ys[:, 0] + ys[:, 2]).reshape(batch, height, width, dim)
    y_wh = (ys[:, 1] + ys[:, 3]).reshape(batch, width, height, dim)
    return y_hw + jnp.swapaxes(y_wh, 1, 2)
