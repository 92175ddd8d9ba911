"""Model scores for a whole split, in fixed-size batches sharded over the devices."""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np
from flax import nnx

from medmamba_jax.training import sharding


@nnx.jit(static_argnums=(2, 3))
def _scores(model, images, transform, multi_label: bool):
    x = images if transform is None else transform(images)
    logits = model(x)
    return jax.nn.sigmoid(logits) if multi_label else jax.nn.softmax(logits, axis=-1)


def predict_scores(
    model: nnx.Module,
    images: np.ndarray,
    batch_size: int = 64,
    *,
    multi_label: bool = False,
    transform: Callable[[jax.Array], jax.Array] | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> np.ndarray:
    """Class probabilities (N, num_classes) float32 of ``images`` (N, H, W, C).

    ``images`` is model input (float32 NHWC, e.g. from ``medmamba_jax.data.preprocess``),
    or raw uint8 together with ``transform`` (a hashable callable such as
    ``data.eval_transform(config)``), applied per batch on the device. Probabilities are
    softmax, or per-label sigmoid when ``multi_label``. The model is used as it is: call
    ``model.eval()`` first for inference. Every batch is padded to ``batch_size`` (rounded
    up to a multiple of the device count), so one compilation serves the whole split.
    """
    mesh = mesh or sharding.make_mesh()
    n_devices = mesh.devices.size
    batch_size = -(-batch_size // n_devices) * n_devices
    nnx.update(model, sharding.replicate(mesh, nnx.state(model)))
    share, out = sharding.local_share(batch_size), []
    for start in range(0, len(images), batch_size):
        batch = np.asarray(images[start : start + batch_size])
        count = len(batch)
        if count < batch_size:  # pad with copies of the first image; dropped below
            batch = np.concatenate([batch, np.repeat(batch[:1], batch_size - count, axis=0)])
        x = sharding.shard_batch(mesh, batch[share])
        probs = _scores(model, x, transform, multi_label)
        out.append(np.asarray(jax.device_get(_gather(probs)))[:count])
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def _gather(x: jax.Array) -> jax.Array:
    """The full array on every process (a no-op copy on one host)."""
    if jax.process_count() == 1:
        return x
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(x, tiled=True)
