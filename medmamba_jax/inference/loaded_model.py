"""A trained model loaded for use: its weights, how to feed it images, and its class names.

A model comes from a training workdir (``from_workdir``: weights, config, dataset and class
names) or from a model directory (``from_checkpoint``: what ``medmamba convert`` writes), which
carries no dataset; its model_config.json records its input size and class names
(``model_files.ModelCard``), or, for one converted without them, ``image_size`` and ``labels``
give them. Every command that runs a trained model (predict, evaluate, explain, robustness,
export) runs a ``Loaded``::

    loaded = from_workdir("runs/pathmnist")
    probabilities = loaded.scores(images, batch_size=64)  # uint8 (N, H, W, C) -> (N, K)

Bad input raises ``ToolError`` with a one-line message.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import TYPE_CHECKING, Iterator

import ml_collections
import numpy as np

from medmamba_jax.analysis.errors import ToolError
from medmamba_jax.data import SPLITS, dataset_info
from medmamba_jax.data import load_split as data_load_split
from medmamba_jax.data.errors import DataError
from medmamba_jax.data.transforms import MEAN, STD, EvalTransform
from medmamba_jax.evaluation.predict import PassLogits, batched_apply, predict_scores
from medmamba_jax.models import MedMamba

if TYPE_CHECKING:  # model_files loads Orbax, which a command's --help should not wait for
    from medmamba_jax.model_files import ModelCard


# --checkpoint's largest --image-size: 4.6x the side (21x the pixels) of the released 224 models;
# a far larger side left predict computing for hours instead of answering.
MAX_IMAGE_SIZE = 1024


@dataclasses.dataclass
class Loaded:
    """A model in eval mode and what is needed to feed it and name its outputs."""

    model: MedMamba
    label_names: list[str]
    task: str  # a MedMNIST task string, e.g. "multi-class"
    image_size: int  # model input side
    stored_channels: int  # channels of the images training read (1 for grayscale MedMNIST sets)
    stored_size: int  # side of the images training read, before the eval transform resized them
    config: ml_collections.ConfigDict | None = None  # the training config; None for --checkpoint
    data_dir_given: bool = False  # config.data_dir is --data-dir's, not the training one
    checkpoint: str = ""  # which of a workdir's checkpoints was loaded: "best" or "latest"
    checkpoint_step: int = -1
    upstream_decoding: bool = False  # decode files as the released PyTorch code does (see image_files.to_stored)
    directory: str = ""  # where the loaded weights live: a workdir checkpoint's step directory, or --checkpoint

    def card(self) -> ModelCard:
        """The model card that makes a model directory of this model feed and name it as here."""
        from medmamba_jax.model_files import ModelCard

        return ModelCard(self.image_size, self.stored_size, self.stored_channels, (MEAN,) * self.in_chans,
                         (STD,) * self.in_chans, "upstream" if self.upstream_decoding else "dataset",
                         tuple(self.label_names), self.task)

    @property
    def multi_label(self) -> bool:
        return self.task.startswith("multi-label")

    @property
    def in_chans(self) -> int:
        return int(self.model.config.in_chans)

    @property
    def transform(self):
        """Stored uint8 images (b, H, W, C) -> model input, exactly as training evaluated them."""
        resize = self.config.resize if self.config is not None else "linear"  # a workdir resizes as it trained
        return EvalTransform(self.image_size, self.in_chans, resize)

    def scores(self, images: np.ndarray, batch_size: int, progress: str | None = None, temperature: float = 1.0,
               tta: str | None = None) -> np.ndarray:
        """Probabilities (N, K) of stored uint8 images (N, H, W, C), in batches padded to
        ``batch_size`` (one compilation for any N); ``progress`` labels a progress bar. The
        logits are divided by ``temperature``, and ``tta`` views averaged (``evaluation.predict``)."""
        return predict_scores(self.model, images, batch_size, multi_label=self.multi_label, temperature=temperature,
                              tta=tta, transform=self.transform, progress=progress)

    def logits(self, images: np.ndarray, batch_size: int, progress: str | None = None,
               tta: str | None = None) -> np.ndarray:
        """Logits (N, P, K) of each of the P ``tta`` views of stored uint8 images (N, H, W, C),
        batched as ``scores``; ``evaluation.predict.probabilities`` turns them into its scores."""
        return batched_apply(PassLogits(tta), self.model, images, batch_size, transform=self.transform,
                             progress=progress)


UPSTREAM_IMAGE_SIZE = 224  # the released weights' training resolution


def from_workdir(workdir: str, which: str = "best", data_dir: str | None = None,
                 allow_nonfinite: bool = False) -> Loaded:
    """The trained model of a train.py workdir, with its dataset's class names and task as
    saved in training (W/dataset.json). ``data_dir`` replaces the training config's for every
    later read of the dataset, and for a workdir trained before dataset.json existed, whose
    class names come from the dataset. Weights holding NaN or inf are refused unless
    ``allow_nonfinite``."""
    from medmamba_jax.training.checkpointing import load_trained_checkpoint, read_dataset_info

    workdir = os.path.expanduser(workdir)
    if not os.path.isdir(workdir):
        raise ToolError(f"workdir {workdir} does not exist")
    model, config, kind, step = load_trained_checkpoint(workdir, which, allow_nonfinite)
    if data_dir:
        with config.unlocked():
            config.data_dir = os.path.expanduser(data_dir)
    info = read_dataset_info(workdir)
    if info is None:
        with _dataset_errors(config, bool(data_dir)):
            info = dataset_info(config)
    outputs = int(model.config.num_classes)
    if outputs and len(info["label_names"]) != outputs:
        raise ToolError(f"the dataset has {len(info['label_names'])} classes but the model outputs {outputs}: "
                        f"its classes changed since training ({config.data_dir})")
    # MedMNIST images are stored at config.size and resized on the device; image-folder
    # images are resized to image_size when loaded (medmamba_jax.data.folder_source).
    stored = int(config.image_size) if config.dataset == "folder" else int(config.size)
    return Loaded(model, list(info["label_names"]), info["task"], int(config.image_size),
                  int(info["n_channels"]), stored, config, bool(data_dir), kind, step,
                  directory=os.path.join(os.path.abspath(workdir), "checkpoints", kind, str(step)))


@contextlib.contextmanager
def _dataset_errors(config: ml_collections.ConfigDict, data_dir_given: bool) -> Iterator[None]:
    """A DataError inside becomes a one-line ToolError; when the data may have moved since
    training, it names the training data_dir and --data-dir."""
    try:
        yield
    except DataError as err:
        hint = "" if data_dir_given else f" (the training data_dir, {config.data_dir}; pass --data-dir if it moved)"
        raise ToolError(f"{str(err).splitlines()[0]}{hint}") from err


def parse_labels(labels: str, num_classes: int | None = None) -> list[str]:
    """``--labels``: comma-separated names, or a text file with one name per line; ToolError
    unless they are distinct, non-empty and (if given) ``num_classes`` of them."""
    if os.path.isfile(labels):
        with open(labels) as f:
            names = [line.strip() for line in f if line.strip()]
    else:
        names = [name.strip() for name in labels.split(",")]
    if num_classes is not None and len(names) != num_classes:
        raise ToolError(f"--labels gives {len(names)} names but the checkpoint has {num_classes} classes")
    if "" in names or len(set(names)) != len(names):
        repeated = sorted({n for n in names if names.count(n) > 1 and n})
        raise ToolError(f"--labels must give {len(names)} distinct, non-empty names"
                        + (f"; repeated: {repeated}" if repeated else "; one is empty"))
    return names


def _label_names(labels: str | None, card: ModelCard, num_classes: int) -> list[str]:
    """--labels, else the checkpoint's names, else class_0, class_1, ..."""
    if labels:
        return parse_labels(labels, num_classes)
    return list(card.label_names) if card.label_names else [f"class_{i}" for i in range(num_classes)]


def from_checkpoint(directory: str, image_size: int | None, labels: str | None, allow_nonfinite: bool = False) -> Loaded:
    """A model directory; its inputs and classes as its card records them, or as ``image_size``
    and ``labels`` (which win) say; without either, RGB at 224 px as upstream reads files.
    Weights holding NaN or inf are refused unless ``allow_nonfinite``."""
    from medmamba_jax.model_files import load_model

    if image_size and image_size > MAX_IMAGE_SIZE:
        raise ToolError(f"--image-size {image_size} is above {MAX_IMAGE_SIZE}, the largest input these tools run "
                        "(the cost grows with its square; the released models take 224)")
    if os.path.isfile(directory):
        raise ToolError(f"--checkpoint takes a converted model directory, and {directory} is a file; "
                        f"convert it first: python -m medmamba_jax.convert {directory} DIR")
    if not os.path.isdir(directory):
        raise ToolError(f"checkpoint directory {directory} does not exist")
    model = load_model(directory, allow_nonfinite=allow_nonfinite)
    card: ModelCard = model.card
    if not model.config.num_classes:
        raise ToolError(f"{directory} holds a model without a classification head (num_classes 0): it gives "
                        "features, not class scores")
    image_size = image_size or card.image_size or UPSTREAM_IMAGE_SIZE
    if image_size < model.config.min_image_size:
        raise ToolError(f"--image-size {image_size} is below this model's minimum, {model.config.min_image_size}")
    if any(m != MEAN for m in card.mean or ()) or any(s != STD for s in card.std or ()):
        raise ToolError(f"{directory} normalises inputs with mean {card.mean} and std {card.std}; "
                        f"medmamba-jax feeds models mean {MEAN}, std {STD} only")
    names = _label_names(labels, card, int(model.config.num_classes))
    upstream = card.decoding == "upstream"
    stored_size = image_size if upstream or not card.stored_size else card.stored_size
    return Loaded(model, names, card.task, int(image_size), card.channels or int(model.config.in_chans),
                  int(stored_size), upstream_decoding=upstream, directory=os.path.abspath(directory))


def resolve_split(split: str) -> str:
    if split not in SPLITS:
        raise ToolError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    return split


def load_split(loaded: Loaded, split: str, limit: int | None = None):
    """(uint8 images, labels) of a workdir's dataset split, the first ``limit`` only if given."""
    if loaded.config is None:
        raise ToolError("this command needs a dataset: use --workdir, not --checkpoint")
    with _dataset_errors(loaded.config, loaded.data_dir_given):
        images, labels = data_load_split(loaded.config, resolve_split(split), loaded.label_names)
    if limit:
        images, labels = images[:limit], labels[:limit]
    return images, labels

