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
import os
import sys
from typing import Any, Sequence

import numpy as np

from medmamba_jax.cli import common as cli
from medmamba_jax.evaluation.metrics import SUMMARY_KEYS as METRICS
from medmamba_jax.files import write_json
from medmamba_jax.inference.loaded_model import load_split, resolve_split
from medmamba_jax.inference.robustness_sweep import KeptSweeps, run_all
from medmamba_jax.training.lifecycle import report_stop


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = cli.parser_for("medmamba_jax.robustness", __doc__)
    cli.add_model_args(parser, checkpoint_ok=False)
    cli.add_split_args(parser)
    parser.add_argument("--out", required=True, help="output directory")
    cli.add_batch_size(parser, 64)
    parser.add_argument("--no-medmnistc", action="store_true", help="skip the MedMNIST-C corruptions")
    return parser.parse_args(argv)


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
    resolve_split(args.split)
    loaded = cli.load(args)
    images, labels = load_split(loaded, args.split, args.limit)
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
