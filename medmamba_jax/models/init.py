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
import numpy as np
from flax import nnx


class _TracedSampler:
    """The two NumPy Generator methods we use, for keys that are traced (jit, eval_shape)."""

    def __init__(self, key: jax.Array):
        self.key = key

    def normal(self, loc=0.0, scale=1.0, size=()):
        return loc + scale * jax.random.normal(self.key, size)

    def uniform(self, low=0.0, high=1.0, size=()):
        return jax.random.uniform(self.key, size, minval=low, maxval=high)


def sampler(key: jax.Array):
    """A NumPy generator seeded by a JAX key, or a jax.random stand-in under tracing.

    Initialising with NumPy keeps eager model construction fast: a jax.random draw
    is compiled once per parameter shape, which costs tens of seconds on a CPU.
    """
    if isinstance(key, jax.core.Tracer):
        return _TracedSampler(key)
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.random.default_rng(np.asarray(key).ravel().astype(np.uint64))


def _initializer(sample):
    """Wraps ``sample(rng, shape)`` as a Flax initializer."""

    def init(key, shape, dtype=jnp.float32):
        return jnp.asarray(sample(sampler(key), tuple(shape)), dtype)

    return init


def normal(stddev: float):
    return _initializer(lambda rng, shape: rng.normal(0.0, stddev, size=shape))


def uniform(bound: float):
    return _initializer(lambda rng, shape: rng.uniform(-bound, bound, size=shape))


def kaiming_normal_fan_out():
    """kaiming_normal(mode='fan_out', nonlinearity='relu') for an HWIO kernel."""

    def sample(rng, shape):
        fan_out = shape[-1] * int(np.prod(shape[:-2]))
        return rng.normal(0.0, math.sqrt(2.0 / fan_out), size=shape)

    return _initializer(sample)


def torch_default_uniform(key: jax.Array, shape: tuple[int, ...], fan_in: int) -> jax.Array:
    """PyTorch's default Linear/Conv init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    return uniform(1.0 / math.sqrt(fan_in))(key, shape)


def dt_bias(
    key: jax.Array,
    shape: tuple[int, ...],
    dt_min: float = 1e-3,
    dt_max: float = 0.1,
    floor: float = 1e-4,
) -> jax.Array:
    """Bias whose softplus is log-uniform in [dt_min, dt_max] (Mamba's dt init)."""
    log_dt = sampler(key).uniform(size=shape) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
    dt = jnp.maximum(jnp.exp(jnp.asarray(log_dt, jnp.float32)), floor)
    return dt + jnp.log(-jnp.expm1(-dt))  # inverse softplus


def linear(
    din: int, dout: int, *, use_bias: bool = True, dtype=jnp.float32, rngs: nnx.Rngs
) -> nnx.Linear:
    return nnx.Linear(
        din, dout, use_bias=use_bias, dtype=dtype, kernel_init=normal(0.02), rngs=rngs
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
    return nnx.Conv(
        cin,
        cout,
        (kernel, kernel),
        strides=stride,
        padding=[(padding, padding)] * 2,
        feature_group_count=groups,
        dtype=dtype,
        kernel_init=kaiming_normal_fan_out(),
        bias_init=uniform(1.0 / math.sqrt(fan_in)),
        rngs=rngs,
    )
