r"""Explain a trained model: Grad-CAM overlays for image files, or a t-SNE map of a split.

    python -m medmamba_jax.explain gradcam --workdir runs/pathmnist img1.png img2.dcm --out cams/
    python -m medmamba_jax.explain gradcam --checkpoint converted/ img1.png --out cams/
    python -m medmamba_jax.explain tsne --workdir runs/pathmnist [--split test] --out tsne/

Grad-CAM is computed on the last stage by JAX autodiff through the NNX model (see
medmamba_jax.analysis.gradcam) for the predicted class, or for --target. t-SNE
(scikit-learn) embeds the globally pooled last-stage features, coloured by true class.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
from typing import Sequence

import jax
import numpy as np
from flax import nnx
from PIL import Image

from medmamba_jax.cli import common as cli
from medmamba_jax.evaluation.predict import batched_apply
from medmamba_jax.inference.loaded_model import Loaded, load_split, resolve_split


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = cli.parser_for("medmamba_jax.explain", __doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    cam = commands.add_parser("gradcam", help="Grad-CAM overlay PNG per image file")
    cli.add_model_args(cam, checkpoint_ok=True)
    cam.add_argument("images", nargs="+", metavar="IMAGE", help="PNG, JPEG or DICOM files")
    cam.add_argument("--out", required=True, help="output directory for IMAGE_gradcam.png files "
                     "(IMAGE_gradcam_classN.png with --target; inputs that share a file name are told "
                     "apart by their folders, e.g. cat_0_gradcam.png)")
    cam.add_argument("--target", help="class name or index to explain (default: the predicted class)")
    tsne = commands.add_parser("tsne", help="t-SNE of pooled features of a split, coloured by class")
    cli.add_model_args(tsne, checkpoint_ok=False)
    cli.add_split_args(tsne, limit_default=2000)
    tsne.add_argument("--out", required=True, help="output directory for tsne.png and tsne.json")
    tsne.add_argument("--perplexity", type=cli.float_above(0), default=30.0, help="t-SNE perplexity (capped at (N-1)/3)")
    cli.add_batch_size(tsne, 64)
    tsne.add_argument("--seed", type=int, default=0, help="t-SNE random state (default: 0)")
    return parser.parse_args(argv)


def resolve_target(target: str | None, names: list[str]) -> int | None:
    """A class index from a name or an index string; None means the predicted class."""
    if target is None:
        return None
    if target in names:
        return names.index(target)
    if target.isdigit() and int(target) < len(names):
        return int(target)
    raise cli.ToolError(f"--target {target!r} is not a class name or index; classes: {', '.join(names)}")


def figure_stems(paths: Sequence[str]) -> dict[str, str]:
    """A distinct output name stem per input path: the file's own stem, or where several
    inputs share one, their path below the folder they have in common ('cat/0.png' -> 'cat_0').
    Names that still clash ('a.png' and 'a.jpg', 'a_b/c.png' and 'a/b/c.png', or 'A.png' and
    'a.png' on a case-insensitive disk) get a numeric suffix ('a', 'a_2')."""
    unique = list(dict.fromkeys(paths))
    stems = {path: os.path.splitext(os.path.basename(path))[0] for path in unique}
    counts = collections.Counter(stems.values())
    shared = [os.path.abspath(path) for path in unique if counts[stems[path]] > 1]
    root = os.path.commonpath([os.path.dirname(path) for path in shared]) if shared else ""

    def below_root(path: str) -> str:
        return os.path.splitext(os.path.relpath(os.path.abspath(path), root))[0].replace(os.sep, "_")

    taken: set[str] = set()
    distinct = {}
    for path in unique:
        stem = below_root(path) if counts[stems[path]] > 1 else stems[path]
        candidate, n = stem, 1
        while candidate.casefold() in taken:
            n += 1
            candidate = f"{stem}_{n}"
        taken.add(candidate.casefold())
        distinct[path] = candidate
    return distinct


def explain_file(path: str, image: np.ndarray, loaded: Loaded, target: int | None, out: str,
                 stem: str) -> dict:
    """Grad-CAM of one stored-form image (S, S, C) uint8; saves the figure and returns a summary record."""
    from medmamba_jax.analysis import plots
    from medmamba_jax.analysis.gradcam import gradcam

    x = loaded.transform(image[None])
    # One forward pass gives both the map and the logits; -1 asks for the predicted class.
    cam, logits = gradcam(loaded.model, x, np.array([-1 if target is None else target]))
    logits = logits[0]
    probs = np.asarray(jax.nn.sigmoid(logits) if loaded.multi_label else jax.nn.softmax(logits))
    predicted = int(np.argmax(probs))
    chosen = predicted if target is None else target
    # Show the image at the model's input size, where the map lives.
    shown = np.asarray(Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).resize(
        (loaded.image_size, loaded.image_size), Image.BILINEAR))
    shown = shown[..., None] if shown.ndim == 2 else shown
    names = loaded.label_names
    suffix = "" if target is None else f"_class{chosen}"
    figure = os.path.join(out, f"{stem}_gradcam{suffix}.png")
    title = (f"{os.path.basename(path)}: Grad-CAM for '{names[chosen]}' (p={probs[chosen]:.3f})\n"
             f"predicted '{names[predicted]}' (p={probs[predicted]:.3f})")
    plots.gradcam(shown, np.asarray(cam[0]), title, figure)
    return {"file": path, "target": names[chosen], "target_probability": round(float(probs[chosen]), 6),
            "prediction": names[predicted], "figure": figure}


def run_gradcam(args: argparse.Namespace) -> int:
    from medmamba_jax.cli.predict import read_images

    from medmamba_jax.analysis.gradcam import map_resolution

    loaded = cli.load(args)
    target = resolve_target(args.target, loaded.label_names)
    out = cli.output_dir(args.out)
    side = map_resolution(loaded.model, loaded.image_size)
    if side < 2:
        print(f"warning: at {loaded.image_size}px the last stage is {side}x{side}, so Grad-CAM has no spatial "
              "detail; the maps are blank", file=sys.stderr)
    failed, stems = 0, figure_stems(args.images)
    for path, image in read_images(args.images, loaded):
        if isinstance(image, str):
            failed += 1
            print(f"error: {image}", file=sys.stderr, flush=True)
            continue
        print(json.dumps(explain_file(path, image, loaded, target, out, stems[path])), flush=True)
    if failed:
        print(f"error: {failed} of {len(args.images)} files could not be read", file=sys.stderr)
        return 1
    return 0


def _pooled(model: nnx.Module, x: jax.Array) -> jax.Array:
    return model.features(x)


def pooled_features(loaded: Loaded, images: np.ndarray, batch_size: int) -> np.ndarray:
    """(N, dims[-1]) pooled last-stage features of uint8 images, in fixed-size batches (one compile)."""
    return batched_apply(_pooled, loaded.model, images, min(batch_size, len(images)),
                         transform=loaded.transform, progress="features")


def colour_classes(labels: np.ndarray, names: list[str], multi_label: bool) -> tuple[np.ndarray, list[str]]:
    """A class index per image for colouring: the label, or for multi-label the first positive label,
    with images that have none in an extra 'no positive label' class."""
    if not multi_label:
        return np.asarray(labels).reshape(-1), names
    labels = np.asarray(labels).astype(bool)
    first = np.where(labels.any(axis=1), labels.argmax(axis=1), len(names))
    return first, names + ["no positive label"]


def run_tsne(args: argparse.Namespace) -> int:
    from sklearn.manifold import TSNE

    from medmamba_jax.analysis import plots

    resolve_split(args.split)
    loaded = cli.load(args)
    images, labels = load_split(loaded, args.split, args.limit)
    if len(images) < 5:
        raise cli.ToolError(f"t-SNE needs at least 5 images; the {args.split} split has {len(images)}")
    features = pooled_features(loaded, images, args.batch_size)
    perplexity = min(args.perplexity, (len(images) - 1) / 3)
    print(f"t-SNE of {len(images)} x {features.shape[1]} features, perplexity {perplexity:.1f}", file=sys.stderr)
    points = TSNE(2, perplexity=perplexity, init="pca", random_state=args.seed).fit_transform(features)
    classes, names = colour_classes(labels, loaded.label_names, loaded.multi_label)
    out = cli.output_dir(args.out)
    figure = plots.tsne(points, classes, names, f"{loaded.config.dataset} {args.split}: t-SNE of pooled "
                        f"last-stage features ({len(images)} images)", os.path.join(out, "tsne.png"))
    with open(os.path.join(out, "tsne.json"), "w") as f:
        json.dump({"points": points.round(4).tolist(), "classes": classes.tolist(), "class_names": names,
                   "perplexity": perplexity, "split": args.split}, f)
    print(f"wrote {figure}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_gradcam(args) if args.command == "gradcam" else run_tsne(args)


if __name__ == "__main__":
    sys.exit(cli.run(main))
