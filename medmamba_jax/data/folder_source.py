"""Image folders ``root/{train,val,test}/<class>/*.png`` through tensorflow-datasets' ImageFolder.

The class list is the sorted class folders of ``train`` (or, for a trained model, the list
saved with it); a class folder in a split outside that list is an error rather than a
silently shifted label.
tfds lists the files and labels; each file is decoded by ``image_files`` (as ``predict``
decodes one) to RGB and resized once, at load time, to ``image_size``, so a split
becomes one (N, image_size, image_size, 3) uint8 array like a MedMNIST split.
"""

from __future__ import annotations

import os

import numpy as np

from medmamba_jax.data import image_files
from medmamba_jax.data.errors import DataError

SPLITS = ("train", "val", "test")


def _builder(root: str):
    # ImageFolder lists and decodes files with TensorFlow; keep its logging quiet.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow_datasets as tfds

    return tfds.ImageFolder(root)


def _class_names(root: str, split: str) -> list[str]:
    split_dir = os.path.join(root, split)
    if not os.path.isdir(split_dir):
        return []
    return sorted(d for d in os.listdir(split_dir) if os.path.isdir(os.path.join(split_dir, d)))


def class_names(root: str) -> list[str]:
    """The training classes, which define the label indices for every split. Every reader of
    an image folder starts here, so this is where a missing root is reported."""
    if not root:
        raise DataError("no image-folder root: set --config.data_dir=ROOT, with images in ROOT/train/<class>/*.png")
    path = os.path.expanduser(root)
    if not os.path.isdir(path):
        raise DataError(f"image-folder root {path!r} is not a directory (expected {path}/train/<class>/*.png)")
    names = _class_names(path, "train")
    if not names:
        raise DataError(f"image folder {root}/train has no class folders")
    return names


def load(root: str, split: str, image_size: int, names: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(N, image_size, image_size, 3) uint8 images and (N,) int64 labels of one split; label i
    is ``names[i]``, by default the training classes found in ``root`` now."""
    root = os.path.expanduser(root)
    found = class_names(root)
    names = list(names) if names is not None else found
    builder = _builder(root)
    unknown = sorted(set(_class_names(root, split)) - set(names))
    if unknown:
        raise DataError(f"image folder {root}/{split} has classes {unknown} outside the training classes {names}")
    split_info = builder.info.splits[split] if split in builder.info.splits else None
    if split_info is None or split_info.num_examples == 0:
        raise DataError(f"image folder {root}/{split} has no images (.png, .jpg or .jpeg under <class>/ folders)")
    import tensorflow_datasets as tfds

    tfds_names = builder.info.features["label"].names
    encoded = builder.as_dataset(split=split, shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()})
    images, labels = [], []
    for example in tfds.as_numpy(encoded):
        name = example["image/filename"].decode()
        try:
            images.append(image_files.to_stored(image_files.decode(example["image"], name), 3, image_size))
        except image_files.ImageReadError as err:
            raise DataError(str(err)) from None
        labels.append(names.index(tfds_names[example["label"]]))
    return np.stack(images), np.asarray(labels, np.int64)
