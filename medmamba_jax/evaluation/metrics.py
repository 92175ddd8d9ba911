"""The paper's classification metrics, from labels and predicted probabilities.

``compute_metrics(labels, scores, task)`` returns the ``results.json`` keys

* ``accuracy``: overall accuracy; for multi-label, the mean of the per-label accuracies;
* ``precision``, ``sensitivity``, ``specificity``, ``f1``: macro averages over classes
  (one-vs-rest, or over labels for multi-label);
* ``auc``: one-vs-rest macro ROC AUC;

plus ``per_class_precision``, ``per_class_sensitivity``, ``per_class_specificity``,
``per_class_f1``, ``per_class_auc`` (lists, one entry per class or label) and, for
single-label tasks, ``confusion_matrix`` (rows true, columns predicted).
``metrics_and_outcomes`` also returns the one-vs-rest truth and the per-class
TP / FN / FP / TN counts they were computed from, for tables and plots.

Predictions follow medmnist.Evaluator, so ``accuracy`` and ``auc`` equal its ACC and AUC:
argmax for multi-class and ordinal-regression, ``score[:, -1] > 0.5`` for binary-class,
``score > 0.5`` per label for multi-label. On a binary task the macro sensitivity equals
the macro specificity by construction (each class's sensitivity is the other's specificity).
A class whose AUC is undefined (absent, or alone, in ``labels``) gets NaN and is left out
of the macro AUC. In a single-label task, a class neither in ``labels`` nor predicted (a
small split, ``--limit``) was not evaluated: its per-class precision, sensitivity,
specificity and F1 are NaN and the macro averages leave it out, as sklearn's
``average="macro"`` does. Multi-label macros average every label, as sklearn's do.
``scored`` narrows the averages further: a class outside it (a trained class that an
external test folder lacks) gets NaN per-class values and is left out of every macro,
while predictions still range over all K classes, so an image predicted as it counts as
an error.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

MULTI_LABEL = "multi-label, binary-class"
BINARY = "binary-class"
TASKS = ("multi-class", BINARY, MULTI_LABEL, "ordinal-regression")


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0 where den is 0 (sklearn's zero_division=0 convention)."""
    return np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den > 0)


def _auc(truth: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC of one binary problem, NaN when only one class is present."""
    if truth.min() == truth.max():
        return float("nan")
    return float(roc_auc_score(truth, score))


OUTCOMES = ("TP", "FN", "FP", "TN")


def _outcome_counts(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """(K, 4) int counts of each of OUTCOMES per column of boolean (N, K) truth and prediction."""
    return np.stack([np.sum(truth & pred, axis=0), np.sum(truth & ~pred, axis=0),
                     np.sum(~truth & pred, axis=0), np.sum(~truth & ~pred, axis=0)], axis=1)


def _one_vs_rest(counts: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class precision, sensitivity, specificity and F1 of (K, 4) outcome counts."""
    tp, fn, fp, tn = counts.T.astype(np.float64)
    precision, sensitivity = _safe_div(tp, tp + fp), _safe_div(tp, tp + fn)
    return {
        "precision": precision,
        "sensitivity": sensitivity,
        "specificity": _safe_div(tn, tn + fp),
        "f1": _safe_div(2 * precision * sensitivity, precision + sensitivity),
    }


def _single_label(labels: np.ndarray, scores: np.ndarray, task: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """One-hot truth, one-hot prediction, per-class AUCs and extras of a single-label task."""
    labels = labels.reshape(-1).astype(np.int64)
    n_classes = scores.shape[1]
    if task == BINARY:
        pred = (scores[:, -1] > 0.5).astype(np.int64)
    else:
        pred = np.argmax(scores, axis=1)
    truth_1h, pred_1h = np.eye(n_classes, dtype=bool)[labels], np.eye(n_classes, dtype=bool)[pred]
    if task == BINARY:  # both classes' AUCs equal the positive-class AUC (scores sum to one)
        aucs = np.full(n_classes, _auc(labels, scores[:, -1]))
    else:
        aucs = np.array([_auc(truth_1h[:, k], scores[:, k]) for k in range(n_classes)])
    confusion = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(confusion, (labels, pred), 1)
    extras = {"accuracy": float(np.mean(pred == labels)), "confusion_matrix": confusion.tolist()}
    return truth_1h, pred_1h, {"aucs": aucs, **extras}


def compute_metrics(labels: np.ndarray, scores: np.ndarray, task: str,
                    scored: np.ndarray | None = None) -> dict[str, Any]:
    """Metrics of probabilities ``scores`` (N, K) against ``labels`` (N,) / (N, 1), or (N, K) multi-label;
    ``scored`` (K,) bool: the classes the macro averages cover (default: all)."""
    return metrics_and_outcomes(labels, scores, task, scored)[0]


def metrics_and_outcomes(
    labels: np.ndarray, scores: np.ndarray, task: str, scored: np.ndarray | None = None
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """``compute_metrics``, with what it counted for tables and plots: the (N, K) boolean
    one-vs-rest truth and the (K, 4) per-class counts of OUTCOMES."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    labels, scores = np.asarray(labels), np.asarray(scores, np.float64)
    if scores.ndim != 2 or len(scores) != len(labels):
        raise ValueError(f"scores must be (N, K) with N = {len(labels)} labels, got shape {scores.shape}")
    if task == MULTI_LABEL:
        truth, pred = labels.astype(bool), scores > 0.5
        aucs = np.array([_auc(truth[:, k], scores[:, k]) for k in range(scores.shape[1])])
        extras = {"accuracy": float(np.mean(truth == pred))}
    else:
        truth, pred, extras = _single_label(labels, scores, task)
        aucs = extras.pop("aucs")
    counts = _outcome_counts(truth, pred)
    per_class = _one_vs_rest(counts)
    unscored = np.zeros(len(counts), bool) if scored is None else ~np.asarray(scored, bool)
    if task != MULTI_LABEL:
        unscored |= counts[:, :3].sum(axis=1) == 0  # no TP, FN or FP: neither true nor predicted
    for values in (*per_class.values(), aucs):
        values[unscored] = np.nan
    result: dict[str, Any] = {
        "accuracy": extras.pop("accuracy"),
        "auc": float(np.nanmean(aucs)) if np.isfinite(aucs).any() else float("nan"),
    }
    result.update({name: float(np.nanmean(values)) for name, values in per_class.items()})
    result.update({f"per_class_{name}": values.tolist() for name, values in per_class.items()})
    result["per_class_auc"] = aucs.tolist()
    result.update(extras)
    return result, truth, counts


SUMMARY_KEYS = ("accuracy", "auc", "precision", "sensitivity", "specificity", "f1")


def summary(metrics: dict[str, Any]) -> dict[str, float]:
    """The scalar ``results.json`` keys of a ``compute_metrics`` result."""
    return {key: metrics[key] for key in SUMMARY_KEYS}
