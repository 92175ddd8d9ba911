"""Image folders ``root/{train,val,test}/<class>/*.png`` through tensorflow-datasets' ImageFolder.

The class list is the sorted class folders of ``train`` (or, for a trained model, the list
saved with it); a class folder in a split outside that list is an error rather than a
silently shifted label, and so is a training class without a single image.
tfds lists the files and labels; each file is decoded by ``image_files`` (as ``predict``
decodes one) to RGB and resized once, at load time, to ``image_size``, so a split
becomes one (N, image_size, image_size, 3) uint8 array like a MedMNIST split.

Hidden names (``.ipynb_checkpoints/``, macOS's ``._scan.png``) are neither classes nor
images. tfds reads only .png, .jpg and .jpeg files directly inside a class folder: other
files there (in subfolders, .bmp, .tif, DICOM...) are named in a warning, not silently lost.
A name tfds would read that is no regular file (a FIFO, which would block the read forever,
a dangling symlink, a symlink loop, a folder) is refused, naming it, before anything is read.
"""

from __future__ import annotations

import errno
import os
import stat
import sys

import numpy as np

from medmamba_jax import extras
from medmamba_jax.data import image_files
from medmamba_jax.data.errors import DataError

SPLITS = ("train", "val", "test")
READ_EXTENSIONS = (".png", ".jpg", ".jpeg")  # what tfds' ImageFolder lists, in any letter case


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _tfds():
    """tensorflow_datasets (the ``folders`` extra), imported with TensorFlow's C++ logging off: a
    file it cannot read is reported as one DataError, and its log lines (level 2 still shows
    errors) would precede it."""
    if "tensorflow" not in sys.modules:  # TensorFlow reads it as it loads; importing JAX has set it to 1
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return extras.require("tensorflow_datasets", "Image-folder datasets", extras.install_command("folders"))


def _builder(root: str):
    return _tfds().ImageFolder(root)


def _class_names(root: str, split: str) -> list[str]:
    split_dir = os.path.join(root, split)
    if not os.path.isdir(split_dir):
        return []
    return sorted(d for d in os.listdir(split_dir) if os.path.isdir(os.path.join(split_dir, d)) and not _hidden(d))


def _unread_files(split_dir: str, classes: list[str]) -> list[str]:
    """Files under split_dir/<class>/ that ImageFolder does not list (hidden ones aside),
    relative to split_dir."""
    unread = []
    for name in classes:
        class_dir = os.path.join(split_dir, name)
        for folder, subfolders, files in os.walk(class_dir):
            subfolders[:] = [d for d in subfolders if not _hidden(d)]
            unread += [os.path.relpath(os.path.join(folder, f), split_dir) for f in files
                       if not _hidden(f) and (folder != class_dir or not f.lower().endswith(READ_EXTENSIONS))]
    return sorted(unread)


def _kind(path: str) -> str:
    """What a path that is not a regular file is, in words."""
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "a symlink loop"
        return "a dangling symlink" if os.path.islink(path) else err.strerror
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    return "a folder" if stat.S_ISDIR(mode) else "not a regular file"


def _check_regular_files(split_dir: str) -> None:
    """Refuses the names tfds would read under split_dir/<any folder>/ (hidden ones too: it reads
    them, and only then are they skipped) that are not regular files, before tfds opens one."""
    if not os.path.isdir(split_dir):
        return
    odd = []
    for folder in sorted(os.listdir(split_dir)):
        class_dir = os.path.join(split_dir, folder)
        if os.path.isdir(class_dir):
            odd += [f"{os.path.join(folder, name)} ({_kind(os.path.join(class_dir, name))})"
                    for name in sorted(os.listdir(class_dir))
                    if name.lower().endswith(READ_EXTENSIONS) and not os.path.isfile(os.path.join(class_dir, name))]
    if odd:
        examples = ", ".join(odd[:3]) + (", ..." if len(odd) > 3 else "")
        raise DataError(f"image folder {split_dir}: {len(odd)} image name{'s' * (len(odd) != 1)} not a regular file "
                        f"({examples}); remove or replace {'them' if len(odd) != 1 else 'it'}")


def _warn_unread(split_dir: str, unread: list[str]) -> None:
    if unread:
        examples = ", ".join(unread[:3]) + (", ..." if len(unread) > 3 else "")
        print(f"warning: image folder {split_dir}: {len(unread)} file{'s' * (len(unread) != 1)} not read ({examples}): "
              "only .png, .jpg and .jpeg files directly inside <class>/ folders are; convert or move the others",
              file=sys.stderr)


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
    is ``names[i]``, by default the training classes found in ``root`` now (which must then
    each have a training image)."""
    root = os.path.expanduser(root)
    defines_classes = names is None
    if defines_classes:
        names = class_names(root)
    elif not os.path.isdir(root):  # a trained model's classes come with it: a test-only folder will do
        raise DataError(f"image-folder root {root!r} is not a directory")
    names = list(names)
    split_dir = os.path.join(root, split)
    present = _class_names(root, split)
    unknown = sorted(set(present) - set(names))
    if unknown:
        raise DataError(f"image folder {split_dir} has classes {unknown} outside the training classes {names}")
    _check_regular_files(split_dir)
    _warn_unread(split_dir, _unread_files(split_dir, present))
    images, labels = _decode_split(root, split, names, image_size)
    if not labels:
        raise DataError(f"image folder {split_dir} has no images (.png, .jpg or .jpeg under <class>/ folders)")
    labels = np.asarray(labels, np.int64)
    empty = [n for n, count in zip(names, np.bincount(labels, minlength=len(names))) if count == 0]
    if empty and split == "train" and defines_classes:
        raise DataError(f"image folder {split_dir}: the class folders {empty} hold no image to train on")
    return np.stack(images), labels


def _decode_split(root: str, split: str, names: list[str], image_size: int) -> tuple[list[np.ndarray], list[int]]:
    """The split's images, stored as training reads them, and their indices into ``names``."""
    tfds = _tfds()
    builder = tfds.ImageFolder(root)
    if split not in builder.info.splits or builder.info.splits[split].num_examples == 0:
        return [], []  # tfds cannot make a dataset of an empty split
    tfds_names = builder.info.features["label"].names
    encoded = builder.as_dataset(split=split, shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()})
    images, labels = [], []
    try:
        for example in tfds.as_numpy(encoded):
            name, label = example["image/filename"].decode(), tfds_names[example["label"]]
            if _hidden(label) or _hidden(os.path.basename(name)):
                continue
            images.append(image_files.to_stored(image_files.decode(example["image"], name), 3, image_size))
            labels.append(names.index(label))
    except image_files.ImageReadError as err:
        raise DataError(str(err)) from None
    except _tf_errors() as err:  # a file that changed since it was listed, say
        # The first line ends with the file and the reason, after the names of the ops it went through.
        reason = err.message.splitlines()[0].rpartition(": ")[2]
        raise DataError(f"image folder {os.path.join(root, split)}: cannot read {reason}") from None
    return images, labels


def _tf_errors() -> type[Exception]:
    import tensorflow as tf

    return tf.errors.OpError
