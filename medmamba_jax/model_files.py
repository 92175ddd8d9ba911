"""Saving and loading a bare MedMamba: ``model_config.json`` plus an Orbax checkpoint of its state.

A bare model's directory, not a training run's workdir (whose checkpoints, with optimizer
state and progress, are ``training/checkpointing``'s).

This is the format ``python -m medmamba_jax.convert`` writes; the training and
evaluation tools load it with :func:`load_model`. Only parameters and BatchNorm
statistics are stored; dropout streams are re-seeded on load.

``model_config.json`` holds the architecture (``MedMambaConfig``) and, as timm's pretrained
configs do, what the weights expect and output (:class:`ModelCard`)::

    {"depths": [2, 2, 4, 2], "dims": [...], ..., "in_chans": 3,
     "preprocessing": {"image_size": 224, "stored_size": 224, "channels": 3,
                       "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "decoding": "upstream"},
     "label_names": ["adipose", ...], "task": "multi-class"}

Every card key is optional: files written before they existed load with an empty card.

``weights.sha256`` holds
the checksum of the arrays (:func:`digest`), checked on load: a flipped bit in a weight
file can otherwise load as other weights. Here too live the checks that both kinds of
checkpoint share: :func:`digest` and :func:`nonfinite_names`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from medmamba_jax import files
from medmamba_jax.models import MedMamba, MedMambaConfig


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message says why."""


class NonFiniteWeightsError(CheckpointError):
    """Weights holding NaN or inf: such a model gives NaN scores for every input."""


CONFIG_FILE = "model_config.json"
STATE_DIR = "state"
CHECKSUM_FILE = "weights.sha256"
_WEIGHTS = nnx.Any(nnx.Param, nnx.BatchStat)
DECODINGS = ("upstream", "dataset")
# Upstream MedMamba's evaluation: transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)).
UPSTREAM_MEAN = UPSTREAM_STD = 0.5


@dataclasses.dataclass(frozen=True)
class ModelCard:
    """What saved weights expect and output, besides their architecture; None where unknown.

    ``image_size``: model input side. ``stored_size`` and ``channels``: what an image file is
    first turned into (side and 1 or 3 channels), as the training data was stored, before the
    resize to ``image_size`` and the repeat to ``in_chans``. ``mean``, ``std``: normalisation
    per input channel, after scaling to [0, 1]. ``decoding``: "upstream" (PIL's convert("RGB"),
    as the released PyTorch code reads files) or "dataset" (as training read its dataset).
    ``label_names``: one per output, in index order. ``task``: a MedMNIST task string.
    """

    image_size: int | None = None
    stored_size: int | None = None
    channels: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    decoding: str = "upstream"
    label_names: tuple[str, ...] | None = None
    task: str = "multi-class"

    @classmethod
    def upstream(cls, in_chans: int, image_size: int | None = None,
                 label_names: Sequence[str] | None = None) -> "ModelCard":
        """The card of upstream weights: RGB files read at ``image_size`` and normalised to [-1, 1]."""
        return cls(image_size, image_size, in_chans, (UPSTREAM_MEAN,) * in_chans, (UPSTREAM_STD,) * in_chans,
                   "upstream", None if label_names is None else tuple(label_names))

    def to_json(self) -> dict[str, Any]:
        """The model_config.json keys of this card (unknown values left out)."""
        fields = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        classes = {k: fields.pop(k) for k in ("label_names", "task") if k in fields}
        return {"preprocessing": fields, **classes}

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> "ModelCard":
        """The card in model_config.json's keys ``values``; CheckpointError for one that is malformed."""
        fields = {**values.get("preprocessing", {}), **{k: values[k] for k in ("label_names", "task") if k in values}}
        known = {f.name for f in dataclasses.fields(cls)}
        if set(fields) - known:
            raise CheckpointError(f"{CONFIG_FILE}: unknown preprocessing keys {sorted(set(fields) - known)}")
        problems = [f"{k} {v!r} is not a positive integer" for k, v in fields.items()
                    if k in ("image_size", "stored_size", "channels") and not (type(v) is int and v > 0)]
        problems += [f"{k} {v!r} is not a list" for k, v in fields.items()
                     if k in ("mean", "std", "label_names") and not isinstance(v, (list, tuple))]
        if fields.get("decoding", DECODINGS[0]) not in DECODINGS:
            problems.append(f"decoding {fields['decoding']!r} is not one of {DECODINGS}")
        if problems:
            raise CheckpointError(f"{CONFIG_FILE}: {'; '.join(problems)}")
        return cls(**{k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in fields.items()})


def split_config(values: dict[str, Any]) -> tuple[dict[str, Any], ModelCard]:
    """model_config.json's contents -> (MedMambaConfig fields, ModelCard)."""
    card_keys = ("preprocessing", "label_names", "task")
    architecture = {k: v for k, v in values.items() if k not in card_keys}
    return architecture, ModelCard.from_json({k: values[k] for k in card_keys if k in values})


def weights_state(model: nnx.Module) -> nnx.State:
    """Parameters and BatchNorm statistics, the part of the state worth saving."""
    return nnx.state(model, _WEIGHTS)


def host_arrays(tree: Any) -> list[tuple[str, np.ndarray]]:
    """(dotted path, NumPy copy) of every array leaf of ``tree``, in flattening order. A PRNG
    key gives its raw key data; an array spread over hosts, this process's first shard (the
    whole array for the replicated states saved here)."""
    arrays = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            leaf = leaf.addressable_data(0)
        names = (str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)
        arrays.append((".".join(n for n in names if n != "value"), np.asarray(leaf)))
    return arrays


def digest(arrays: Iterable[tuple[str, np.ndarray]]) -> str:
    """SHA-256 of the arrays' dtypes, shapes and bytes, in order (their paths aside: a state
    restores as another tree type than it was saved from)."""
    hasher = hashlib.sha256()
    for _, array in arrays:
        hasher.update(f"{array.dtype.str}{array.shape}".encode())
        hasher.update(np.ascontiguousarray(array).view(np.uint8).reshape(-1))
    return hasher.hexdigest()


def nonfinite_names(arrays: Iterable[tuple[str, np.ndarray]]) -> list[str]:
    """The names of the floating-point arrays that hold a NaN or an inf."""
    return [name for name, array in arrays
            if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all()]


def describe_nonfinite(names: list[str]) -> str:
    """'NaN or inf in N tensors: a, b, c (and K more)', for a one-line error."""
    more = f" (and {len(names) - 3} more)" if len(names) > 3 else ""
    return f"NaN or inf in {len(names)} tensor{'s' * (len(names) != 1)}: {', '.join(names[:3])}{more}"


def check_finite(arrays: list[tuple[str, np.ndarray]], source: str) -> None:
    """NonFiniteWeightsError naming the tensors of ``arrays`` that hold a NaN or an inf."""
    bad = nonfinite_names(arrays)
    if bad:
        raise NonFiniteWeightsError(f"{source}: {describe_nonfinite(bad)}; such a model gives NaN scores")


def weights_digest(model: nnx.Module) -> str:
    """The :func:`digest` of ``model``'s weights, as ``save_model`` records it in weights.sha256."""
    return digest(host_arrays(nnx.to_pure_dict(weights_state(model))))


def save_model(directory: str | os.PathLike, model: MedMamba, card: ModelCard | None = None) -> Path:
    """Writes ``directory/model_config.json``, ``directory/state`` (Orbax) and the state's
    checksum ``directory/weights.sha256``. Returns the directory.

    ``card`` (default: the one ``from_torch`` or ``load_model`` gave the model, as ``model.card``)
    is recorded in model_config.json. The config is written last, through a rename, so a
    directory with a config always holds a complete checkpoint.
    """
    card = card if card is not None else getattr(model, "card", ModelCard())
    directory = Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    weights = nnx.to_pure_dict(weights_state(model))
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(directory / STATE_DIR, weights, force=True)
    checkpointer.wait_until_finished()
    config = json.dumps({**model.config.to_dict(), **card.to_json()}, indent=2)
    for name, text in ((CHECKSUM_FILE, weights_digest(model)), (CONFIG_FILE, config)):
        files.write_text(directory / name, text + "\n")
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


def load_model(directory: str | os.PathLike, *, scan_impl: str | None = None, seed: int = 0,
               allow_nonfinite: bool = False) -> MedMamba:
    """Reads a directory written by :func:`save_model`; the model comes back in eval mode, with
    its :class:`ModelCard` as ``model.card``.

    Weights that differ from their recorded checksum raise CheckpointError, and weights
    holding NaN or inf NonFiniteWeightsError unless ``allow_nonfinite``."""
    directory = Path(directory).absolute()
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{directory}: no {CONFIG_FILE}; not a medmamba-jax model directory")
    values, card = split_config(json.loads(config_path.read_text()))
    if scan_impl is not None:
        values["scan_impl"] = scan_impl
    config = MedMambaConfig.from_dict(values)
    if card.label_names is not None and len(card.label_names) != config.num_classes:
        raise CheckpointError(f"{config_path}: {len(card.label_names)} label_names for {config.num_classes} outputs")
    model = MedMamba.abstract(config, seed=seed)
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
    arrays = host_arrays(restored)
    checksum = directory / CHECKSUM_FILE  # absent in a directory saved before checksums were recorded
    if checksum.is_file() and checksum.read_text().strip() != digest(arrays):
        raise CheckpointError(f"{directory}: its weights differ from the checksum recorded when they were saved "
                              f"({CHECKSUM_FILE}): a damaged or altered file; convert or copy it again")
    if not allow_nonfinite:
        check_finite(arrays, str(directory))
    nnx.replace_by_pure_dict(state, restored)
    nnx.update(model, state)
    model.eval()
    model.card = card
    return model
