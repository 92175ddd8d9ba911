r"""Classify image files (PNG, JPEG, DICOM) with a trained workdir or a converted checkpoint.

    medmamba predict --workdir runs/pathmnist scan1.png scan2.dcm
    medmamba predict --checkpoint converted/ img.jpg

Prints one JSON line per image: its top-k class names and probabilities. Each file is
converted the way training saw its dataset (channels, stored size, then the eval
transform); for a converted upstream checkpoint, the way the released PyTorch code's
evaluation decodes files (PIL's convert("RGB"), resize, normalise to [-1, 1]). A file that cannot be read gets a one-line error on stderr; the others are
still classified, and the exit status is 1 if any file failed. Scores that are NaN or inf (a
model loaded with --allow-nonfinite) give an error line for that file, never a prediction.

A temperature saved beside the weights by ``evaluate --calibrate`` (temperature.json) divides
the logits before the softmax; a line on stderr says so, and each JSON line gives it as
"temperature". ``--tta flip`` averages the probabilities of each image and its left-right
mirror (each JSON line then says "tta": "flip").
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Iterator, Sequence

import numpy as np

from medmamba_jax.cli import common as cli
from medmamba_jax.data.image_files import ImageReadError, load_for_model
from medmamba_jax.inference.loaded_model import Loaded


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = cli.parser_for("medmamba_jax.predict", __doc__)
    cli.add_model_args(parser, checkpoint_ok=True)
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="PNG, JPEG or DICOM files")
    parser.add_argument("--top-k", type=cli.int_at_least(1), default=3, help="classes to print per image (default: 3)")
    cli.add_batch_size(parser, 32)
    cli.add_tta(parser)
    return parser.parse_args(argv)


def read_images(paths: Sequence[str], loaded: Loaded) -> Iterator[tuple[str, np.ndarray | str]]:
    """(path, stored-form uint8 image) per path, or (path, error message) when unreadable."""
    for path in paths:
        try:
            yield path, load_for_model(path, loaded.stored_channels, loaded.stored_size, loaded.upstream_decoding)
        except ImageReadError as err:
            yield path, str(err)


def prediction_record(path: str, probs: np.ndarray, loaded: Loaded, top_k: int) -> dict[str, Any]:
    """The JSON line of one image from its probabilities (K,)."""
    order = np.argsort(-probs)[: max(1, top_k)]
    top = [{"class": loaded.label_names[i], "index": int(i), "probability": round(float(probs[i]), 6)} for i in order]
    record: dict[str, Any] = {"file": path, "prediction": top[0]["class"], "top_k": top}
    if loaded.multi_label:  # each label is its own yes/no decision at 0.5
        record["positive_labels"] = [loaded.label_names[i] for i in np.flatnonzero(probs > 0.5)]
    return record


def main(argv: Sequence[str] | None = None) -> int:
    from medmamba_jax.analysis import temperature as saved_temperature

    args = parse_args(argv)
    loaded = cli.load(args)
    saved = saved_temperature.read(loaded.directory, loaded.model)
    applied = {"temperature": saved["temperature"]} if saved else {}
    if saved:
        print(saved_temperature.describe(saved, loaded.directory), file=sys.stderr)
    if args.tta:
        applied["tta"] = args.tta
    # Files are read and printed a chunk at a time (memory stays bounded, output streams);
    # every chunk is padded to one batch size, so a short or partly unreadable chunk reuses
    # the first chunk's compilation.
    batch_size = min(args.batch_size, len(args.images))
    failed = 0
    for start in range(0, len(args.images), batch_size):
        chunk = list(read_images(args.images[start : start + batch_size], loaded))
        good = [image for _, image in chunk if not isinstance(image, str)]
        probs = iter(loaded.scores(np.stack(good), batch_size, temperature=applied.get("temperature", 1.0),
                                   tta=args.tta)) if good else iter(())
        for path, image in chunk:  # input order, errors in place
            if isinstance(image, str):
                failed += 1
                print(f"error: {image}", file=sys.stderr, flush=True)
            elif not np.isfinite(scores := next(probs)).all():  # a NaN sorts first: it would name a class
                failed += 1
                print(f"error: {path}: the model's scores are NaN or inf; no prediction", file=sys.stderr, flush=True)
            else:
                print(json.dumps({**prediction_record(path, scores, loaded, args.top_k), **applied}), flush=True)
    if failed:
        print(f"error: {failed} of {len(args.images)} files could not be read or classified", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
