"""Every figure of the analysis commands, with matplotlib's non-interactive Agg backend.

Each function draws one figure and saves it as PNG at ``path``; class names always label
the axes or legend, and colour maps are perceptually uniform (viridis, Blues) except the
Grad-CAM overlay, which uses the conventional jet so hot regions read at a glance.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only; no display needed on servers

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from medmamba_jax.evaluation.metrics import OUTCOMES  # noqa: E402

DPI = 150


def _save(fig, path: str) -> str:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def _short(name: str, width: int = 28) -> str:
    """Class names can be sentences (MedMNIST's); cut them so the axes stay legible."""
    return name if len(name) <= width else name[: width - 1] + "…"


def confusion_matrix(matrix: np.ndarray, names: list[str], title: str, path: str) -> str:
    """Counts (K, K), rows true and columns predicted, shaded by the row-normalised rate."""
    matrix = np.asarray(matrix)
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    k = len(names)
    fig, ax = plt.subplots(figsize=(max(4.5, 0.7 * k + 3), max(4.0, 0.6 * k + 2.5)))
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    labels = [_short(n) for n in names]
    ax.set_xticks(range(k), labels, rotation=45, ha="right")
    ax.set_yticks(range(k), labels)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    return _save(fig, path)


def multilabel_confusion(counts: np.ndarray, names: list[str], title: str, path: str) -> str:
    """Per-label counts (K, 4) of metrics.OUTCOMES, TP / FN / FP / TN (multi-label tasks have no K x K matrix)."""
    counts = np.asarray(counts)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6.5, max(3.5, 0.45 * len(names) + 1.5)))
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    fig.colorbar(image, ax=ax, label="fraction of images")
    ax.set_xticks(range(4), list(OUTCOMES))
    ax.set_yticks(range(len(names)), [_short(n) for n in names])
    for (i, j), count in np.ndenumerate(counts):
        ax.text(j, i, str(count), ha="center", va="center", fontsize=8, color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xlabel("outcome (threshold 0.5)")
    ax.set_title(title)
    return _save(fig, path)


def roc(truth_1h: np.ndarray, scores: np.ndarray, aucs: list[float], names: list[str], title: str, path: str) -> str:
    """One-vs-rest ROC curve per class (N, K) with its AUC in the legend; classes absent from truth are skipped."""
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    colours = plt.get_cmap("tab20" if len(names) > 10 else "tab10")
    for k, name in enumerate(names):
        column = truth_1h[:, k]
        if column.min() == column.max():
            continue
        fpr, tpr, _ = roc_curve(column, scores[:, k])
        ax.plot(fpr, tpr, color=colours(k % colours.N), lw=1.5, label=f"{_short(name)} (AUC {aucs[k]:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="chance")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title(title)
    ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def tsne(points: np.ndarray, classes: np.ndarray, names: list[str], title: str, path: str) -> str:
    """2-D embedding (N, 2) coloured by class index (N,) into ``names``."""
    fig, ax = plt.subplots(figsize=(7.5, 6))
    colours = plt.get_cmap("tab20" if len(names) > 10 else "tab10")
    for k, name in enumerate(names):
        mask = classes == k
        if mask.any():
            ax.scatter(points[mask, 0], points[mask, 1], s=30 if len(points) < 300 else 10, color=colours(k % colours.N),
                       label=f"{_short(name)} ({mask.sum()})", alpha=0.8, edgecolors="none")
    ax.set_xlabel("t-SNE 1")
    ax.set_ylabel("t-SNE 2")
    ax.set_title(title)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, markerscale=1.5, title="true class")
    return _save(fig, path)


def gradcam(image: np.ndarray, cam: np.ndarray, title: str, path: str) -> str:
    """Input image (H, W, C) uint8, the Grad-CAM map (H, W) in [0, 1], and their overlay, side by side."""
    shown = image[..., 0] if image.shape[-1] == 1 else image
    cmap = "gray" if shown.ndim == 2 else None
    fig, axes = plt.subplots(1, 3, figsize=(10.5, 3.8), gridspec_kw={"wspace": 0.25})
    axes[0].imshow(shown, cmap=cmap, vmin=0, vmax=255)
    axes[0].set_title("input")
    heat = axes[1].imshow(cam, cmap="jet", vmin=0, vmax=1)
    axes[1].set_title("Grad-CAM (relevance, 0 to 1)")
    fig.colorbar(heat, ax=axes[1], fraction=0.046, pad=0.04)
    axes[2].imshow(shown, cmap=cmap, vmin=0, vmax=255)
    axes[2].imshow(cam, cmap="jet", vmin=0, vmax=1, alpha=0.45)
    axes[2].set_title("overlay")
    for ax in axes:
        ax.set_axis_off()
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def robustness(table: dict[str, list[float]], metric: str, title: str, path: str) -> str:
    """One line per perturbation: ``metric`` at severities 0 (clean) .. 5."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = "osD^vP*Xh"
    for i, (name, values) in enumerate(table.items()):
        ax.plot(range(len(values)), values, marker=markers[i % len(markers)], label=name.replace("_", " "))
    ax.set_xticks(range(6), ["clean", "1", "2", "3", "4", "5"])
    ax.set_xlabel("severity")
    ax.set_ylabel(metric)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _save(fig, path)


def training_curves(histories: list, best_metric: str, path: str) -> str:
    """Loss, validation metrics and learning rate against epochs, one colour per run.

    ``histories`` are ``curves.History``; the best epoch by ``best_metric`` is starred, and a
    run's test result (of its best checkpoint) is given in the legend."""
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6), gridspec_kw={"wspace": 0.28})
    try:
        _draw_curves(fig, axes, histories, best_metric)
    except Exception:
        plt.close(fig)  # a figure that failed to draw must not stay open in a training process
        raise
    return _save(fig, path)


def _draw_curves(fig, axes, histories: list, best_metric: str) -> None:
    loss_ax, val_ax, lr_ax = axes
    colours = plt.get_cmap("tab10")
    shown = [best_metric] + [m for m in ("auc", "accuracy", "f1") if m != best_metric]
    styles = dict(zip(shown, ("-", "--", ":", "-.")))
    for i, run in enumerate(histories):
        colour = colours(i % colours.N)
        label = _short(run.name, 40)
        if run.test is not None and best_metric in run.test:
            label += f" (test {best_metric} {run.test[best_metric]:.4f}, epoch {run.test_epoch})"
        loss_ax.plot(run.train_x, run.train_loss, color=colour, lw=0.8, alpha=0.35)
        loss_ax.plot(run.epoch_x, run.epoch_loss, color=colour, marker="o", ms=3, lw=1.5, label=label)
        for metric in shown:
            if metric in run.val:
                val_ax.plot(run.epoch_x, run.val[metric], color=colour, ls=styles[metric], marker=".", lw=1.4)
        best = run.best(best_metric)
        if best is not None:
            val_ax.plot(*best, marker="*", ms=14, color=colour, markeredgecolor="black", zorder=3)
        lr_ax.plot(run.lr_x, run.lr, color=colour, lw=1.5, drawstyle="steps-pre")  # a value holds up to its point
    loss_ax.set(title="training loss (thin: per log window; dots: epoch mean)", xlabel="epoch", ylabel="loss")
    val_ax.set(title=f"validation (star: best {best_metric})", xlabel="epoch", ylabel="metric")
    val_ax.legend(handles=[plt.Line2D([], [], color="black", ls=styles[m], label=m) for m in shown], fontsize=8,
                  loc="lower right")
    lr_ax.set(title="learning rate", xlabel="epoch", ylabel="learning rate")
    if all((run.lr > 0).all() for run in histories):
        lr_ax.set_yscale("log")
    for ax in (loss_ax, val_ax, lr_ax):
        ax.grid(alpha=0.3)
    fig.legend(*loss_ax.get_legend_handles_labels(), loc="lower center", ncol=min(len(histories), 3),
               fontsize=9, bbox_to_anchor=(0.5, -0.02 - 0.045 * ((len(histories) - 1) // 3)))
    fig.subplots_adjust(bottom=0.2 + 0.05 * ((len(histories) - 1) // 3))


def reliability(diagrams: list, title: str, path: str, columns: int = 4) -> str:
    """Reliability diagrams: one panel per named ``calibration.Reliability`` in ``diagrams``
    [(name, reliability), ...] (one top-label panel, or one per label of a multi-label task).
    Each panel's bars are how often the forecasts of a bin came true, hatched red the gap to
    the bin's mean stated probability, the diagonal perfect calibration, and a histogram below
    counts the forecasts per bin."""
    columns = min(columns, len(diagrams))
    rows = -(-len(diagrams) // columns)
    side = 4.2 if len(diagrams) == 1 else 3.2
    fig = plt.figure(figsize=(side * columns, side * 1.4 * rows), layout="constrained")
    grid = fig.add_gridspec(2 * rows, columns, height_ratios=[3, 1] * rows)
    for i, (name, diagram) in enumerate(diagrams):
        row, column = divmod(i, columns)
        top, bottom = fig.add_subplot(grid[2 * row, column]), fig.add_subplot(grid[2 * row + 1, column])
        _reliability_panel(top, bottom, name, diagram, first=i == 0, left=column == 0)
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def _reliability_panel(top, bottom, name: str, diagram, first: bool, left: bool) -> None:
    bins = len(diagram.counts)
    edges = np.linspace(0, 1, bins + 1)
    centres, width = (edges[:-1] + edges[1:]) / 2, 1 / bins
    filled = diagram.counts > 0
    frequency = np.where(filled, diagram.frequency, 0.0)
    confidence = np.where(filled, diagram.confidence, 0.0)
    top.bar(centres, frequency, width, color="tab:blue", edgecolor="black", lw=0.5, label="came true")
    top.bar(centres[filled], (confidence - frequency)[filled], width, bottom=frequency[filled], color="none",
            edgecolor="tab:red", hatch="//", lw=0.8, label="gap to stated")
    top.plot([0, 1], [0, 1], ls="--", color="gray", lw=1, label="calibrated")
    top.set(xlim=(0, 1), ylim=(0, 1))
    top.set_title(f"{_short(name, 24)}\nECE {diagram.ece:.4f}", fontsize=9)
    top.set_xticklabels([])
    bottom.bar(centres, diagram.counts, width, color="gray", edgecolor="black", lw=0.5)
    bottom.set(xlim=(0, 1), xlabel="stated probability")
    if left:
        top.set_ylabel("fraction true")
        bottom.set_ylabel("count")
    if first:
        top.legend(fontsize=7, loc="upper left")
