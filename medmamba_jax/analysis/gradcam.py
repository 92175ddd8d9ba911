"""Grad-CAM (Selvaraju et al., 2017) on MedMamba's last stage, by JAX autodiff.

The forward pass is split where Grad-CAM looks: ``model.last_stage(x)`` gives the
feature map A (b, h, w, C), and the rest of the network (mean-pool, then the head) maps
A to logits. ``jax.vjp`` of that rest gives dy_c/dA for the chosen class c; the channel
weights are its spatial mean, and the map is ReLU(sum_k w_k A_k), upsampled to the input.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from medmamba_jax.models import MedMamba


def head_logits(model: MedMamba, feature_map: jax.Array) -> jax.Array:
    """Logits (b, K) from the last-stage map (b, h, w, C): the part of ``model(x)`` after ``last_stage``."""
    pooled = feature_map.mean(axis=(1, 2)).astype(jnp.float32)
    return pooled if model.head is None else model.head(pooled).astype(jnp.float32)


@nnx.jit
def _gradcam(model: MedMamba, x: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
    feature_map = model.last_stage(x)
    logits, pullback = jax.vjp(lambda a: head_logits(model, a), feature_map)
    targets = jnp.where(targets < 0, jnp.argmax(logits, axis=-1), targets)
    (grads,) = pullback(jax.nn.one_hot(targets, logits.shape[-1], dtype=logits.dtype))
    weights = grads.mean(axis=(1, 2), keepdims=True)  # (b, 1, 1, C): importance of each channel
    cam = jax.nn.relu(jnp.sum(weights * feature_map.astype(jnp.float32), axis=-1))  # (b, h, w)
    cell = model.config.patch_size * 2 ** (len(model.config.dims) - 1)
    cam = upsample(cam, cell, x.shape[1:3])
    # Min-max per image, as usual for display; a flat map (no spatial evidence) becomes all zero.
    low, high = cam.min(axis=(1, 2), keepdims=True), cam.max(axis=(1, 2), keepdims=True)
    spread = high - low
    return jnp.where(spread > 0, (cam - low) / jnp.where(spread > 0, spread, 1.0), 0.0), logits


def upsample(cam: jax.Array, cell: int, size: tuple[int, int]) -> jax.Array:
    """Maps (b, h, w) over the input pixels (b, H, W): map cell (i, j) covers pixels
    [i*cell, (i+1)*cell) x [j*cell, (j+1)*cell), bilinearly between cell centres.

    The patch embedding and each patch merging drop leftover rows and columns, so when H is
    not a multiple of ``cell`` the map covers only the top-left h*cell pixels; stretching it
    over the whole image would move the evidence (30 pixels at 255x255). The strip of pixels
    the model never saw gets 0.
    """
    scale = jnp.full((2,), float(cell), jnp.float32)
    return jax.image.scale_and_translate(cam, (cam.shape[0], *size), (1, 2), scale, jnp.zeros(2, jnp.float32),
                                         method="linear", antialias=False)


def gradcam(model: MedMamba, x: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Grad-CAM maps (b, H, W) in [0, 1] (min-max scaled per image) for class ``targets`` (b,) of inputs x (b, H, W, C), and the logits (b, K).

    A negative target means the image's predicted class (argmax of its logits).

    ``model`` should be in eval mode (running BatchNorm statistics, no stochastic depth).
    """
    return _gradcam(model, jnp.asarray(x), jnp.asarray(targets, jnp.int32))


def map_resolution(model: MedMamba, image_size: int) -> int:
    """Side of the last-stage map, i.e. of the Grad-CAM grid, for ``image_size`` inputs."""
    side = image_size // model.config.patch_size
    return side // 2 ** (len(model.config.dims) - 1)
