"""Calibration: the expected calibration error (ECE) and temperature scaling.

ECE (Naeini et al. 2015; Guo et al. 2017) bins predictions into ``ECE_BINS`` equal-width
bins of the probability they state and averages, weighted by the bins' shares of the
predictions, the gap between that stated probability and how often it came true. A bin is
left-closed, [i/15, (i+1)/15), the last one also holding 1.0.

* single-label tasks: top-label ECE. A prediction is the top class, its probability the
  largest one, and it comes true when the top class is the label. On a binary task this is
  the class ``metrics`` predicts too (``score[:, -1] > 0.5``).
* multi-label tasks: one ECE per label, of that label's probability against whether the
  label is present (each label is its own yes/no forecast), and ``ece`` is their mean.

Temperature scaling (Guo et al. 2017) divides every logit by one T > 0, fitted by minimising
the negative log-likelihood (softmax cross-entropy, or binary cross-entropy per label) on a
held-out split; T leaves each pass's ranking and top class unchanged.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
from scipy import optimize, special

ECE_BINS = 15
# Where the fitted temperature is searched: far beyond what a trained classifier needs
# (Guo et al. report 1.1-3.5), and bounded so a degenerate split cannot send it to 0 or inf.
TEMPERATURE_RANGE = (0.05, 20.0)


class Reliability(NamedTuple):
    """Per-bin statistics (ECE_BINS,) of predictions: how many fell in the bin, their mean
    stated probability, and the fraction that came true (NaN for an empty bin)."""

    counts: np.ndarray
    confidence: np.ndarray
    frequency: np.ndarray

    @property
    def ece(self) -> float:
        """The count-weighted mean |frequency - confidence| over the bins."""
        filled = self.counts > 0
        gaps = np.abs(self.frequency[filled] - self.confidence[filled])
        return float(np.sum(self.counts[filled] * gaps) / max(self.counts.sum(), 1))


def reliability(probability: np.ndarray, came_true: np.ndarray, bins: int = ECE_BINS) -> Reliability:
    """Binned statistics of stated probabilities (M,) in [0, 1] and outcomes (M,) bool."""
    probability = np.asarray(probability, np.float64).reshape(-1)
    came_true = np.asarray(came_true, bool).reshape(-1)
    index = np.minimum((probability * bins).astype(np.int64), bins - 1)
    counts = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.bincount(index, probability, minlength=bins) / counts
        frequency = np.bincount(index, came_true.astype(np.float64), minlength=bins) / counts
    return Reliability(counts, confidence, frequency)


def reliabilities(labels: np.ndarray, scores: np.ndarray, multi_label: bool,
                  bins: int = ECE_BINS) -> list[Reliability]:
    """The binned forecasts of probabilities ``scores`` (N, K) that ECE is computed from: one
    (top-label) for a single-label task with labels (N,) or (N, 1); one per label for
    multi-label labels (N, K)."""
    scores = np.asarray(scores, np.float64)
    if multi_label:
        present = np.asarray(labels).astype(bool)
        return [reliability(scores[:, k], present[:, k], bins) for k in range(scores.shape[1])]
    labels = np.asarray(labels).reshape(-1)
    return [reliability(scores.max(axis=1), np.argmax(scores, axis=1) == labels, bins)]


def calibration_error(labels: np.ndarray, scores: np.ndarray, multi_label: bool,
                      bins: int = ECE_BINS) -> dict[str, Any]:
    """{"ece": float} of probabilities ``scores`` (N, K), and for multi-label also
    "per_label_ece" (K floats, whose mean ``ece`` is). NaN where a score is NaN or inf."""
    if not np.isfinite(scores).all():
        per_label = [float("nan")] * np.shape(scores)[1]
    else:
        per_label = [diagram.ece for diagram in reliabilities(labels, scores, multi_label, bins)]
    if not multi_label:
        return {"ece": per_label[0]}
    return {"ece": float(np.mean(per_label)), "per_label_ece": per_label}


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float, multi_label: bool) -> float:
    """Mean NLL of the labels under ``probabilities(logits, temperature)``, in float64 log space.

    ``logits`` (N, P, K) over P test-time passes whose probabilities are averaged; labels
    (N,) / (N, 1) class indices, or (N, K) 0/1 for multi-label (mean binary cross-entropy)."""
    scaled = np.asarray(logits, np.float64) / temperature
    passes = scaled.shape[1]

    def log_mean_over_passes(log_probs: np.ndarray) -> np.ndarray:  # log of the mean of the P probabilities
        return special.logsumexp(log_probs, axis=1) - math.log(passes)

    if multi_label:
        present = np.asarray(labels).astype(bool)
        log_yes = log_mean_over_passes(special.log_expit(scaled))
        log_no = log_mean_over_passes(special.log_expit(-scaled))
        return float(-np.mean(np.where(present, log_yes, log_no)))
    log_probs = log_mean_over_passes(special.log_softmax(scaled, axis=-1))
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    return float(-np.mean(log_probs[np.arange(len(labels)), labels]))


class TemperatureFit(NamedTuple):
    temperature: float
    nll_before: float  # at temperature 1
    nll_after: float
    # The likelihood is as good at an end of TEMPERATURE_RANGE as at ``temperature``: it keeps
    # improving beyond the range (a split with every image right drives T towards 0).
    unbounded: bool


def fit_temperature(logits: np.ndarray, labels: np.ndarray, multi_label: bool) -> TemperatureFit:
    """The temperature minimising ``negative_log_likelihood`` of ``logits`` (N, P, K), by
    scipy's bounded Brent search over log T in TEMPERATURE_RANGE."""
    if len(logits) == 0:
        raise ValueError("cannot fit a temperature on no images")

    def nll(log_t: float) -> float:
        return negative_log_likelihood(logits, labels, math.exp(log_t), multi_label)

    low, high = (math.log(t) for t in TEMPERATURE_RANGE)
    found = optimize.minimize_scalar(nll, bounds=(low, high), method="bounded", options={"xatol": 1e-5})
    nearer_end = low if found.x < (low + high) / 2 else high
    unbounded = nll(nearer_end) <= found.fun + 1e-9
    return TemperatureFit(math.exp(found.x), nll(0.0), float(found.fun), bool(unbounded))
