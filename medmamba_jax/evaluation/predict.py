"""Model scores for a whole split, in fixed-size batches sharded over the devices."""

from __future__ import annotations

import contextlib
from typing import Callable

import jax
import numpy as np
from flax import nnx

from medmamba_jax.evaluation.progress import BatchProgress
from medmamba_jax.training import sharding


@nnx.jit(static_argnums=(2, 3))
def _apply(model, images, transform, fn):
    return fn(model, images if transform is None else transform(images))


def _softmax_scores(model: nnx.Module, x: jax.Array) -> jax.Array:
    return jax.nn.softmax(model(x), axis=-1)


def _sigmoid_scores(model: nnx.Module, x: jax.Array) -> jax.Array:
    return jax.nn.sigmoid(model(x))


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
    transform: Callable[[jax.Array], jax.Array] | None = None,
    mesh: jax.sharding.Mesh | None = None,
    progress: str | None = None,
    between_batches: Callable[[], None] | None = None,
) -> np.ndarray:
    """Class probabilities (N, num_classes) float32 of ``images`` (N, H, W, C).

    ``images`` is model input (float32 NHWC, e.g. from ``medmamba_jax.data.preprocess``),
    or raw uint8 together with ``transform`` (a hashable callable such as
    ``data.eval_transform(config)``), applied per batch on the device. Probabilities are
    softmax, or per-label sigmoid when ``multi_label``. The model is used as it is: call
    ``model.eval()`` first for inference. Batching as in :func:`batched_apply`.
    """
    scores = _sigmoid_scores if multi_label else _softmax_scores
    return batched_apply(scores, model, images, batch_size, transform=transform, mesh=mesh, progress=progress,
                         between_batches=between_batches)


def _gather(x: jax.Array) -> jax.Array:
    """The full array on every process (a no-op copy on one host)."""
    if jax.process_count() == 1:
        return x
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(x, tiled=True)
