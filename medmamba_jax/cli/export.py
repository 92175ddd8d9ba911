r"""Write a trained model as one file that runs without medmamba-jax: jax.export or ONNX.

    medmamba export --workdir runs/pathmnist --format onnx --out exported/
    medmamba export --checkpoint converted/ --format jax --out exported/

The file takes uint8 images (batch, H, W, C) as training stored them (28x28x3 for PathMNIST
at size 28) and returns probabilities (batch, K) float32: softmax, or per-label sigmoid for a
multi-label task. The resize to the model's input side and the normalisation are inside;
the batch size is left open. Beside it, model.onnx.json (model.jaxexport.json) gives the input's shape and dtype, the
class names and the lines that load and run it. Before the file is put in place, it is run
on a few random images and its probabilities are compared with `medmamba predict`'s.

jax (model.jaxexport): jax.export's serialized StableHLO for CPU and CUDA, loaded with
jax.export.deserialize in plain JAX. onnx (model.onnx): converted by jax2onnx (the `export`
extra); run it with ONNX Runtime.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from medmamba_jax.cli import common as cli
from medmamba_jax.inference.loaded_model import Loaded
from medmamba_jax.inference.standalone import (BATCH, CHECK_IMAGES, FORMATS, INPUT_NAME, OUTPUT_NAME, export,
                                               manifest_path, onnx_tools)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = cli.parser_for("medmamba_jax.export", __doc__)
    cli.add_model_args(parser, checkpoint_ok=True)
    parser.add_argument("--format", choices=FORMATS, required=True, help="jax (jax.export) or onnx")
    parser.add_argument("--out", required=True, help="directory to write the file and its .json in")
    return parser.parse_args(argv)


def source_of(args: argparse.Namespace, loaded: Loaded) -> dict:
    """Where the exported weights came from, for the manifest."""
    if args.checkpoint:
        return {"checkpoint": os.path.abspath(args.checkpoint)}
    return {"workdir": os.path.abspath(args.workdir), "checkpoint": loaded.checkpoint, "step": loaded.checkpoint_step}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out = cli.writable_dir(args.out)  # refused before the minutes of loading and tracing
    if args.format == "onnx":
        onnx_tools()
    loaded = cli.load(args)
    os.makedirs(out, exist_ok=True)
    written = export(loaded, args.format, out, source_of(args, loaded))
    path = os.path.join(out, written["file"])
    shape = ", ".join(map(str, written["input"]["shape"]))
    print(f"wrote {path} ({written['bytes'] / 1e6:.1f} MB) and {manifest_path(path)}")
    print(f"input: {INPUT_NAME} uint8 ({shape}); output: {OUTPUT_NAME} float32 ({BATCH}, {len(loaded.label_names)}), "
          f"{written['output']['is']}")
    print(f"largest difference from medmamba predict on {CHECK_IMAGES} random images: "
          f"{written['checked']['largest_difference_from_predict']:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
