"""Datasets (MedMNIST files or image folders), the input pipeline and the image transforms.

Public API, shared by training and the evaluation tools:

* ``load_split(config, split)`` -> (images uint8 (N, H, W, C), labels (N,) or (N, L) int64)
* ``preprocess(images_uint8, config)`` -> the exact eval-time model input, float32 NHWC
* ``dataset_info(config)`` -> {"task", "label_names", "n_channels", "num_classes", "multi_label"}
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medmamba_jax.data import folder_source, medmnist_source
from medmamba_jax.data.errors import DataError
from medmamba_jax.data.pipeline import TrainStream, prefetch
from medmamba_jax.data.transforms import (
    EvalTransform,
    TrainTransform,
    channels_fit,
    eval_transform,
    preprocess,
    train_transform,
)

SPLITS = ("train", "val", "test")

__all__ = [
    "DataError", "EvalTransform", "TrainStream", "TrainTransform", "channels_fit", "dataset_info", "eval_transform",
    "load_split", "prefetch", "preprocess", "train_transform",
]


def dataset_info(config) -> dict[str, Any]:
    """Task (a MedMNIST task string), label names, stored channels and model outputs of a dataset."""
    if config.dataset == "folder":
        names = folder_source.class_names(config.data_dir)
        task, n_channels = "multi-class", 3
    else:
        entry = medmnist_source.info(config.dataset)
        names = [entry["label"][k] for k in sorted(entry["label"], key=int)]
        task, n_channels = entry["task"], entry["n_channels"]
    return {
        "task": task,
        "label_names": names,
        "n_channels": n_channels,
        "num_classes": len(names),
        "multi_label": task.startswith("multi-label"),
    }


def load_split(config, split: str, label_names: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W, C) uint8 and labels of ``split``: (N,) int64, or (N, L) for multi-label.

    ``label_names`` fixes an image folder's label order (a trained model's classes); MedMNIST
    labels are fixed by the dataset.

    MedMNIST images keep their stored size and channels (C = 1 for grayscale sets);
    image-folder images are RGB at ``config.image_size``. ``preprocess`` makes either
    into model input.
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use one of {list(SPLITS)}")
    if config.dataset == "folder":
        return folder_source.load(config.data_dir, split, int(config.image_size), label_names)
    images, labels = medmnist_source.load(
        config.dataset, int(config.size), config.data_dir, split, bool(config.download)
    )
    if not dataset_info(config)["multi_label"]:
        labels = labels.reshape(-1)
    return images, labels
