"""Helpers shared by the training tests: what a workdir holds, and fake lifecycles to steer a run.

A run is steered through the ``Lifecycle`` handed to ``train_and_evaluate`` (or ``Trainer.fit``),
never by patching the trainer's module.
"""

from __future__ import annotations

import json
import os
from typing import Callable

import jax
import numpy as np
import pytest
from flax import nnx

from medmamba_jax.training import preemption
from medmamba_jax.training.checkpointing import load_trained
from medmamba_jax.training.lifecycle import Lifecycle, Phase


def records(workdir) -> list[dict]:
    """The workdir's metrics.jsonl records, in order."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def losses(workdir) -> dict[int, float]:
    """The logged train losses by step."""
    return {r["step"]: r["loss"] for r in records(workdir) if r["split"] == "train"}


def latest_steps(workdir) -> list[int]:
    """The steps of the workdir's 'latest' checkpoints, as directories on disk (none yet: [])."""
    latest = os.path.join(workdir, "checkpoints", "latest")
    return sorted(int(d) for d in os.listdir(latest) if d.isdigit()) if os.path.isdir(latest) else []


def weights(workdir, which="latest") -> list[np.ndarray]:
    """The parameters and batch statistics of the workdir's ``which`` checkpoint."""
    model, _ = load_trained(workdir, which)
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param, nnx.BatchStat))]


def assert_records_and_results_match(workdir, reference) -> None:
    """Each (split, step) is logged once, as in the uninterrupted ``reference`` run, with its
    values (the epoch's mean loss included; timings aside), and results.json is the same."""
    logged = [(r["split"], r["step"]) for r in records(workdir)]
    assert sorted(logged) == sorted((r["split"], r["step"]) for r in records(reference))
    skipped = ("images_per_sec", "seconds", "split")
    ours, theirs = ({(r["split"], r["step"]): {k: v for k, v in r.items() if k not in skipped} for r in records(w)}
                    for w in (workdir, reference))
    for key, record in theirs.items():
        assert ours[key] == pytest.approx(record, rel=1e-5, nan_ok=True), key
    assert json.load(open(os.path.join(workdir, "results.json"))) == json.load(
        open(os.path.join(reference, "results.json")))


class StopAfter(preemption.StopNotice):
    """A notice that arrives as micro-step ``step`` ends."""

    def __init__(self, step: int):
        super().__init__()
        self.step = step

    def reached(self, step: int) -> bool:
        self._received = self._received or step == self.step
        return self._received


class Hooked(Lifecycle):
    """A lifecycle that calls ``on_enter(phase, epoch)`` as each phase begins and ``on_saved(kind,
    step, meta)`` after each checkpoint (either may raise, or signal), and records the phases
    entered as (phase, epoch) pairs."""

    def __init__(self, on_enter: Callable[[Phase, int], None] | None = None,
                 on_saved: Callable[[str, int, dict], None] | None = None):
        super().__init__()
        self.on_enter, self.on_saved, self.entered = on_enter, on_saved, []

    def enter(self, phase: Phase, epoch: int) -> None:
        super().enter(phase, epoch)
        self.entered.append((phase, epoch))
        if self.on_enter is not None:
            self.on_enter(phase, epoch)

    def saved(self, kind: str, step: int, meta: dict) -> None:
        super().saved(kind, step, meta)
        if self.on_saved is not None:
            self.on_saved(kind, step, meta)

    def trained_epochs(self) -> list[int]:
        """The epochs whose training started, in order."""
        return [epoch for phase, epoch in self.entered if phase is Phase.TRAINING]
