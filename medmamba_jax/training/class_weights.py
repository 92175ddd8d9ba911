"""Class weights for imbalanced data sets (``config.class_weights``), from the training split.

Single-label tasks weight each image's cross-entropy by its class's weight, ``"balanced"``
being scikit-learn's ``compute_class_weight('balanced')``: ``n_images / (n_classes * count)``.
The batch loss is the weighted sum divided by the sum of the weights (PyTorch's
``CrossEntropyLoss(weight=...)``), so weights that are all equal leave the loss unchanged.

Multi-label tasks weight the positives of each label (PyTorch's ``BCEWithLogitsLoss(pos_weight=...)``;
negatives weigh 1), ``"balanced"`` being ``negatives / positives`` in the training split: each
label's positives then weigh as much in total as its negatives, which is the ratio of the two
weights scikit-learn's ``balanced`` would give that label's two classes.
"""

from __future__ import annotations

import os

import numpy as np

from medmamba_jax.files import write_json
from medmamba_jax.training.errors import ConfigError

FILE = "class_weights.json"


def training_counts(labels: np.ndarray, multi_label: bool, num_classes: int) -> np.ndarray:
    """Images of each class (labels (N,)), or positives of each label (labels (N, L)): (num_classes,) int."""
    if multi_label:
        return np.asarray(labels).astype(np.int64).sum(axis=0)
    return np.bincount(np.asarray(labels).reshape(-1), minlength=num_classes)


def balanced(counts: np.ndarray, n_images: int, multi_label: bool) -> np.ndarray:
    """The ``"balanced"`` weights of the module docstring: (num_classes,) float64 from ``training_counts``."""
    counts = counts.astype(np.float64)
    if multi_label:
        return (n_images - counts) / counts
    return n_images / (len(counts) * counts)


def resolve(setting, train_labels: np.ndarray, info: dict) -> np.ndarray | None:
    """(num_classes,) float64 weights for ``config.class_weights`` (None when it is off), with one-line
    ConfigErrors for a list of the wrong length, or ``"balanced"`` on a class or label that the training
    split never (or, multi-label, always) shows."""
    if setting is None:
        return None
    names, multi_label = info["label_names"], info["multi_label"]
    what = "labels" if multi_label else "classes"
    if setting != "balanced":
        if len(setting) != len(names):
            raise ConfigError(f"class_weights has {len(setting)} weights, but the dataset has {len(names)} {what}: "
                              f"{', '.join(names)}")
        return np.asarray(setting, np.float64)
    counts, n = training_counts(train_labels, multi_label, len(names)), len(train_labels)
    unusable = [name for name, count in zip(names, counts) if count == 0 or (multi_label and count == n)]
    if unusable:
        never = "is positive in none or all" if multi_label else "has none"
        raise ConfigError(f"class_weights='balanced' cannot weigh {', '.join(unusable)}: each {never} of the "
                          f"{n} training images; give the weights as a list")
    return balanced(counts, n, multi_label)


def record(workdir: str, setting, weights: np.ndarray, train_labels: np.ndarray, info: dict) -> str:
    """Writes ``W/class_weights.json`` (the setting, the weights and the training counts they came from)
    and returns the one line that states them."""
    names, multi_label = info["label_names"], info["multi_label"]
    counts = training_counts(train_labels, multi_label, len(names))
    applies_to = "the positives of each label (negatives weigh 1)" if multi_label else "the images of each class"
    write_json(os.path.join(workdir, FILE), {
        "setting": setting if isinstance(setting, str) else list(setting), "applies_to": applies_to,
        "label_names": list(names), "weights": [float(w) for w in weights],
        "train_counts": [int(c) for c in counts], "train_images": len(train_labels),
    })
    source = f"balanced from {len(train_labels)} training images" if setting == "balanced" else "as given"
    listed = ", ".join(f"{name} {w:.3f}" for name, w in zip(names, weights))
    return f"class weights ({source}; for {applies_to}): {listed}"
