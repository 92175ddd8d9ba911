"""Layer constructors whose initialisation matches the released PyTorch MedMamba.

Upstream re-initialises every ``nn.Linear`` with trunc_normal(std=.02) (truncated at
+-2 absolute, so in effect a plain normal) and zero bias, every ``nn.Conv2d`` weight
with kaiming_normal(fan_out, relu), and leaves conv biases and the raw SS2D
parameters at PyTorch's defaults. Matching this matters for training from scratch,
not for loading weights.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

_LINEAR_INIT = nnx.initializers.normal(stddev=0.02)
_CONV_INIT = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


def torch_default_uniform(key: jax.Array, shape: tuple[int, ...], fan_in: int) -> jax.Array:
    """PyTorch's default Linear/Conv init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


def dt_bias(
    key: jax.Array,
    shape: tuple[int, ...],
    dt_min: float = 1e-3,
    dt_max: float = 0.1,
    floor: float = 1e-4,
) -> jax.Array:
    """Bias whose softplus is log-uniform in [dt_min, dt_max] (Mamba's dt init)."""
    log_dt = jax.random.uniform(key, shape) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
    dt = jnp.maximum(jnp.exp(log_dt), floor)
    return dt + jnp.log(-jnp.expm1(-dt))  # inverse softplus


def linear(
    din: int, dout: int, *, use_bias: bool = True, dtype=jnp.float32, rngs: nnx.Rngs
) -> nnx.Linear:
    return nnx.Linear(
        din, dout, use_bias=use_bias, dtype=dtype, kernel_init=_LINEAR_INIT, rngs=rngs
    )


def conv(
    cin: int,
    cout: int,
    kernel: int,
    *,
    stride: int = 1,
    padding: int = 0,
    groups: int = 1,
    dtype=jnp.float32,
    rngs: nnx.Rngs,
) -> nnx.Conv:
    fan_in = cin // groups * kernel * kernel

    def bias_init(key, shape, dtype=jnp.float32):
        return torch_default_uniform(key, shape, fan_in).astype(dtype)

    return nnx.Conv(
        cin,
        cout,
        (kernel, kernel),
        strides=stride,
        padding=[(padding, padding)] * 2,
        feature_group_count=groups,
        dtype=dtype,
        kernel_init=_CONV_INIT,
        bias_init=bias_init,
        rngs=rngs,
    )
