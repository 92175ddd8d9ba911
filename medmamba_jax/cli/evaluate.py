r"""Evaluate a trained workdir on a split: metrics.json, confusion_matrix.png, roc.png and a table.

    python -m medmamba_jax.evaluate --workdir runs/pathmnist [--split test] [--out DIR] [--bootstrap 1000]

metrics.json has the results.json keys (accuracy, auc, precision, sensitivity,
specificity, f1) and the per-class lists, computed by medmamba_jax.evaluation.metrics
exactly as training does, so the test split of the best checkpoint reproduces results.json.
With --bootstrap N it also has "ci95": each of those six metrics' 95% percentile-bootstrap
interval over N draws of the split's images (seed 0, so the same command gives the same
intervals); a metric undefined on some draw has a NaN interval.

With --folder DIR it scores an external test set instead of a split: DIR/<class>/<image
files> (PNG, JPEG or DICOM; hidden files skipped), each file read as predict reads one.
Folder classes are matched to the trained classes by name, ignoring case and treating
spaces, "_" and "-" alike, or by --class-map FOLDER=TRAINED,...; a folder class that matches
none is refused unless left out with --drop-class FOLDER. The macro averages cover the
trained classes the folder holds ("scored_classes" in metrics.json); the model still chooses
among all its classes, so an image predicted as a class the folder lacks counts as wrong.

    python -m medmamba_jax.evaluate --workdir runs/pneumoniamnist --folder cpn_xray/ \
        --class-map Normal=normal --drop-class COVID

Calibration: metrics.json has "ece", the expected calibration error (15 equal-width bins;
top-label, or for a multi-label task the mean of "per_label_ece"), and reliability.png
draws it. --calibrate fits one temperature on the validation split (the first --limit images
of it, as of the evaluated split), saves it beside the checkpoint (temperature.json), and
reports the ECE before and after; a temperature saved so is applied by later evaluate and
predict runs ("ece_uncalibrated" is then the ECE at temperature 1). --tta flip averages the
probabilities of each image and its left-right mirror; metrics.json records "tta".

    python -m medmamba_jax.evaluate --workdir runs/pathmnist --calibrate --tta flip
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Sequence

import numpy as np

from medmamba_jax.cli import common as cli
from medmamba_jax.data.image_files import ImageReadError, labelled_folder, load_for_model
from medmamba_jax.evaluation import metrics_and_outcomes
from medmamba_jax.evaluation.calibration import (ECE_BINS, TEMPERATURE_RANGE, calibration_error, fit_temperature,
                                                 reliabilities)
from medmamba_jax.evaluation.predict import probabilities
from medmamba_jax.files import write_json
from medmamba_jax.inference.loaded_model import Loaded, load_split, resolve_split

PER_CLASS = ("precision", "sensitivity", "specificity", "f1", "auc")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = cli.parser_for("medmamba_jax.evaluate", __doc__)
    cli.add_model_args(parser, checkpoint_ok=False)
    cli.add_split_args(parser, split_default=None)
    external = parser.add_argument_group("external test folder (instead of --split)")
    external.add_argument("--folder", metavar="DIR", help="score the images of DIR/<class>/* instead of a split")
    external.add_argument("--class-map", metavar="FOLDER=TRAINED,...",
                          help="pair folder classes with trained classes whose names differ")
    external.add_argument("--drop-class", action="append", default=[], metavar="FOLDER",
                          help="leave out a folder class the model was not trained on (repeatable)")
    parser.add_argument("--out", help="output directory (default: WORKDIR/eval_SPLIT, or WORKDIR/eval_folder_NAME)")
    cli.add_batch_size(parser, 64)
    parser.add_argument("--bootstrap", type=cli.int_at_least(0), default=0, metavar="N",
                        help="also give 95%% confidence intervals from N bootstrap draws, e.g. 1000 "
                        "(default: 0, none)")
    cli.add_tta(parser)
    parser.add_argument("--calibrate", action="store_true",
                        help="fit a temperature on the validation split, save it beside the checkpoint for "
                        "evaluate and predict to apply, and report the ECE before and after")
    args = parser.parse_args(argv)
    if args.bootstrap == 1:
        parser.error("argument --bootstrap: takes 0 (off) or at least 2 draws")
    if args.folder and (args.split or args.limit):
        parser.error("argument --folder: scores the whole folder; --split and --limit are for a dataset split")
    if (args.class_map or args.drop_class) and not args.folder:
        parser.error("arguments --class-map and --drop-class: need --folder")
    args.split = args.split or "test"
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
    kind = "mean over labels" if "per_label_ece" in metrics else "top-label"
    ece = f"ECE {metrics['ece']:.4f} ({kind}, {ECE_BINS} bins"
    if "ece_uncalibrated" in metrics:
        ece += f"; at temperature {metrics['temperature']:.4f}, {metrics['ece_uncalibrated']:.4f} without"
    lines.append(ece + ")" + (f"; test-time augmentation: {metrics['tta']}" if metrics.get("tta") else ""))
    if "ci95" in metrics:
        lines.append(f"95% bootstrap intervals ({metrics['bootstrap_draws']} draws): " + ", ".join(
            f"{key} {low:.4f}-{high:.4f}" for key, (low, high) in metrics["ci95"].items()))
    return "\n".join(lines)


def write_plots(out: str, loaded: Loaded, labels: np.ndarray, truth: np.ndarray, counts: np.ndarray,
                scores: np.ndarray, metrics: dict[str, Any], source: str) -> list[str]:
    """The confusion, ROC and reliability figures, from ``labels`` (N,) or (N, K), probabilities
    ``scores`` (N, K), and metrics_and_outcomes' truth (N, K) and counts (K, 4); ``source``
    names the images in the titles ("pathmnist test")."""
    from medmamba_jax.analysis import plots

    names = loaded.label_names
    confusion_path, roc_path = os.path.join(out, "confusion_matrix.png"), os.path.join(out, "roc.png")
    written = [confusion_path, roc_path]
    if loaded.multi_label:
        plots.multilabel_confusion(counts, names, f"{source}: per-label outcomes", confusion_path)
    else:
        plots.confusion_matrix(np.asarray(metrics["confusion_matrix"]), names,
                               f"{source}: confusion matrix (accuracy {metrics['accuracy']:.3f})", confusion_path)
    plots.roc(truth, scores, metrics["per_class_auc"], names,
              f"{source}: one-vs-rest ROC (macro AUC {metrics['auc']:.3f})", roc_path)
    if np.isfinite(scores).all():
        diagrams = reliabilities(labels, scores, loaded.multi_label)
        named = list(zip(names, diagrams)) if loaded.multi_label else [("top label", diagrams[0])]
        at = f"temperature {metrics['temperature']:.3g}" + (f", TTA {metrics['tta']}" if metrics.get("tta") else "")
        kind = "mean per-label ECE" if loaded.multi_label else "ECE"
        written.append(plots.reliability(named, f"{source}: reliability ({kind} {metrics['ece']:.4f}, {at})",
                                         os.path.join(out, "reliability.png")))
    return written


def read_folder(loaded: Loaded, folder: str, class_map: str | None,
                dropped: list[str]) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(stored uint8 images (N, H, W, C), trained class indices (N,), what metrics.json records
    about the folder) of an external test folder, its classes matched by ``external``."""
    import tqdm

    from medmamba_jax.evaluation.external import ClassMatchError, match_classes, parse_class_map

    if loaded.multi_label:
        raise cli.ToolError("--folder gives each image one class, and this workdir's model is multi-label")
    try:
        files = labelled_folder(folder)
        matched = match_classes(list(files), loaded.label_names, parse_class_map(class_map), dropped)
    except (ImageReadError, ClassMatchError) as err:
        raise cli.ToolError(str(err)) from None
    paths = [(path, matched[name]) for name in matched for path in files[name]]
    images, labels, unread = [], [], []
    for path, label in tqdm.tqdm(paths, desc="reading", disable=not paths, leave=False):
        try:
            images.append(load_for_model(path, loaded.stored_channels, loaded.stored_size, loaded.upstream_decoding))
            labels.append(label)
        except ImageReadError as err:
            unread.append(str(err))
    if unread:
        print(f"warning: {len(unread)} of {len(paths)} files are not readable images and are left out: "
              + "; ".join(unread[:3]) + ("; ..." if len(unread) > 3 else ""), file=sys.stderr)
    if not images:
        raise cli.ToolError(f"no readable image in the matched class folders of {folder}")
    record = {"folder": os.path.abspath(os.path.expanduser(folder)),
              "class_map": {name: loaded.label_names[matched[name]] if name in matched else None for name in files},
              "unread_files": unread}
    return np.stack(images), np.asarray(labels, np.int64), record


def validation_split(loaded: Loaded, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    """--calibrate's images and labels: the workdir's validation split (its first ``limit``);
    a one-line ToolError when the dataset gives none."""
    why = "--calibrate fits the temperature on the validation split"
    try:
        images, labels = load_split(loaded, "val", limit)
    except cli.ToolError as err:
        raise cli.ToolError(f"{why}, and this workdir's dataset gives none: {err}") from None
    if not len(images):
        raise cli.ToolError(f"{why}, and this workdir's validation split has no images")
    return images, labels


def fit_and_save_temperature(loaded: Loaded, images: np.ndarray, labels: np.ndarray,
                             args: argparse.Namespace) -> dict[str, Any]:
    """Fits the temperature on the logits of validation ``images`` (N, H, W, C), saves it
    beside the checkpoint, and returns what it saved with its path as "file"."""
    from medmamba_jax.analysis import temperature

    cli.writable_dir(loaded.directory, "checkpoint directory")  # before the validation split is scored
    print(f"fitting a temperature on {len(images)} val images", file=sys.stderr)
    logits = loaded.logits(images, args.batch_size, progress="val", tta=args.tta)
    if not np.isfinite(logits).all():
        raise cli.ToolError("--calibrate: the model's scores on the validation split are NaN or inf")
    fit = fit_temperature(logits, labels, loaded.multi_label)
    if fit.unbounded:
        low, high = TEMPERATURE_RANGE
        print(f"warning: the fitted temperature, {fit.temperature:.4g}, is no better than an end of the range "
              f"searched ({low:g}-{high:g}): the validation split's likelihood keeps improving beyond it (every "
              "image right, or a tiny split); it is saved, but look at reliability.png", file=sys.stderr)
    val_ece = calibrated_scores(loaded, logits, labels, fit.temperature)[1]
    record = {"temperature": fit.temperature, "fitted_on": "val", "num_images": int(len(images)), "tta": args.tta,
              "nll_before": fit.nll_before, "nll_after": fit.nll_after,
              "val_ece_before": val_ece.get("ece_uncalibrated", val_ece["ece"]), "val_ece_after": val_ece["ece"]}
    return {**record, "file": temperature.write(loaded.directory, loaded.model, record)}


def calibrated_scores(loaded: Loaded, logits: np.ndarray, labels: np.ndarray,
                      temperature: float) -> tuple[np.ndarray, dict[str, Any]]:
    """(probabilities (N, K) of pass logits (N, P, K) at ``temperature``, their ECE keys for
    metrics.json: "ece", "per_label_ece" for multi-label, and "ece_uncalibrated" when the
    temperature is not 1)."""
    def scores_at(t: float) -> np.ndarray:
        return np.asarray(probabilities(logits, t, loaded.multi_label))

    scores = scores_at(temperature)
    keys = {**calibration_error(labels, scores, loaded.multi_label), "temperature": temperature}
    if temperature != 1.0:
        keys["ece_uncalibrated"] = calibration_error(labels, scores_at(1.0), loaded.multi_label)["ece"]
    return scores, keys


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from medmamba_jax.analysis import temperature
    from medmamba_jax.evaluation.bootstrap import bootstrap_intervals

    resolve_split(args.split)  # fail on a bad split or output before loading anything
    name = f"folder_{os.path.basename(os.path.normpath(args.folder))}" if args.folder else args.split
    out = cli.writable_dir(args.out or os.path.join(args.workdir, f"eval_{name}"))
    loaded = cli.load(args)
    validation = validation_split(loaded, args.limit) if args.calibrate else None
    saved = None if args.calibrate else temperature.read(loaded.directory, loaded.model)
    if args.folder:
        images, labels, about = read_folder(loaded, args.folder, args.class_map, args.drop_class)
        source, progress = f"{loaded.config.dataset} model on {about['folder']}", "folder"
    else:
        images, labels = load_split(loaded, args.split, args.limit)
        about, source, progress = {"split": args.split}, f"{loaded.config.dataset} {args.split}", args.split
    if args.bootstrap and len(images) < 2:
        raise cli.ToolError(f"--bootstrap needs at least 2 images, and the {progress}"
                           f"{'' if args.folder else ' split'} gives {len(images)}")
    calibration = fit_and_save_temperature(loaded, *validation, args) if validation else None
    if calibration and not args.folder and args.split == "val":
        print("warning: the temperature is fitted on the split it is evaluated on: its ECE after is optimistic",
              file=sys.stderr)
    if saved:
        print(temperature.describe(saved, loaded.directory), file=sys.stderr)
    applied = calibration or saved or {"temperature": 1.0}
    print(f"evaluating {len(images)} images: {source}", file=sys.stderr)
    logits = loaded.logits(images, args.batch_size, progress=progress, tta=args.tta)
    scores, ece = calibrated_scores(loaded, logits, labels, applied["temperature"])
    # On a folder, the macros cover the trained classes it holds; a split is scored as training scores it.
    scored = np.bincount(labels, minlength=len(loaded.label_names)) > 0 if args.folder else None
    metrics, truth, counts = metrics_and_outcomes(labels, scores, loaded.task, scored)
    metrics.update(ece, tta=args.tta)
    if args.bootstrap:
        intervals = bootstrap_intervals(labels, scores, loaded.task, args.bootstrap, progress=progress, scored=scored)
        metrics.update(ci95=intervals, bootstrap_draws=args.bootstrap)
    out = cli.output_dir(out)
    support = truth.sum(axis=0)
    record = {**metrics, **about, "checkpoint": loaded.checkpoint, "step": loaded.checkpoint_step,
              "num_images": int(len(images)), "label_names": loaded.label_names, "support": support.tolist()}
    if scored is not None:
        record["scored_classes"] = [n for n, s in zip(loaded.label_names, scored) if s]
    if calibration:
        record["calibration"] = calibration
    write_json(os.path.join(out, "metrics.json"), record)
    written = write_plots(out, loaded, labels, truth, counts, scores, metrics, source)
    detail = f"{len(images)} images, {loaded.checkpoint} checkpoint, step {loaded.checkpoint_step}"
    print(format_table(metrics, loaded.label_names, support, f"{source} ({detail})"))
    if scored is not None:
        print(f"scored classes (the macro averages): {', '.join(record['scored_classes'])}; "
              f"not in the folder: {', '.join(n for n, s in zip(loaded.label_names, scored) if not s) or 'none'}")
    if calibration:
        print(f"calibration: temperature {calibration['temperature']:.4f} fitted on {calibration['num_images']} val "
              f"images (NLL {calibration['nll_before']:.4f} -> {calibration['nll_after']:.4f}, ECE "
              f"{calibration['val_ece_before']:.4f} -> {calibration['val_ece_after']:.4f}); {progress} ECE "
              f"{metrics.get('ece_uncalibrated', metrics['ece']):.4f} -> {metrics['ece']:.4f}; saved to "
              f"{calibration['file']}")
    print(f"wrote {os.path.join(out, 'metrics.json')}, " + ", ".join(written))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
