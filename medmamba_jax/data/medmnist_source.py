"""MedMNIST files, named by the ``medmnist`` package's dataset table: official file names, splits,
labels and MD5s. The ``.npz`` files are read here, so torch (which medmnist's ``Dataset`` classes
import) is never needed.

Files are ``{data_dir}/{flag}.npz`` at size 28 and ``{data_dir}/{flag}_{size}.npz`` otherwise,
each with ``{split}_images`` (N, H, W[, 3]) uint8 and ``{split}_labels`` (N, L) arrays.
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
import zipfile
from typing import Any

import numpy as np

from medmamba_jax import extras, files
from medmamba_jax.data.errors import DataError

SIZES = (28, 64, 128, 224)


def info(flag: str) -> dict[str, Any]:
    """medmnist.INFO[flag] for a 2D dataset, or a DataError naming the valid flags."""
    all_info = extras.medmnist().INFO
    flags_2d = sorted(f for f, i in all_info.items() if not i["python_class"].endswith("3D"))
    if flag not in flags_2d:
        raise DataError(f"unknown dataset {flag!r}: use 'folder' or a 2D MedMNIST flag, one of {flags_2d}")
    return all_info[flag]


def _size_flag(size: int) -> str:
    if size not in SIZES:
        raise DataError(f"MedMNIST size must be one of {SIZES}, got {size}")
    return "" if size == 28 else f"_{size}"


def npz_path(data_dir: str, flag: str, size: int) -> str:
    return os.path.join(os.path.expanduser(data_dir), f"{flag}{_size_flag(size)}.npz")


def url_and_md5(flag: str, size: int) -> tuple[str, str]:
    entry, suffix = info(flag), _size_flag(size)
    return entry[f"url{suffix}"], entry[f"MD5{suffix}"]


def _md5(path: str) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(flag: str, size: int, data_dir: str, replace: bool = False) -> str:
    """Downloads ``flag`` at ``size`` into ``data_dir`` unless present (or ``replace``); returns the path.

    The file is written under a temporary name and renamed only once its MD5 matches,
    so an interrupted or corrupted download never leaves a file that looks complete.
    """
    path = npz_path(data_dir, flag, size)
    if os.path.exists(path) and not replace:
        return path
    url, md5 = url_and_md5(flag, size)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        with files.atomic_path(path, suffix=".part") as tmp:
            with open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
                while block := response.read(1 << 20):
                    out.write(block)
            if (got := _md5(tmp)) != md5:
                raise DataError(f"download of {url} has MD5 {got}, expected {md5}; try again")
    except OSError as err:
        raise DataError(f"could not download {url} to {path}: {err}") from err
    return path


def _missing_message(path: str, flag: str, size: int) -> str:
    url, md5 = url_and_md5(flag, size)
    # Not medmnist's own `python -m medmnist download`: it needs torchvision, which the
    # README's environment leaves out.
    return f"MedMNIST file {path} not found. Pass --config.download=True, or download it from {url} (MD5 {md5})"


def load(flag: str, size: int, data_dir: str, split: str, fetch: bool) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W, C) uint8 and labels (N, L) int64 of one split, read into memory.

    With ``fetch``, a missing file is downloaded, and an existing file that cannot be read
    is MD5-checked and downloaded again if it differs from the official one. A file that
    reads is not hashed, since hashing the 224-pixel sets would cost every run seconds.
    """
    path = npz_path(data_dir, flag, size)
    if fetch:
        download(flag, size, data_dir)
    if not os.path.exists(path):
        raise DataError(_missing_message(path, flag, size))
    try:
        return _read(path, flag, size, split, fetch)
    except DataError:
        if not fetch or _md5(path) == url_and_md5(flag, size)[1]:
            raise
    download(flag, size, data_dir, replace=True)
    return _read(path, flag, size, split, fetch)


def _read(path: str, flag: str, size: int, split: str, fetch: bool) -> tuple[np.ndarray, np.ndarray]:
    entry = info(flag)
    try:
        with np.load(path) as arrays:  # the split's two arrays only: the others stay unread
            images, labels = arrays[f"{split}_images"], np.asarray(arrays[f"{split}_labels"])
    # Missing, truncated, not a zip; IndexError and TypeError: a bare array saved under the name.
    except (OSError, KeyError, ValueError, EOFError, IndexError, TypeError, zipfile.BadZipFile) as err:
        advice = "" if fetch else " (or pass --config.download=True to replace it)"
        raise DataError(f"{path} is not a readable MedMNIST file ({type(err).__name__}: {err}); "
                        f"delete it and download it again{advice}") from err
    if images.ndim == 3:  # grayscale sets store (N, H, W)
        images = images[..., None]
    _check_arrays(images, labels, entry, size, path, split)
    return images, labels.astype(np.int64)


def _check_arrays(images: np.ndarray, labels: np.ndarray, entry: dict, size: int, path: str, split: str) -> None:
    """The split's arrays are what the official files hold: uint8 (N, size, size, C) images,
    and (N, 1) class indices or (N, labels) 0/1 multi-label targets, N > 0. C may differ from the
    published channels (a set saved in colour, say): training checks it against in_chans."""
    n_labels = len(entry["label"])
    multi_label = entry["task"].startswith("multi-label")
    label_width = n_labels if multi_label else 1
    problems = []
    if images.dtype != np.uint8:
        problems.append(f"{images.dtype} images, not uint8")
    if not np.issubdtype(labels.dtype, np.integer):  # a cast to class indices would truncate -0.7 to 0
        problems.append(f"{labels.dtype} labels, not integers")
    if images.shape[1:3] != (size, size) or images.shape[3] not in (1, 3):
        problems.append(f"images of shape {images.shape[1:]}, not ({size}, {size}, 1 or 3)")
    if labels.shape[1:] != (label_width,):
        problems.append(f"labels of shape {labels.shape[1:]}, not ({label_width},)")
    if len(labels) != len(images):
        problems.append(f"{len(images)} images but {len(labels)} labels")
    if problems:
        raise DataError(f"{path} {split}: {'; '.join(problems)}, so it is not the official MedMNIST file "
                        f"{entry['python_class']} at size {size}; delete it and download it again")
    if not len(images):  # found here, before training, not by the validation or test after it
        raise DataError(f"{path} holds no {split} images; every split (train, val, test) needs some")
    upper = 1 if multi_label else n_labels - 1
    if labels.size and (labels.min() < 0 or labels.max() > upper):
        raise DataError(
            f"{path} {split}_labels holds values in [{labels.min()}, {labels.max()}], "
            f"outside the {n_labels} classes {list(entry['label'].values())}"
        )
