r"""Robustness of a trained workdir to image perturbations, each at 5 severities.

    python -m medmamba_jax.robustness --workdir runs/pathmnist --out robustness/ [--split test]

Runs rotation, translation, colour temperature (RGB datasets only), Gaussian noise, blur
and contrast (medmamba_jax.analysis.perturb) on the stored images, then the usual eval
transform, and the MedMNIST-C corruptions for the dataset when the optional medmnistc
package is installed. Writes robustness.json (metrics per perturbation and severity) and
one line plot per metric, robustness_METRIC.png.

On a CPU this can take hours, so each finished perturbation is kept in
robustness.partial.json: run the same command again after a crash or Ctrl-C and only the
rest is scored. Kept results are reused only for the same checkpoint and the same images.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from typing import Any, Callable, Sequence

import numpy as np
from tqdm import tqdm

from medmamba_jax.cli import common as cli
from medmamba_jax.evaluation import compute_metrics, summary
from medmamba_jax.evaluation.metrics import SUMMARY_KEYS as METRICS
from medmamba_jax.files import write_json
from medmamba_jax.training.lifecycle import report_stop


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = cli.parser_for("medmamba_jax.robustness", __doc__)
    cli.add_model_args(parser, checkpoint_ok=False)
    cli.add_split_args(parser)
    parser.add_argument("--out", required=True, help="output directory")
    cli.add_batch_size(parser, 64)
    parser.add_argument("--no-medmnistc", action="store_true", help="skip the MedMNIST-C corruptions")
    return parser.parse_args(argv)


CHUNK_BYTES = 64 * 2**20  # uint8 images perturbed at a time: their float32 work copies stay near 1 GB


class Scorer:
    """Summary metrics of the model on (perturbed) uint8 images against fixed labels."""

    def __init__(self, loaded: cli.Loaded, labels: np.ndarray, batch_size: int):
        self.loaded, self.labels, self.batch_size = loaded, labels, batch_size

    def __call__(self, images: np.ndarray, severity: int = 0, perturb: Callable | None = None) -> dict[str, float]:
        """Metrics on ``perturb(chunk, severity, first)`` of each chunk of the images (none: the images)."""
        per_image = max(images[:1].nbytes, 1)
        chunk = max(1, CHUNK_BYTES // per_image // self.batch_size) * self.batch_size  # whole batches: one compilation
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

    def __init__(self, out: str, loaded: cli.Loaded, images: np.ndarray, labels: np.ndarray):
        import jax
        from flax import nnx

        self._write, self.path = write_json, os.path.join(out, PARTIAL_FILE)
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
        self._write(self.path, {"identity": self.identity, "table": self.table})
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


def run_all(loaded: cli.Loaded, images: np.ndarray, labels: np.ndarray, batch_size: int,
            use_medmnistc: bool, kept: KeptSweeps) -> dict[str, Any]:
    """The robustness table: clean metrics, then every applicable perturbation's severities,
    each taken from ``kept`` if it holds it, else scored and put there."""
    from medmamba_jax.analysis import perturb

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


def write_plots(table: dict[str, Any], out: str, title: str) -> list[str]:
    from medmamba_jax.analysis import plots

    groups = {**table["perturbations"], **{f"C: {k}": v for k, v in table["medmnistc"].items()}}
    paths = []
    for metric in METRICS:
        lines = {name: [row[metric] for row in entry["results"]] for name, entry in groups.items()}
        path = os.path.join(out, f"robustness_{metric}.png")
        paths.append(plots.robustness(lines, metric, f"{title}: {metric} under perturbation", path))
    return paths


def format_table(table: dict[str, Any], metric: str = "accuracy") -> str:
    """``metric`` per perturbation (rows) and severity (columns)."""
    groups = {**table["perturbations"], **{f"C:{k}": v for k, v in table["medmnistc"].items()}}
    width = max([20] + [len(n) for n in groups])
    lines = [f"{metric:<{width}} " + " ".join(f"{s:>7}" for s in ("clean", "1", "2", "3", "4", "5"))]
    for name, entry in groups.items():
        lines.append(f"{name:<{width}} " + " ".join(f"{row[metric]:>7.4f}" for row in entry["results"]))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cli.resolve_split(args.split)
    loaded = cli.load(args)
    images, labels = cli.load_split(loaded, args.split, args.limit)
    images = np.asarray(images)
    out = cli.output_dir(args.out)
    kept = KeptSweeps(out, loaded, images, labels)
    try:
        table = run_all(loaded, images, labels, args.batch_size, not args.no_medmnistc, kept)
    except KeyboardInterrupt as stopped:
        return report_stop(stopped, f"finished perturbations are kept in {kept.path}; run the same command to go on")
    table.update(split=args.split, dataset=loaded.config.dataset)
    write_json(os.path.join(out, "robustness.json"), table)
    kept.remove()
    paths = write_plots(table, out, f"{loaded.config.dataset} {args.split}")
    print(format_table(table))
    for name, reason in table["skipped"].items():
        print(f"skipped {name}: {reason}")
    print(f"wrote {os.path.join(out, 'robustness.json')} and {len(paths)} plots in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
