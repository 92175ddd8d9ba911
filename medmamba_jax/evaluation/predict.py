"""Model scores for a whole split, in fixed-size batches sharded over the devices.

Scores may average test-time passes (``tta="flip"``: the image and its horizontal mirror)
and divide the logits by a temperature first (``evaluation.calibration``): each pass's
logits are scaled, turned into probabilities (softmax, or sigmoid per label), and the
passes' probabilities averaged.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from medmamba_jax import sharding
from medmamba_jax.evaluation.progress import BatchProgress


@nnx.jit(static_argnums=(2, 3))
def _apply(model, images, transform, fn):
    return fn(model, images if transform is None else transform(images))


TTA_MODES = ("flip",)


def tta_views(x: jax.Array, tta: str | None) -> list[jax.Array]:
    """The test-time views of model input ``x`` (b, H, W, C): ``[x]``, or with ``tta="flip"``
    ``[x, x mirrored left to right]``."""
    if tta is None:
        return [x]
    if tta == "flip":
        return [x, jnp.flip(x, axis=2)]
    raise ValueError(f"unknown test-time augmentation {tta!r}; expected one of {TTA_MODES}")


@dataclasses.dataclass(frozen=True)
class PassLogits:
    """``fn`` for :func:`batched_apply`: the logits (b, P, K) of each of the P ``tta_views`` of
    a batch, from one forward pass over the views stacked along the batch (eval-mode
    BatchNorm makes each image's output independent of its batch)."""

    tta: str | None = None

    def __call__(self, model: nnx.Module, x: jax.Array) -> jax.Array:
        views = tta_views(x, self.tta)
        logits = model(jnp.concatenate(views) if len(views) > 1 else x)
        return jnp.moveaxis(logits.reshape(len(views), len(x), -1), 0, 1)


def probabilities(logits: jax.Array, temperature: float = 1.0, multi_label: bool = False) -> jax.Array:
    """(..., K) class probabilities of pass logits (..., P, K): each pass's logits divided by
    ``temperature``, then softmax (sigmoid per label when ``multi_label``), averaged over the P passes."""
    if temperature != 1.0:
        logits = logits / temperature
    probs = jax.nn.sigmoid(logits) if multi_label else jax.nn.softmax(logits, axis=-1)
    return jnp.mean(probs, axis=-2)


@dataclasses.dataclass(frozen=True)
class Scores:
    """``fn`` for :func:`batched_apply`: :func:`probabilities` (b, K) of a batch's ``PassLogits``."""

    multi_label: bool = False
    temperature: float = 1.0
    tta: str | None = None

    def __call__(self, model: nnx.Module, x: jax.Array) -> jax.Array:
        return probabilities(PassLogits(self.tta)(model, x), self.temperature, self.multi_label)


def batched_apply(
    fn: Callable[[nnx.Module, jax.Array], jax.Array],
    model: nnx.Module,
    images: np.ndarray,
    batch_size: int = 64,
    *,
    transform: Callable[[jax.Array], jax.Array] | None = None,
    mesh: jax.sharding.Mesh | None = None,
    progress: str | None = None,
    between_batches: Callable[[], None] | None = None,
) -> np.ndarray:
    """``fn(model, x)`` over ``images`` (N, H, W, C) in fixed-size batches sharded over the
    devices; returns the per-image outputs (N, ...) concatenated on the host.

    ``fn`` and ``transform`` are static (hashable; a module-level function keeps one
    compilation across calls). ``transform``, if given, maps each raw batch to model input on
    the device. Every batch is padded to ``batch_size`` (rounded up to a multiple of the
    device count), so one compilation serves all of ``images``; ``split_batch_size`` keeps
    that from padding a small split many times over. ``progress``, if given, labels a
    ``BatchProgress`` on stderr. ``between_batches``, if given, is called before each batch
    (it may raise to stop).
    """
    mesh = mesh or sharding.make_mesh()
    n_devices = mesh.devices.size
    batch_size = -(-batch_size // n_devices) * n_devices
    nnx.update(model, sharding.replicate(mesh, nnx.state(model)))
    share, out = sharding.local_share(batch_size), []
    starts = range(0, len(images), batch_size)
    with contextlib.ExitStack() as stack:
        shown = None if progress is None else stack.enter_context(BatchProgress(progress, len(starts)))
        for start in starts:
            if between_batches is not None:
                between_batches()
            batch = np.asarray(images[start : start + batch_size])
            count = len(batch)
            if count < batch_size:  # pad with copies of the first image; dropped below
                batch = np.concatenate([batch, np.repeat(batch[:1], batch_size - count, axis=0)])
            x = sharding.shard_batch(mesh, batch[share])
            out.append(np.asarray(jax.device_get(_gather(_apply(model, x, transform, fn))))[:count])
            if shown is not None:
                shown.advance()
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def split_batch_size(n: int, batch_size: int) -> int:
    """The batch to score a whole split of ``n`` images in: ``batch_size``, or for a smaller
    split the power of two that holds it, so that a 32-image split is not padded (and its
    memory paid for) to 256, while splits of similar sizes still share one compilation."""
    if 0 < n < batch_size:
        return 1 << (n - 1).bit_length()
    return batch_size


def predict_scores(
    model: nnx.Module,
    images: np.ndarray,
    batch_size: int = 64,
    *,
    multi_label: bool = False,
    temperature: float = 1.0,
    tta: str | None = None,
    transform: Callable[[jax.Array], jax.Array] | None = None,
    mesh: jax.sharding.Mesh | None = None,
    progress: str | None = None,
    between_batches: Callable[[], None] | None = None,
) -> np.ndarray:
    """Class probabilities (N, num_classes) float32 of ``images`` (N, H, W, C).

    ``images`` is model input (float32 NHWC, e.g. from ``medmamba_jax.data.preprocess``),
    or raw uint8 together with ``transform`` (a hashable callable such as
    ``data.eval_transform(config)``), applied per batch on the device. Probabilities are
    softmax, or per-label sigmoid when ``multi_label``, of the logits divided by
    ``temperature``, averaged over the ``tta`` views (:func:`tta_views`). The model is used
    as it is: call ``model.eval()`` first for inference. Batching as in :func:`batched_apply`.
    """
    return batched_apply(Scores(multi_label, float(temperature), tta), model, images, batch_size, transform=transform,
                         mesh=mesh, progress=progress, between_batches=between_batches)


def _gather(x: jax.Array) -> jax.Array:
    """The full array on every process (a no-op copy on one host)."""
    if jax.process_count() == 1:
        return x
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(x, tiled=True)
