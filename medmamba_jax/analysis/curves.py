"""Training histories read back from train.py's W/metrics.jsonl, on an epoch axis.

Every record carries its micro-step and 0-based epoch; epoch e ends at micro-step
(e + 1) x steps-per-epoch, so an "epoch" record (written when an epoch is validated) gives
steps-per-epoch, and a train record at micro-step s sits at s / steps-per-epoch epochs.
The figure itself is ``plots.training_curves``.
"""

from __future__ import annotations

import math
import os
from typing import NamedTuple

import numpy as np

from medmamba_jax import files
from medmamba_jax.analysis.errors import ToolError

METRICS_FILE = "metrics.jsonl"  # written by training.reporting, which draws its curves with this module

class History(NamedTuple):
    """One run's curves. x values are epochs (epoch e's end is e + 1); arrays are float."""

    name: str
    train_x: np.ndarray  # (n,) the end of each logged window of steps
    train_loss: np.ndarray  # (n,) mean loss over that window
    epoch_x: np.ndarray  # (e,) 1, 2, ... for each validated epoch
    epoch_loss: np.ndarray  # (e,) mean train loss of the epoch
    val: dict[str, np.ndarray]  # metric -> (e,) validation value after each epoch in epoch_x
    lr_x: np.ndarray  # (m,) where the learning rate was logged
    lr: np.ndarray  # (m,)
    test: dict[str, float] | None  # the best checkpoint's test metrics, once tested
    test_epoch: int | None  # 1-based epoch of the tested checkpoint

    def best(self, metric: str) -> tuple[float, float] | None:
        """(epoch, value) of the first highest finite validation ``metric``, as training picks it."""
        values = self.val.get(metric)
        if values is None or not np.isfinite(values).any():
            return None
        i = int(np.nanargmax(np.where(np.isfinite(values), values, np.nan)))
        return float(self.epoch_x[i]), float(values[i])


def read_records(workdir: str) -> list[dict]:
    """The records of W/metrics.jsonl; a line that a killed run left half-written is skipped."""
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.isfile(path):
        what = "is not a train.py workdir" if not os.path.isdir(workdir) else "has not logged anything yet"
        raise ToolError(f"{path} not found: {workdir} {what}")
    return files.read_json_lines(path)


def history(records: list[dict], name: str) -> History:
    """The curves of one run's records. ToolError if no epoch has been validated yet."""
    by_split: dict[str, list[dict]] = {}
    for record in sorted(records, key=lambda r: r["step"]):
        by_split.setdefault(record["split"], []).append(record)
    epochs = by_split.get("epoch", [])
    if not epochs:
        raise ToolError(f"{name}: no epoch has been validated yet, so there is nothing to plot")
    steps_per_epoch = epochs[0]["step"] / (epochs[0]["epoch"] + 1)
    train = by_split.get("train", [])
    vals = {r["epoch"]: r for r in by_split.get("val", [])}
    metrics = [k for k in next(iter(vals.values()), {}) if k not in ("step", "epoch", "split")]
    epoch_numbers = [r["epoch"] for r in epochs]
    lr_points = sorted([(r["step"] / steps_per_epoch, r["lr"]) for r in train + epochs])
    test = by_split.get("test", [])

    def column(rows: list[dict], key: str) -> np.ndarray:
        return np.array([_number(r.get(key)) for r in rows], dtype=float)

    return History(
        name=name,
        train_x=column(train, "step") / steps_per_epoch,
        train_loss=column(train, "loss"),
        epoch_x=np.array(epoch_numbers, dtype=float) + 1,
        epoch_loss=column(epochs, "loss"),
        val={m: np.array([_number(vals.get(e, {}).get(m)) for e in epoch_numbers]) for m in metrics},
        lr_x=np.array([x for x, _ in lr_points], dtype=float),
        lr=np.array([v for _, v in lr_points], dtype=float),
        test={k: _number(v) for k, v in test[-1].items() if k not in ("step", "epoch", "split")} if test else None,
        test_epoch=int(test[-1]["epoch"]) + 1 if test else None,
    )


def _number(value) -> float:
    """A record's value as a float; NaN for a missing or non-numeric one."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def read_history(workdir: str, name: str | None = None) -> History:
    """The curves of a train.py workdir, named ``name`` (default: the workdir's path)."""
    return history(read_records(workdir), name or workdir)


def draw(histories: list[History], best_metric: str, path: str) -> str:
    """Writes the curves figure as PNG at ``path``, atomically: a reader (or a run killed
    meanwhile) sees the previous figure or the complete new one."""
    from medmamba_jax.analysis import plots  # matplotlib takes seconds to load: only when a figure is drawn

    with files.atomic_path(path, suffix=".tmp.png") as tmp:
        plots.training_curves(histories, best_metric, tmp)
    return path
