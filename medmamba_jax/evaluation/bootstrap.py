"""Percentile-bootstrap confidence intervals of the summary metrics.

A test split is one sample of the images a model will meet: on another draw of the same
size its metrics would differ, by more than is often assumed on the small MedMNIST
splits (BreastMNIST's test split has 156 images). Drawing the split's images again with
replacement, and computing ``compute_metrics`` on each draw exactly as for the reported
value, shows that spread; ``scipy.stats.bootstrap`` does the resampling and the
percentiles.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.stats
import tqdm

from medmamba_jax.evaluation.metrics import SUMMARY_KEYS, compute_metrics, summary


def bootstrap_intervals(labels: np.ndarray, scores: np.ndarray, task: str, resamples: int = 1000,
                        confidence: float = 0.95, seed: int = 0,
                        progress: str | None = None, scored: np.ndarray | None = None,
                        ) -> dict[str, tuple[float, float]]:
    """(low, high) of each ``SUMMARY_KEYS`` metric at ``confidence``, by ``resamples`` draws.

    ``labels`` (N,) / (N, 1), or (N, K) multi-label, and ``scores`` (N, K) are as for
    ``compute_metrics``; an image's label and score are always drawn together. The same
    ``seed`` gives the same intervals. A metric that is undefined on some draw (an AUC on
    a draw without positives, possible only on tiny splits) has a NaN interval. ``progress``:
    a tqdm label, or None for no bar. ``scored``: as for ``compute_metrics``.
    """
    if resamples < 2:
        raise ValueError(f"resamples must be at least 2, got {resamples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    labels, scores = np.asarray(labels), np.asarray(scores)
    if len(labels) < 2:
        raise ValueError(f"a bootstrap needs at least 2 images, got {len(labels)}")
    bar = tqdm.tqdm(total=resamples, desc=f"bootstrap {progress}", disable=progress is None, leave=False)

    def metrics_of(index: np.ndarray) -> np.ndarray:
        bar.update()
        with warnings.catch_warnings():  # a class absent from a draw: its NaN is left out of the macro
            warnings.simplefilter("ignore", RuntimeWarning)
            values = summary(compute_metrics(labels[index], scores[index], task, scored))
        return np.array([values[key] for key in SUMMARY_KEYS])

    with bar, warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.stats.DegenerateDataWarning)  # NaN draws: reported as NaN
        result = scipy.stats.bootstrap((np.arange(len(labels)),), metrics_of, vectorized=False,
                                       n_resamples=resamples, confidence_level=confidence,
                                       method="percentile", rng=seed)
    low, high = result.confidence_interval
    return {key: (float(lo), float(hi)) for key, lo, hi in zip(SUMMARY_KEYS, low, high)}
