"""The model a run trains: ``MedMamba(config_lib.model_config(config, num_classes),
rngs=init_rngs(config))``, optionally initialised from a checkpoint.

``init_from`` may be an upstream PyTorch ``.pth`` file, a directory from
``python -m medmamba_jax.convert``, or a training workdir. Its architecture must match the
config's; only the classification head may differ (fine-tuning on another dataset), in
which case the head keeps its fresh initialisation and a warning says so.
"""

from __future__ import annotations

import os
import sys

import jax
from flax import nnx, traverse_util

from medmamba_jax.model_files import load_model, weights_state
from medmamba_jax.models import MedMamba
from medmamba_jax.params import from_torch
from medmamba_jax.training.checkpointing import load_trained
from medmamba_jax.training.errors import TrainingError

# Fields that define the architecture; num_classes only sizes the head.
ARCH_FIELDS = ("depths", "dims", "d_state", "in_chans", "patch_size", "block")


def init_rngs(config) -> nnx.Rngs:
    """The RNG streams a run's fresh model is built with: 'params' from ``config.seed``,
    'dropout' from the next seed. (Eager construction is fast: the model's initialisers draw
    with NumPy, models/init.py.)"""
    return nnx.Rngs(params=config.seed, dropout=config.seed + 1)


def _load_source(path: str) -> MedMamba:
    """The model stored at ``path`` (.pth file, converted directory or training workdir)."""
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "config.json")) and os.path.isdir(os.path.join(path, "checkpoints")):
            return load_trained(path, "best")[0]
        return load_model(path)
    if not os.path.exists(path):
        raise TrainingError(f"init_from {path!r} does not exist")
    return from_torch(path)


def _flat_weights(model: MedMamba) -> dict[tuple, jax.Array]:
    return traverse_util.flatten_dict(nnx.to_pure_dict(weights_state(model)))


def initialise_from(model: MedMamba, path: str) -> None:
    """Copies the weights at ``path`` into ``model``; a different head size keeps ``model``'s head."""
    path = os.path.expanduser(path)
    source = _load_source(path)
    want, have = model.config.to_dict(), source.config.to_dict()
    mismatched = [f"{k} {have[k]} (config wants {want[k]})" for k in ARCH_FIELDS if want[k] != have[k]]
    if mismatched:
        raise TrainingError(f"init_from {path} is another architecture: {', '.join(map(str, mismatched))}")
    target, weights = _flat_weights(model), _flat_weights(source)
    if have["num_classes"] != want["num_classes"]:
        print(f"warning: init_from {path} has a {have['num_classes']}-class head; the "
              f"{want['num_classes']}-class head is freshly initialised for fine-tuning", file=sys.stderr)
        weights = {k: v for k, v in weights.items() if k[0] != "head"}
    bad = sorted("/".join(map(str, k)) for k in weights if k not in target or target[k].shape != weights[k].shape)
    if bad:
        raise TrainingError(f"init_from {path} does not fit the model at: {', '.join(bad[:10])}")
    target.update(weights)
    state = weights_state(model)  # RNG state is not copied
    nnx.replace_by_pure_dict(state, traverse_util.unflatten_dict(target))
    nnx.update(model, state)
