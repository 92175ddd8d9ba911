"""Weights between the released PyTorch MedMamba (``MedMamba.py``, class VSSM) and JAX.

Conversion is a table: each :class:`Rule` names the modules it applies to (a regex on
the dotted module path), the leaf name on each side, and the array transform in each
direction. Every key that fails is collected before one error is raised.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
from typing import Any, Callable, Mapping, Sequence

import jax.numpy as jnp
import numpy as np
from flax import nnx

from medmamba_jax import extras
from medmamba_jax.model_files import CheckpointError, ModelCard, check_finite
from medmamba_jax.models import MedMamba, MedMambaConfig


def _identity(a: np.ndarray) -> np.ndarray:
    return a


def _conv_to_jax(w: np.ndarray) -> np.ndarray:  # (O, I, kh, kw) -> (kh, kw, I, O)
    return np.transpose(w, (2, 3, 1, 0))


def _conv_to_torch(w: np.ndarray) -> np.ndarray:
    return np.transpose(w, (3, 2, 0, 1))


def _linear(w: np.ndarray) -> np.ndarray:  # (out, in) <-> (in, out)
    return np.transpose(w)


@dataclasses.dataclass(frozen=True)
class Rule:
    module: str  # regex for the dotted module path (after segment renames)
    torch_leaf: str
    jax_leaf: str
    to_jax: Callable[[np.ndarray], np.ndarray] = _identity
    to_torch: Callable[[np.ndarray], np.ndarray] = _identity


_CONV = r"(.*\.)?(proj|conv2d|conv[123])"
_LINEAR = r"(.*\.)?(in_proj|out_proj|reduction|head)"
_NORM = r"(.*\.)?(ln_1|norm|out_norm|bn_in|bn[12])"
_BATCH_NORM = r"(.*\.)?(bn_in|bn[12])"
_SS2D = r"(.*\.)?self_attention"

RULES: tuple[Rule, ...] = (
    Rule(_CONV, "weight", "kernel", _conv_to_jax, _conv_to_torch),
    Rule(_LINEAR, "weight", "kernel", _linear, _linear),
    Rule(_NORM, "weight", "scale"),
    Rule(f"{_CONV}|{_LINEAR}|{_NORM}", "bias", "bias"),
    Rule(_BATCH_NORM, "running_mean", "mean"),
    Rule(_BATCH_NORM, "running_var", "var"),
    *(Rule(_SS2D, leaf, leaf) for leaf in ("A_logs", "Ds", "x_proj_weight", "dt_projs_weight", "dt_projs_bias")),
)

# Upstream's nn.Sequential indices for the conv branch, and our names for them.
SEGMENT_RENAMES: tuple[tuple[str, str], ...] = tuple(
    (f"conv33conv33conv11.{index}", f"conv_branch.{name}")
    for index, name in ((0, "bn_in"), (1, "conv1"), (2, "bn1"), (4, "conv2"), (5, "bn2"), (7, "conv3"))
)
# Tracked by torch's BatchNorm but unused with momentum=0.1: ignored on import, exported as 0.
IGNORED_TORCH_LEAVES = ("num_batches_tracked",)


def _rename(path: str, pairs) -> str:
    for old, new in pairs:
        path = path.replace(f".{old}.", f".{new}.")
    return path


def _find_rule(path: str, side: str) -> tuple[Rule, str] | None:
    module, _, leaf = path.rpartition(".")
    for rule in RULES:
        if getattr(rule, f"{side}_leaf") == leaf and re.fullmatch(rule.module, module):
            return rule, module
    return None


def torch_key_to_jax(key: str) -> tuple[str, Callable] | None:
    """Maps an upstream state-dict key to (JAX state path, transform), or None if unknown."""
    found = _find_rule(_rename(key, SEGMENT_RENAMES), "torch")
    if found is None:
        return None
    rule, module = found
    return f"{module}.{rule.jax_leaf}", rule.to_jax


def jax_path_to_torch(path: str) -> tuple[str, Callable] | None:
    """Maps a JAX state path to (upstream key, transform), or None if unknown."""
    found = _find_rule(path, "jax")
    if found is None:
        return None
    rule, module = found
    key = _rename(f"{module}.{rule.torch_leaf}", [(new, old) for old, new in SEGMENT_RENAMES])
    return key, rule.to_torch


# ---------------------------------------------------------------------------- reading


def _torch():
    # The CPU build is enough: pip's default on Linux is a CUDA build, gigabytes larger.
    install = extras.install_command("torch") + " --extra-index-url https://download.pytorch.org/whl/cpu"
    return extras.require("torch", "Reading or writing PyTorch .pth files", install)


# What training scripts commonly save beside the weights (upstream's best accuracy is a NumPy
# float): plain data, safe to unpickle. Anything else stays refused, as torch refuses it.
_NUMPY_GLOBALS = re.compile(r"numpy\.(dtype|ndarray|dtypes\.\w+DType|(_core|core)\.multiarray\.(scalar|_reconstruct))")
# Containers that training scripts and frameworks wrap a state dict in, in any nesting.
_WRAPPERS = ("state_dict", "model", "model_state_dict")
_ANCHOR = "patch_embed.proj.weight"  # the one key every MedMamba state dict has


def load_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a ``torch.save``d state dict as numpy arrays; a bad file raises CheckpointError.

    The dict may be wrapped (``{"model": ..., "epoch": ...}``, in any nesting of the usual
    keys) and its keys prefixed (``module.``, ``_orig_mod.``, Lightning's ``model.``)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: {'is a directory, not a .pth file' if os.path.isdir(path) else 'no such file'}")
    torch = _torch()
    with open(path, "rb") as handle:
        magic = handle.read(4)
    # torch.save writes a zip archive (or, before PyTorch 1.6, a pickle starting with 0x80).
    if not (magic.startswith(b"PK") or magic[:1] == b"\x80"):
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (neither a zip archive nor a pickle)")
    if magic.startswith(b"PK"):
        _check_zip(path)
    try:
        obj = _torch_load(torch, path)
    except CheckpointError:
        raise
    except Exception as err:  # torch raises many types for corrupt or foreign files
        reason = (str(err).strip() or type(err).__name__).split(". ")[0].splitlines()[0]
        raise CheckpointError(f"{path}: corrupt or truncated PyTorch checkpoint ({reason[:120]})") from None
    return _as_numpy_state_dict(obj, path)


def _check_zip(path: str) -> None:
    """torch.load does not check the archive's CRCs: a damaged download would load wrong weights."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise CheckpointError(f"{path}: corrupt or truncated PyTorch checkpoint ({err})") from None
    if damaged is not None:
        raise CheckpointError(f"{path}: corrupt PyTorch checkpoint (entry {damaged} fails its CRC check); "
                              "download or copy it again")


def _torch_load(torch, path: str):
    """torch.load without running pickled code; NumPy values saved beside the weights are allowed."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        if "Weights only load failed" not in str(err):
            raise
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - it reads zip files only; an old-format pickle is not listed
        found = ["objects of the pre-1.6 pickle format"]
    other = [name for name in found if not _NUMPY_GLOBALS.fullmatch(name)]
    if other:  # a readable pickle of more than tensors
        raise CheckpointError(f"{path}: holds pickled Python objects ({', '.join(other[:4])}), such as a whole "
                              "model from torch.save(model), which are not loaded (unpickling can run code); "
                              "save model.state_dict() instead") from None
    # An array's dtype is rebuilt through its dtype class, which the listing does not name.
    dtype_classes = [getattr(np.dtypes, name) for name in dir(np.dtypes) if name.endswith("DType")]
    # Each under the name the file uses: NumPy 1 pickled numpy.core.*, which NumPy 2 calls numpy._core.*.
    with torch.serialization.safe_globals([(_resolve(name), name) for name in found] + dtype_classes):
        return torch.load(path, map_location="cpu", weights_only=True)


def _resolve(dotted: str):
    import importlib

    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _as_numpy_state_dict(obj: Any, source: str) -> dict[str, np.ndarray]:
    while isinstance(obj, Mapping):  # unwrap {"model": {"state_dict": ...}} and the like
        inner = next((obj[w] for w in _WRAPPERS if isinstance(obj.get(w), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{source}: holds a {type(obj).__name__}, not a model state dict")
    arrays = {}
    for key, value in obj.items():
        if hasattr(value, "detach"):
            value = value.detach().cpu()
            # NumPy has no bfloat16; float32 holds bf16 and fp16 weights exactly
            value = value.float() if value.is_floating_point() and value.element_size() < 4 else value
            value = value.numpy()
        arrays[str(key)] = np.asarray(value)
    return _strip_prefix(arrays, source)


def _strip_prefix(arrays: dict[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
    """The keys under the one prefix (DataParallel's ``module.``, torch.compile's
    ``_orig_mod.``, a Lightning module's attribute name...) that holds a MedMamba, unprefixed."""
    prefixes = sorted(key[: -len(_ANCHOR)] for key in arrays if key.endswith(_ANCHOR))
    if len(prefixes) != 1 or not prefixes[0]:
        if len(prefixes) > 1 and "" not in prefixes:
            raise CheckpointError(f"{source}: holds several models, under the key prefixes {prefixes}; "
                                  "save the state dict of the one to load")
        return arrays
    return {key[len(prefixes[0]):]: value for key, value in arrays.items() if key.startswith(prefixes[0])}


def infer_config(state_dict: Mapping[str, np.ndarray], **overrides) -> MedMambaConfig:
    """Depths, dims, d_state, classes, channels and patch size from the tensor shapes.

    A stage is any ``layers.<i>.`` prefix, and one more after a stage with a patch merging; its
    depth is its number of blocks numbered from 0 without a gap (keys after a gap are left for
    ``load_state_dict_into`` to report as unexpected); one without blocks (depth 0) takes its
    width from its patch merging, or from a neighbour's, since each stage doubles the one before."""
    blocks_of: dict[int, set[int]] = {}
    for key in state_dict:
        stage = re.match(r"layers\.(\d+)\.(?:blocks\.(\d+)\.)?", key)
        if stage:
            blocks_of.setdefault(int(stage[1]), set()).update([int(stage[2])] if stage[2] is not None else [])
    # A stage's depth counts its blocks from 0 up to the first missing one: a stray key such as
    # layers.0.blocks.200.* is then reported as unexpected, not built into a 200-block stage.
    depth_of = {s: next(i for i in itertools.count() if i not in blocks) for s, blocks in blocks_of.items()}
    if any(".blocks." in key for key in state_dict) and not any(".self_attention." in key for key in state_dict):
        raise CheckpointError("not a MedMamba state dict: its blocks have no SS2D ('self_attention') weights")
    if not depth_of or "patch_embed.proj.weight" not in state_dict:
        raise CheckpointError("not a MedMamba state dict: cannot infer the architecture; "
                              + ("missing ['patch_embed.proj.weight']" if depth_of else "no 'layers.<i>.' keys"))
    last = max(depth_of)
    # Only the last stage lacks a patch merging: one after it means a last stage without blocks.
    stages = range(last + 1 + (f"layers.{last}.downsample.norm.weight" in state_dict))
    width_of = {s: 2 * state_dict[f"layers.{s}.blocks.0.ln_1.weight"].shape[0] for s in stages
                if f"layers.{s}.blocks.0.ln_1.weight" in state_dict}  # ln_1 sees half the channels
    width_of.update({s: state_dict[f"layers.{s}.downsample.norm.weight"].shape[0] // 4 for s in stages
                     if s not in width_of and f"layers.{s}.downsample.norm.weight" in state_dict})
    if not width_of:
        raise CheckpointError("not a MedMamba state dict: no stage shows its width "
                              "(no layers.<i>.blocks.0.ln_1.weight or layers.<i>.downsample.norm.weight)")
    known = min(width_of)
    a_logs = [k for k in sorted(state_dict) if re.fullmatch(r"layers\.\d+\.blocks\.\d+\.self_attention\.A_logs", k)]
    embed = state_dict["patch_embed.proj.weight"]
    head = state_dict.get("head.weight")
    values = dict(
        depths=tuple(depth_of.get(s, 0) for s in stages),
        dims=tuple(width_of[known] * 2**s // 2**known for s in stages),
        d_state=int(state_dict[a_logs[0]].shape[1]) if a_logs else 16,
        num_classes=int(head.shape[0]) if head is not None else 0,
        in_chans=int(embed.shape[1]),
        patch_size=int(embed.shape[2]),
    )
    try:
        return MedMambaConfig(**(values | overrides))
    except ValueError as err:
        raise CheckpointError(f"not a MedMamba state dict: {err}") from None


# ---------------------------------------------------------------------------- converting


def _flat_variables(model: nnx.Module) -> dict[str, nnx.Variable]:
    """The live Param and BatchStat variables of ``model`` by dotted path."""
    return {
        ".".join(map(str, path)): node
        for path, node in nnx.iter_graph(model)
        if isinstance(node, (nnx.Param, nnx.BatchStat))
    }


def _format_problems(problems: dict[str, list[str]]) -> str:
    lines = []
    for kind, keys in problems.items():
        if keys:
            lines.append(f"{len(keys)} {kind}:")
            lines.extend(f"  {k}" for k in keys)
    return "\n".join(lines)


def load_state_dict_into(model: MedMamba, state_dict: Mapping[str, np.ndarray]) -> MedMamba:
    """Copies an upstream state dict into ``model``; raises one CheckpointError listing every bad key."""
    targets = _flat_variables(model)
    unexpected, mis_shaped, values = [], {}, {}
    for key, array in state_dict.items():
        if key.rpartition(".")[2] in IGNORED_TORCH_LEAVES:
            continue
        mapped = torch_key_to_jax(key)
        if mapped is None or mapped[0] not in targets:
            unexpected.append(key)
            continue
        path, transform = mapped
        converted = transform(np.asarray(array))
        if converted.shape != tuple(targets[path].shape):
            wanted = _torch_shape(path, tuple(targets[path].shape))
            mis_shaped[path] = f"{key}: checkpoint {tuple(np.shape(array))}, model wants {wanted}"
            continue
        values[path] = converted
    missing = sorted(_torch_name(p) for p in targets if p not in values and p not in mis_shaped)
    problems = {"unexpected keys": unexpected, "mis-shaped keys": list(mis_shaped.values()), "missing keys": missing}
    if any(problems.values()):
        cfg = model.config
        raise CheckpointError(
            f"state dict does not fit MedMamba depths={cfg.depths} dims={cfg.dims}:\n" + _format_problems(problems)
        )
    for path, array in values.items():
        var = targets[path]
        var.set_value(jnp.asarray(array, dtype=var.get_value().dtype))
    return model


def _torch_name(path: str) -> str:
    mapped = jax_path_to_torch(path)
    return mapped[0] if mapped else path


def _torch_shape(path: str, jax_shape: tuple[int, ...]) -> tuple[int, ...]:
    mapped = jax_path_to_torch(path)
    return tuple(mapped[1](np.zeros(jax_shape, np.float32)).shape) if mapped else jax_shape


def from_torch(
    path_or_state_dict: str | os.PathLike | Mapping[str, Any],
    *,
    scan_impl: str = "auto",
    drop_path_rate: float = 0.1,
    seed: int = 0,
    image_size: int | None = None,
    label_names: Sequence[str] | None = None,
    allow_nonfinite: bool = False,
) -> MedMamba:
    """Builds a MedMamba from an upstream ``.pth`` file or state dict.

    The architecture (depths, dims, d_state, num_classes, in_chans) is inferred from
    the tensor shapes. BatchNorm running statistics are loaded too. The model is
    returned in eval mode. ``model.card`` records upstream's preprocessing, the input side
    ``image_size`` the weights were trained at and the class names ``label_names`` (one per
    output) when given; ``save_model`` writes it into model_config.json. Tensors holding NaN or
    inf raise NonFiniteWeightsError, naming them, unless ``allow_nonfinite``.
    """
    if isinstance(path_or_state_dict, Mapping):
        source, state_dict = "state dict", _as_numpy_state_dict(path_or_state_dict, "state dict")
    else:
        source, state_dict = os.fspath(path_or_state_dict), load_torch_state_dict(path_or_state_dict)
    if not allow_nonfinite:
        check_finite(list(state_dict.items()), source)
    config = infer_config(state_dict, scan_impl=scan_impl, drop_path_rate=drop_path_rate)
    _check_card_arguments(config, image_size, label_names)
    model = MedMamba.abstract(config, seed=seed)
    load_state_dict_into(model, state_dict)
    model.eval()
    model.card = ModelCard.upstream(config.in_chans, image_size, label_names)
    return model


def _check_card_arguments(config: MedMambaConfig, image_size: int | None, label_names: Sequence[str] | None) -> None:
    if image_size is not None and image_size < config.min_image_size:
        raise ValueError(f"image_size {image_size} is below this model's minimum, {config.min_image_size}")
    if label_names is not None and len(label_names) != config.num_classes:
        raise ValueError(f"{len(label_names)} label names for a model with {config.num_classes} outputs")


def to_numpy_state_dict(model: MedMamba) -> dict[str, np.ndarray]:
    """The model's weights under upstream key names and layouts, as numpy arrays."""
    out: dict[str, np.ndarray] = {}
    for path, var in _flat_variables(model).items():
        key, transform = jax_path_to_torch(path)
        out[key] = np.ascontiguousarray(transform(np.asarray(var.get_value(), dtype=np.float32)))
        if key.endswith(".running_var"):
            out[key[: -len("running_var")] + "num_batches_tracked"] = np.zeros((), np.int64)
    return out


def to_torch_state_dict(model: MedMamba) -> dict[str, Any]:
    """A ``torch.nn.Module.load_state_dict``-ready dict for upstream ``VSSM``."""
    torch = _torch()
    return {k: torch.from_numpy(np.array(v)) for k, v in to_numpy_state_dict(model).items()}
