"""Image transforms that run on the accelerator, inside the jitted steps.

Batches travel to the device as uint8 at the source resolution (a 28x28 MedMNIST image is
49x smaller than the 224x224 float input), and resizing, cropping, flipping and
normalisation happen on the device. The host never becomes the bottleneck this way.

Normalisation is mean 0.5, std 0.5 per channel, so inputs lie in [-1, 1].

Resizing to ``image_size`` is "linear" (antialiased, as PIL's bilinear when shrinking) or
"nearest", which picks the pixels PIL's NEAREST filter picks: MedMNIST v2's training script,
which the paper follows, resizes its PIL images with ``Resize((224, 224), NEAREST)``.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

MEAN, STD = 0.5, 0.5
# torchvision RandomResizedCrop's defaults: area fraction and aspect-ratio range.
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
RESIZE_METHODS = ("linear", "nearest")


def channels_fit(stored: int, in_chans: int) -> bool:
    """Whether images with ``stored`` channels can feed an ``in_chans`` model: the same
    count, or grayscale, which is repeated to any count."""
    return stored in (1, in_chans)


def _finish(x: jax.Array, in_chans: int) -> jax.Array:
    """(b, h, w, c) float in [0, 1] -> normalised (b, h, w, in_chans) float32."""
    if not channels_fit(x.shape[-1], in_chans):
        raise ValueError(f"cannot turn {x.shape[-1]}-channel images into {in_chans} channels")
    if x.shape[-1] != in_chans:
        x = jnp.broadcast_to(x, x.shape[:-1] + (in_chans,))  # grayscale -> repeated channels
    return (x - MEAN) / STD


def nearest_indices(source: int, target: int) -> np.ndarray:
    """(target,) source pixel of each output pixel under PIL's NEAREST resize: the pixel under
    the output pixel's centre, (i + 0.5) * source / target, found as PIL finds it, by adding the
    step source / target in double precision, so that centres on pixel boundaries (64 -> 224
    has seven) fall on the same side as PIL's."""
    step = source / target
    centres = np.cumsum(np.concatenate([[0.5 * step], np.full(target - 1, step)]))
    return np.minimum(centres.astype(np.int64), source - 1)


def _resize(x: jax.Array, image_size: int, method: str) -> jax.Array:
    """(b, H, W, c) -> (b, image_size, image_size, c) by ``method``, one of RESIZE_METHODS."""
    if x.shape[1:3] == (image_size, image_size):
        return x
    if method == "nearest":
        rows, cols = (nearest_indices(side, image_size) for side in x.shape[1:3])
        return x[:, rows][:, :, cols]
    shape = (x.shape[0], image_size, image_size, x.shape[-1])
    return jax.image.resize(x, shape, method="linear", antialias=True)


@dataclasses.dataclass(frozen=True)
class EvalTransform:
    """The eval-time transform: resize to image_size (by ``resize``), channels to in_chans, normalise.

    A frozen dataclass so it can be a static (hashed) argument of jitted functions.
    Call on uint8 (b, H, W, C); returns float32 (b, image_size, image_size, in_chans).
    """

    image_size: int
    in_chans: int = 3
    resize: str = "linear"

    def __call__(self, images: jax.Array) -> jax.Array:
        x = images.astype(jnp.float32) / 255.0
        return _finish(_resize(x, self.image_size, self.resize), self.in_chans)


def _crop_boxes(key: jax.Array, batch: int, height: int, width: int) -> tuple[jax.Array, jax.Array]:
    """Per-image crop (y0, x0) and (h, w) in pixels, sampled like RandomResizedCrop.

    torchvision retries out-of-bounds boxes up to 10 times; clipping the box to the
    image instead keeps the sampling a fixed-shape computation.
    """
    k_area, k_ratio, k_pos = jax.random.split(key, 3)
    area = jax.random.uniform(k_area, (batch,), minval=CROP_SCALE[0], maxval=CROP_SCALE[1])
    log_ratio = jax.random.uniform(k_ratio, (batch,), minval=math.log(CROP_RATIO[0]), maxval=math.log(CROP_RATIO[1]))
    ratio = jnp.exp(log_ratio)  # width / height
    size = jnp.stack([jnp.sqrt(area / ratio) * height, jnp.sqrt(area * ratio) * width], axis=-1)
    size = jnp.clip(size, 1.0, jnp.array([height, width], jnp.float32))
    room = jnp.array([height, width], jnp.float32) - size
    start = jax.random.uniform(k_pos, (batch, 2)) * room
    return start, size


def _random_resized_crop(x: jax.Array, key: jax.Array, image_size: int) -> jax.Array:
    batch, height, width, channels = x.shape
    start, size = _crop_boxes(key, batch, height, width)
    scale = image_size / size  # (b, 2): crop box -> full output
    translation = -start * scale

    def one(image, s, t):
        return jax.image.scale_and_translate(
            image, (image_size, image_size, channels), (0, 1), s, t, method="linear", antialias=True
        )

    return jax.vmap(one)(x, scale, translation)


@dataclasses.dataclass(frozen=True)
class TrainTransform:
    """The training transform: optional random-resized-crop (always linear) or else a resize
    by ``resize``, optional flip, then as EvalTransform.

    Randomness comes from ``key`` only, one draw per image of the global batch, so the
    result does not depend on how the batch is sharded over devices.
    """

    image_size: int
    in_chans: int = 3
    random_resized_crop: bool = True
    random_flip: bool = True
    resize: str = "linear"

    def __call__(self, images: jax.Array, key: jax.Array) -> jax.Array:
        k_crop, k_flip = jax.random.split(key)
        x = images.astype(jnp.float32) / 255.0
        if self.random_resized_crop:
            x = _random_resized_crop(x, k_crop, self.image_size)
        else:
            x = _resize(x, self.image_size, self.resize)
        if self.random_flip:
            flip = jax.random.bernoulli(k_flip, 0.5, (x.shape[0], 1, 1, 1))
            x = jnp.where(flip, x[:, :, ::-1], x)
        return _finish(x, self.in_chans)


def eval_transform(config) -> EvalTransform:
    """The eval transform a training config (or a workdir's config.json) asks for."""
    return EvalTransform(int(config.image_size), int(config.in_chans), str(config.resize))


def train_transform(config) -> TrainTransform:
    """The training transform a training config asks for."""
    return TrainTransform(
        int(config.image_size), int(config.in_chans), bool(config.random_resized_crop), bool(config.random_flip),
        str(config.resize),
    )


def preprocess(images: np.ndarray, config, chunk: int = 256) -> np.ndarray:
    """Eval-time model input for uint8 images (N, H, W, C): float32 (N, S, S, in_chans), S = image_size.

    Works in chunks of ``chunk`` images so a whole split never needs two float copies.
    """
    transform = jax.jit(eval_transform(config))
    out = [np.asarray(transform(np.asarray(images[i : i + chunk]))) for i in range(0, len(images), chunk)]
    return np.concatenate(out) if out else np.zeros((0, config.image_size, config.image_size, config.in_chans), np.float32)
