"""The training config: every key with its default, validation, and JSON round-trip.

The recipes in ``configs/`` start from ``default_config()`` and override what differs.
A workdir's ``config.json`` is read back with ``from_dict``, which fills keys added
since the run with their defaults.
"""

from __future__ import annotations

from typing import Any

import ml_collections
from ml_collections import config_dict

from medmamba_jax.data.transforms import RESIZE_METHODS
from medmamba_jax.evaluation.metrics import SUMMARY_KEYS as METRICS
from medmamba_jax.models import BLOCKS, PRESETS, MedMambaConfig
from medmamba_jax.ops import SCAN_IMPLS
from medmamba_jax.training.errors import ConfigError

MODELS = PRESETS


def default_config() -> ml_collections.ConfigDict:
    """Every training key with its default; recipes in configs/ override some of them."""
    c = ml_collections.ConfigDict()

    # Data.
    c.dataset = "pathmnist"  # a 2D MedMNIST flag, or "folder" for root/{train,val,test}/<class>/*.png
    c.data_dir = "~/.medmnist"  # where the MedMNIST .npz files, or the image-folder root, live
    c.size = 28  # MedMNIST source resolution: 28, 64, 128 or 224
    c.image_size = 224  # model input resolution
    c.download = False  # fetch a missing MedMNIST file, or replace an unreadable one (MD5-checked)
    c.in_chans = 3  # grayscale sets are repeated to 3 channels when the model wants 3
    # How images of another size reach image_size, in training and evaluation: "linear"
    # (antialiased) or "nearest" (MedMNIST v2's and the paper's). The defaults of keys added
    # since a run are what it used: from_dict fills them into an older workdir's config.json.
    c.resize = "linear"
    c.random_flip = True  # horizontal flip, as upstream's RandomHorizontalFlip
    c.random_resized_crop = True  # as upstream's RandomResizedCrop(scale=(0.08, 1))
    c.autoaugment = False  # ImageNet AutoAugment policy (the paper's MedMamba-X)
    c.prefetch = 4  # batches prepared ahead by host threads

    # Model.
    c.model = "medmamba_t"  # medmamba_t, medmamba_s or medmamba_b
    c.depths = config_dict.placeholder(tuple)  # override the variant's depths, e.g. (1, 1, 1, 1)
    c.dims = config_dict.placeholder(tuple)  # override the variant's dims, e.g. (8, 16, 32, 64)
    c.block = "full"  # the SS-Conv-SSM block, or a Table 7 ablation: split_no_shuffle, no_split, ssm_only
    c.drop_path_rate = 0.1
    # The selective scan: auto (pallas on a GPU, cpu on a CPU, else associative), one of those, or reference.
    c.scan_impl = "auto"
    c.dtype = "float32"  # compute dtype; parameters and BatchNorm statistics stay float32
    c.init_from = ""  # upstream .pth file or a checkpoint directory (converted or trained)

    # Optimisation: optax.adamw with a multi-step schedule, as the MedMNIST benchmarks.
    c.batch_size = 128  # images per optimizer update, summed over all devices and hosts
    c.eval_batch_size = 256
    c.num_epochs = 100
    c.learning_rate = 1e-3
    c.weight_decay = 1e-4
    c.lr_milestones = (50, 75)  # epochs at which the learning rate is multiplied by lr_gamma
    c.lr_gamma = 0.1
    c.grad_accum_steps = 0  # micro-batches of batch_size / grad_accum_steps per update; 0 = the fewest that fit
    c.device_memory_gb = 0.0  # memory per device a train step may use; 0 = what the device reports
    c.seed = 0
    # Both off in every recipe. class_weights: "balanced" (inverse class frequency in the training
    # split), or one weight per class; for a multi-label task, one weight per label for its
    # positives (negatives weigh 1). See training/class_weights.py.
    c.class_weights = config_dict.placeholder(object)
    # An exponential moving average of the parameters and, as timm's --model-ema, of the BatchNorm
    # running statistics, updated after each optimizer update: ema = d * ema + (1 - d) * weights.
    # 0 = off; see training/ema.py.
    c.ema_decay = 0.0
    c.eval_ema = False  # validate, keep as best, save and test the EMA weights (needs ema_decay > 0)

    # Checkpoints, evaluation and logging.
    c.best_metric = "auc"  # validation metric that picks the best checkpoint: any results.json key
    c.early_stopping_patience = 0  # epochs without a better best_metric before stopping; 0 = never
    c.checkpoint_every_steps = 0  # also save the latest state every N micro-steps; 0 = per epoch only
    c.log_every_steps = 20
    c.progress_bar = True

    # Several hosts: jax.distributed.initialize() before anything else. Under SLURM, Open MPI,
    # Kubernetes or on TPU pods the three values below are detected; otherwise set them.
    c.distributed = False
    c.coordinator_address = ""  # "host:port" of process 0
    c.num_processes = 0
    c.process_id = 0
    return c


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError for unknown keys or values that cannot work, before anything runs."""
    unknown = sorted(set(config.keys()) - set(default_config().keys()))
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown}; see configs/base.py for the valid keys")
    checks = [
        (config.model in MODELS, f"model must be one of {MODELS}, got {config.model!r}"),
        (config.scan_impl in SCAN_IMPLS, f"scan_impl must be one of {SCAN_IMPLS}, got {config.scan_impl!r}"),
        (config.block in BLOCKS, f"block must be one of {BLOCKS}, got {config.block!r}"),
        (config.resize in RESIZE_METHODS, f"resize must be one of {RESIZE_METHODS}, got {config.resize!r}"),
        (config.best_metric in METRICS, f"best_metric must be one of {METRICS}, got {config.best_metric!r}"),
        (config.grad_accum_steps >= 0, f"grad_accum_steps must be >= 0 (0 = automatic), got {config.grad_accum_steps}"),
        (config.device_memory_gb >= 0, f"device_memory_gb must be >= 0 (0 = ask the device), got {config.device_memory_gb}"),
        (config.grad_accum_steps < 1 or config.batch_size % config.grad_accum_steps == 0,
         f"batch_size {config.batch_size} is not a multiple of grad_accum_steps {config.grad_accum_steps}"),
        (config.num_epochs >= 1, f"num_epochs must be >= 1, got {config.num_epochs}"),
        (config.batch_size >= 1 and config.eval_batch_size >= 1,
         f"batch_size and eval_batch_size must be >= 1, got {config.batch_size} and {config.eval_batch_size}"),
        (config.log_every_steps >= 1, f"log_every_steps must be >= 1, got {config.log_every_steps}"),
        (min(config.checkpoint_every_steps, config.early_stopping_patience, config.prefetch) >= 0,
         "checkpoint_every_steps, early_stopping_patience and prefetch must be >= 0 (0 turns each off)"),
        (all(isinstance(m, int) and not isinstance(m, bool) and m >= 1 for m in config.lr_milestones)
         and list(config.lr_milestones) == sorted(set(config.lr_milestones)),
         f"lr_milestones must be increasing whole epochs >= 1, got {config.lr_milestones}"),
        (config.learning_rate > 0 and config.lr_gamma > 0 and config.weight_decay >= 0,
         f"learning_rate and lr_gamma must be > 0 and weight_decay >= 0, got {config.learning_rate}, "
         f"{config.lr_gamma} and {config.weight_decay}"),
        (0 <= config.seed < 2**32, f"seed must be in [0, 2**32) (it seeds NumPy and JAX), got {config.seed}"),
        (0 <= config.ema_decay < 1, f"ema_decay must be in [0, 1) (0 = no EMA), got {config.ema_decay}"),
        (not config.eval_ema or config.ema_decay > 0, "eval_ema needs an EMA: set ema_decay, e.g. 0.9999"),
        (_valid_class_weights(config.class_weights),
         f"class_weights must be 'balanced' or a list of numbers > 0, got {config.class_weights!r}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    try:  # the architecture a run will build, checked without building it (any head size will do)
        model = model_config(config, num_classes=0)
    except ValueError as err:
        raise ConfigError(f"bad model setting for {config.model}: {err}") from None
    if config.image_size < model.min_image_size:
        raise ConfigError(f"image_size {config.image_size} is too small for {len(model.dims)} stages: the last "
                          f"stage would have no pixels (at least {model.min_image_size})")


def _valid_class_weights(weights: Any) -> bool:
    if weights is None or weights == "balanced":
        return True
    return (isinstance(weights, (tuple, list)) and len(weights) > 0
            and all(isinstance(w, (int, float)) and not isinstance(w, bool) and 0 < w < float("inf") for w in weights))


# What a resumed run may set differently: how long it goes on, how it reports, where it finds
# its data and devices, and which (numerically equivalent) scan implementation it uses.
RESUMABLE_KEYS = frozenset({
    "num_epochs", "early_stopping_patience", "checkpoint_every_steps", "log_every_steps", "progress_bar",
    "prefetch", "eval_batch_size", "data_dir", "download", "scan_impl", "init_from", "device_memory_gb",
    "distributed", "coordinator_address", "num_processes", "process_id",
})


def run_changes(saved: ml_collections.ConfigDict, config: ml_collections.ConfigDict) -> dict[str, tuple[Any, Any]]:
    """{key: (saved value, new value)} for the keys outside RESUMABLE_KEYS on which they differ.
    An automatic ``grad_accum_steps`` (0) takes whatever count the saved run chose."""
    def plain(value):  # a tuple read back from JSON is a list in one and a tuple in the other
        return list(value) if isinstance(value, (tuple, list)) else value

    free = RESUMABLE_KEYS | ({"grad_accum_steps"} if config.grad_accum_steps == 0 else set())
    return {key: (saved[key], config[key]) for key in sorted(config.keys())
            if key not in free and plain(saved.get(key)) != plain(config[key])}


def model_config(config: ml_collections.ConfigDict, num_classes: int) -> MedMambaConfig:
    """The MedMamba a training config describes: its ``model`` preset with the config's model
    settings on top, and ``num_classes`` outputs. A bad setting raises ValueError naming it."""
    overrides = {
        "drop_path_rate": float(config.drop_path_rate),
        "scan_impl": config.scan_impl,
        "dtype": config.dtype,
        "in_chans": int(config.in_chans),
        "block": config.block,
    }
    overrides.update({key: config[key] for key in ("depths", "dims") if config[key] is not None})
    return MedMambaConfig.preset(config.model, num_classes=num_classes, **overrides)


def from_dict(values: dict[str, Any]) -> ml_collections.ConfigDict:
    """A config from the parsed JSON of a saved ``config.json``; keys missing from it take
    their defaults."""
    config = default_config()
    unknown = sorted(set(values) - set(config.keys()))
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown} in the saved config")
    for key, value in values.items():
        if isinstance(value, list):  # JSON has no tuples
            value = tuple(value)
        if value is not None or config[key] is None:
            config[key] = value
    return config
