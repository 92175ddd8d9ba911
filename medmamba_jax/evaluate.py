r"""Evaluate a trained workdir on a split: metrics.json, confusion_matrix.png, roc.png and a table.

    python -m medmamba_jax.evaluate --workdir runs/pathmnist [--split test] [--out DIR] [--bootstrap 1000]

metrics.json has the results.json keys (accuracy, auc, precision, sensitivity,
specificity, f1) and the per-class lists, computed by medmamba_jax.evaluation.metrics
exactly as training does, so the test split of the best checkpoint reproduces results.json.
With --bootstrap N it also has "ci95": each of those six metrics' 95% percentile-bootstrap
interval over N draws of the split's images (seed 0, so the same command gives the same
intervals); a metric undefined on some draw has a NaN interval.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Sequence

import numpy as np

from medmamba_jax.analysis import cli

PER_CLASS = ("precision", "sensitivity", "specificity", "f1", "auc")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = cli.parser_for("medmamba_jax.evaluate", __doc__)
    cli.add_model_args(parser, checkpoint_ok=False)
    cli.add_split_args(parser)
    parser.add_argument("--out", help="output directory (default: WORKDIR/eval_SPLIT)")
    cli.add_batch_size(parser, 64)
    parser.add_argument("--bootstrap", type=cli.int_at_least(0), default=0, metavar="N",
                        help="also give 95%% confidence intervals from N bootstrap draws, e.g. 1000 "
                        "(default: 0, none)")
    args = parser.parse_args(argv)
    if args.bootstrap == 1:
        parser.error("argument --bootstrap: takes 0 (off) or at least 2 draws")
    return args


def format_table(metrics: dict[str, Any], names: list[str], support: np.ndarray, title: str) -> str:
    """A fixed-width table: one row per class and a macro-average row."""
    width = max(12, min(32, max(len(n) for n in names)))
    header = f"{'class':<{width}} " + " ".join(f"{k:>11}" for k in PER_CLASS) + f" {'support':>8}"
    lines = [title, header, "-" * len(header)]
    for k, name in enumerate(names):
        values = " ".join(f"{metrics[f'per_class_{m}'][k]:>11.4f}" for m in PER_CLASS)
        shown = name if len(name) <= width else name[: width - 1] + "…"
        lines.append(f"{shown:<{width}} {values} {int(support[k]):>8}")
    lines.append("-" * len(header))
    lines.append(f"{'macro average':<{width}} " + " ".join(f"{metrics[m]:>11.4f}" for m in PER_CLASS)
                 + f" {int(support.sum()):>8}")
    lines.append(f"accuracy {metrics['accuracy']:.4f}")
    if "ci95" in metrics:
        lines.append(f"95% bootstrap intervals ({metrics['bootstrap_draws']} draws): " + ", ".join(
            f"{key} {low:.4f}-{high:.4f}" for key, (low, high) in metrics["ci95"].items()))
    return "\n".join(lines)


def write_plots(out: str, loaded: cli.Loaded, truth: np.ndarray, counts: np.ndarray, scores: np.ndarray,
                metrics: dict[str, Any], split: str) -> list[str]:
    """The confusion and ROC figures, from metrics_and_outcomes' truth (N, K) and counts (K, 4)."""
    from medmamba_jax.analysis import plots

    names = loaded.label_names
    dataset = loaded.config.dataset
    confusion_path, roc_path = os.path.join(out, "confusion_matrix.png"), os.path.join(out, "roc.png")
    if loaded.multi_label:
        plots.multilabel_confusion(counts, names, f"{dataset} {split}: per-label outcomes", confusion_path)
    else:
        plots.confusion_matrix(np.asarray(metrics["confusion_matrix"]), names,
                               f"{dataset} {split}: confusion matrix (accuracy {metrics['accuracy']:.3f})",
                               confusion_path)
    plots.roc(truth, scores, metrics["per_class_auc"], names,
              f"{dataset} {split}: one-vs-rest ROC (macro AUC {metrics['auc']:.3f})", roc_path)
    return [confusion_path, roc_path]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from medmamba_jax.evaluation import metrics_and_outcomes
    from medmamba_jax.evaluation.bootstrap import bootstrap_intervals
    from medmamba_jax.training.checkpointing import write_json

    cli.resolve_split(args.split)  # fail on a bad split or output before loading anything
    out = cli.writable_dir(args.out or os.path.join(args.workdir, f"eval_{args.split}"))
    loaded = cli.load(args)
    images, labels = cli.load_split(loaded, args.split, args.limit)
    if args.bootstrap and len(images) < 2:
        raise cli.ToolError(f"--bootstrap needs at least 2 images, and the {args.split} split gives {len(images)}")
    print(f"evaluating {len(images)} {args.split} images of {loaded.config.dataset}", file=sys.stderr)
    scores = loaded.scores(images, args.batch_size, progress=args.split)
    metrics, truth, counts = metrics_and_outcomes(labels, scores, loaded.task)
    if args.bootstrap:
        intervals = bootstrap_intervals(labels, scores, loaded.task, args.bootstrap, progress=args.split)
        metrics.update(ci95=intervals, bootstrap_draws=args.bootstrap)
    out = cli.output_dir(out)
    support = truth.sum(axis=0)
    record = {**metrics, "split": args.split, "checkpoint": loaded.checkpoint, "step": loaded.checkpoint_step,
              "num_images": int(len(images)), "label_names": loaded.label_names, "support": support.tolist()}
    write_json(os.path.join(out, "metrics.json"), record)
    written = write_plots(out, loaded, truth, counts, scores, metrics, args.split)
    source = f"{len(images)} images, {loaded.checkpoint} checkpoint, step {loaded.checkpoint_step}"
    print(format_table(metrics, loaded.label_names, support, f"{loaded.config.dataset} {args.split} ({source})"))
    print(f"wrote {os.path.join(out, 'metrics.json')}, " + ", ".join(written))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
