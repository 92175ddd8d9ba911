"""A trained model's metrics on perturbed images: each perturbation at severities 1 to 5, kept as
each one finishes so that an interrupted sweep goes on where it stopped.

``run_all(loaded, images, labels, batch_size, use_medmnistc, KeptSweeps(out, loaded, images,
labels))`` returns the table ``medmamba robustness`` (cli/robustness.py) writes as
robustness.json. The perturbations are ``analysis.perturb``'s, and MedMNIST-C's corruptions
when that package is installed.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from typing import Any, Callable

import jax
import numpy as np
from flax import nnx
from tqdm import tqdm

from medmamba_jax.analysis import perturb
from medmamba_jax.evaluation import compute_metrics, summary
from medmamba_jax.files import write_json
from medmamba_jax.inference.loaded_model import Loaded

CHUNK_BYTES = 64 * 2**20  # uint8 images perturbed at a time: their float32 work copies stay near 1 GB


class Scorer:
    """Summary metrics of the model on (perturbed) uint8 images against fixed labels."""

    def __init__(self, loaded: Loaded, labels: np.ndarray, batch_size: int, chunk_bytes: int = CHUNK_BYTES):
        self.loaded, self.labels, self.batch_size, self.chunk_bytes = loaded, labels, batch_size, chunk_bytes

    def __call__(self, images: np.ndarray, severity: int = 0, perturb: Callable | None = None) -> dict[str, float]:
        """Metrics on ``perturb(chunk, severity, first)`` of each chunk of the images (none: the images)."""
        per_image = max(images[:1].nbytes, 1)
        chunk = max(1, self.chunk_bytes // per_image // self.batch_size) * self.batch_size  # whole batches: one compilation
        scores = []
        for first in range(0, len(images), chunk):
            part = images[first : first + chunk]
            scores.append(self.loaded.scores(part if perturb is None else perturb(part, severity, first), self.batch_size))
        return summary(compute_metrics(self.labels, np.concatenate(scores), self.loaded.task))


def sweep(name: str, apply: Callable[[np.ndarray, int, int], np.ndarray], images: np.ndarray, score: Scorer,
          clean: dict[str, float], bar: tqdm) -> list[dict[str, float]]:
    """Metrics at severities 0 (the clean result) to 5 of one perturbation."""
    rows = [{"severity": 0, **clean}]
    for severity in range(1, 6):
        bar.set_postfix_str(f"{name} {severity}")
        rows.append({"severity": severity, **score(images, severity, apply)})
        bar.update()
    return rows


PARTIAL_FILE = "robustness.partial.json"


class KeptSweeps:
    """Finished sweeps saved as they end (in ``PARTIAL_FILE``), and those an interrupted run of
    the same checkpoint on the same images saved there."""

    def __init__(self, out: str, loaded: Loaded, images: np.ndarray, labels: np.ndarray):
        self.path = os.path.join(out, PARTIAL_FILE)
        weights = jax.tree.leaves(nnx.state(loaded.model, nnx.Param, nnx.BatchStat))
        self.identity = {"weights": _digest(weights), "images": _digest([images, labels]),
                         "image_size": loaded.image_size}
        self.table: dict[str, Any] = {}
        try:
            with open(self.path) as f:
                saved = json.load(f)
        except (OSError, ValueError):  # none, or one cut short
            return
        if isinstance(saved, dict) and saved.get("identity") == self.identity:
            self.table = saved.get("table", {})

    def get(self, group: str, name: str, described: dict | None = None) -> Any:
        """The kept entry, if it was made with the settings in ``described`` (a perturbation's
        parameters, which a newer version may have changed)."""
        entry = self.table.get(group, {}).get(name)
        if entry is None or any(entry.get(key) != value for key, value in (described or {}).items()):
            return None
        return entry

    def put(self, group: str, name: str, value: Any) -> Any:
        self.table.setdefault(group, {})[name] = value
        write_json(self.path, {"identity": self.identity, "table": self.table})
        return value

    def remove(self) -> None:
        if os.path.exists(self.path):
            os.remove(self.path)


def _digest(arrays: list) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for array in map(np.asarray, arrays):
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()


def run_all(loaded: Loaded, images: np.ndarray, labels: np.ndarray, batch_size: int,
            use_medmnistc: bool, kept: KeptSweeps) -> dict[str, Any]:
    """The robustness table: clean metrics, then every applicable perturbation's severities,
    each taken from ``kept`` if it holds it, else scored and put there."""
    score = Scorer(loaded, labels, batch_size)
    rgb = images.shape[-1] == 3
    own = [p for p in perturb.PERTURBATIONS if rgb or not p.rgb_only]
    skipped = {p.name: "needs RGB images; this dataset is grayscale" for p in perturb.PERTURBATIONS if p not in own}
    extra: dict[str, Callable] = {}
    if use_medmnistc:
        found = perturb.medmnistc_corruptions(loaded.config.dataset)
        if isinstance(found, str):
            skipped["medmnistc"] = found
        else:
            extra = found
    planned = [("perturbations", p.name, p, {"unit": p.unit, "params": list(p.params)}) for p in own]
    planned += [("medmnistc", name, apply, {}) for name, apply in extra.items()]
    done = sum(kept.get(group, name, described) is not None for group, name, _, described in planned)
    if done:
        print(f"resuming: {done} of {len(planned)} perturbations kept in {kept.path}", file=sys.stderr)
    clean = kept.get("clean", "metrics") or kept.put("clean", "metrics", score(images))
    table: dict[str, Any] = {"clean": clean, "perturbations": {}, "medmnistc": {}, "skipped": skipped,
                             "num_images": int(len(images))}
    with tqdm(total=5 * len(planned), initial=5 * done, desc="robustness", unit="eval", file=sys.stderr) as bar:
        for group, name, apply, described in planned:
            table[group][name] = kept.get(group, name, described) or kept.put(
                group, name, {**described, "results": sweep(name, apply, images, score, clean, bar)})
    return table
