"""Saving and loading a bare MedMamba: ``model_config.json`` plus an Orbax checkpoint of its state.

This is the format ``python -m medmamba_jax.convert`` writes; the training and
evaluation tools load it with :func:`load_model`. Only parameters and BatchNorm
statistics are stored; dropout streams are re-seeded on load.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from flax import nnx

from medmamba_jax.models import MedMamba, MedMambaConfig, build_model


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message says why."""


CONFIG_FILE = "model_config.json"
STATE_DIR = "state"
_WEIGHTS = nnx.Any(nnx.Param, nnx.BatchStat)


def shell_model(config: MedMambaConfig, seed: int = 0) -> MedMamba:
    """A model with the right structure but no initialisation work, ready to be loaded into.

    Parameters are abstract shapes (random initialisation would compile one XLA
    program per parameter shape on the CPU); dropout streams get real keys.
    """
    model = nnx.eval_shape(lambda: build_model(config, nnx.Rngs(params=seed, dropout=seed + 1)))
    base = jax.random.key(seed)
    streams = [node for _, node in nnx.iter_graph(model) if isinstance(node, nnx.RngStream)]
    for index, stream in enumerate(streams):
        stream.key.set_value(jax.random.fold_in(base, index))
        stream.count.set_value(jnp.zeros((), jnp.uint32))
    return model


def weights_state(model: nnx.Module) -> nnx.State:
    """Parameters and BatchNorm statistics, the part of the state worth saving."""
    return nnx.state(model, _WEIGHTS)


def save_model(directory: str | os.PathLike, model: MedMamba) -> Path:
    """Writes ``directory/model_config.json`` and ``directory/state`` (Orbax). Returns the directory.

    The config is written last, through a rename, so a directory with a config
    always holds a complete checkpoint.
    """
    directory = Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(directory / STATE_DIR, nnx.to_pure_dict(weights_state(model)), force=True)
    checkpointer.wait_until_finished()
    tmp = directory / (CONFIG_FILE + ".tmp")
    tmp.write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")
    tmp.replace(directory / CONFIG_FILE)
    return directory


def restore_targets(tree):
    """What Orbax should restore ``tree``'s arrays (or shape structs) as. A leaf without a
    sharding (an abstract model built for loading) goes to this process's first device: left
    to Orbax, it would take the saved sharding, which may name devices that are not here (a
    run on several devices or hosts, loaded on one)."""
    here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def target(leaf):
        struct = ocp.utils.to_shape_dtype_struct(leaf)
        return struct if struct.sharding is not None else jax.ShapeDtypeStruct(struct.shape, struct.dtype, sharding=here)

    return jax.tree.map(target, tree)


def _check_saved_shapes(directory: Path, saved, targets) -> None:
    """CheckpointError naming the arrays whose saved shape differs from what the config builds."""
    def shapes(tree) -> dict[str, tuple]:
        return {".".join(str(getattr(k, "key", k)) for k in path): tuple(leaf.shape)
                for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}

    have, want = shapes(saved), shapes(targets)
    problems = [f"{k}: saved {have.get(k, 'nothing')}, config {want.get(k, 'nothing')}"
                for k in sorted(have.keys() | want.keys()) if have.get(k) != want.get(k)]
    if problems:
        more = f"; {len(problems) - 2} more" if len(problems) > 2 else ""
        raise CheckpointError(f"{directory}: {CONFIG_FILE} does not describe the weights in {STATE_DIR}/ "
                              f"({'; '.join(problems[:2])}{more}); both must come from the same save_model or convert")


def load_model(directory: str | os.PathLike, *, scan_impl: str | None = None, seed: int = 0) -> MedMamba:
    """Reads a directory written by :func:`save_model`; the model comes back in eval mode."""
    directory = Path(directory).absolute()
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{directory}: no {CONFIG_FILE}; not a medmamba-jax model directory")
    values = json.loads(config_path.read_text())
    if scan_impl is not None:
        values["scan_impl"] = scan_impl
    model = shell_model(MedMambaConfig.from_dict(values), seed)
    state = weights_state(model)
    targets = restore_targets(nnx.to_pure_dict(state))
    checkpointer = ocp.StandardCheckpointer()
    try:
        # Compared first: a restore that fails midway leaves Orbax's threads printing tracebacks.
        _check_saved_shapes(directory, checkpointer.metadata(directory / STATE_DIR).item_metadata, targets)
        restored = checkpointer.restore(directory / STATE_DIR, targets)
    except CheckpointError:
        raise
    except Exception as err:  # noqa: BLE001 - Orbax raises many types; the first line says which
        reason = (str(err).strip() or type(err).__name__).splitlines()[0][:200]
        raise CheckpointError(f"{directory}: cannot restore its weights ({reason}); {CONFIG_FILE} and {STATE_DIR}/ "
                              "must come from the same save_model or convert") from None
    nnx.replace_by_pure_dict(state, restored)
    nnx.update(model, state)
    model.eval()
    return model
