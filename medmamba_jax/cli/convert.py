r"""Convert an upstream PyTorch MedMamba checkpoint, or a trained workdir, to a model directory.

    medmamba convert IN.pth OUT_DIR [--image-size 224] [--labels a,b,c | --labels names.txt]
    medmamba convert runs/pathmnist OUT_DIR [--which best]

OUT_DIR receives ``model_config.json`` and an Orbax checkpoint, which
``medmamba_jax.model_files.load_model`` (and the training and evaluation tools) read.
For a .pth file the architecture is inferred from the tensor shapes, and model_config.json
records upstream's preprocessing with the input size and class names given here. For a
train.py workdir it records the workdir's: its input size, how its dataset's images were
stored, its class names and task, so `medmamba predict --checkpoint OUT_DIR` classifies
files as `--workdir` does, without the workdir.
"""

from __future__ import annotations

import os
import sys
from typing import Sequence

from medmamba_jax.cli import common as cli
from medmamba_jax.inference.loaded_model import UPSTREAM_IMAGE_SIZE, from_workdir, parse_labels
from medmamba_jax.models import count_params


def _convert(argv: Sequence[str] | None) -> int:
    from medmamba_jax.model_files import save_model
    from medmamba_jax.params import from_torch

    parser = cli.parser_for("medmamba_jax.convert", __doc__)
    parser.add_argument("source", metavar="SOURCE",
                        help="upstream .pth file (torch.save(model.state_dict())), or a train.py workdir")
    parser.add_argument("out_dir", help="directory to write model_config.json and the Orbax state into")
    cli.add_card_args(parser, "the .pth weights were trained at, recorded for predict (default: 224)",
                      "recorded for predict (default: none; predict then shows class_0, class_1, ...)")
    parser.add_argument("--which", choices=("best", "latest"), default="best",
                        help="for a workdir: which of its checkpoints (default: best)")
    cli.add_allow_nonfinite(parser)
    args = parser.parse_args(argv)
    cli.writable_dir(args.out_dir)
    if os.path.isdir(args.source):
        if not os.path.isfile(os.path.join(args.source, "config.json")):
            raise cli.ToolError(f"{args.source} is a directory but not a train.py workdir (it has no config.json); "
                                "give a .pth file or a workdir")
        if args.image_size or args.labels:
            raise cli.ToolError("--image-size and --labels are for .pth files; a workdir records its own")
        with cli.nonfinite_hint():
            loaded = from_workdir(args.source, args.which, allow_nonfinite=args.allow_nonfinite)
        model, card = loaded.model, loaded.card()
    else:
        labels = parse_labels(args.labels) if args.labels else None
        try:
            with cli.nonfinite_hint():
                model = from_torch(args.source, image_size=args.image_size or UPSTREAM_IMAGE_SIZE,
                                   label_names=labels, allow_nonfinite=args.allow_nonfinite)
        except ValueError as err:  # a bad file (CheckpointError) or labels that do not fit it
            raise cli.ToolError(str(err).strip()) from None
        card = model.card
    out = save_model(args.out_dir, model, card)
    cfg = model.config
    classes = f" classes={','.join(card.label_names)}" if card.label_names else ""
    print(f"wrote {out}: depths={cfg.depths} dims={cfg.dims} d_state={cfg.d_state} "
          f"num_classes={cfg.num_classes} in_chans={cfg.in_chans} params={count_params(model):,} "
          f"image_size={card.image_size}{classes}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m medmamba_jax.convert SOURCE OUT_DIR``; returns the exit status."""
    return cli.run(_convert, argv)


if __name__ == "__main__":
    sys.exit(main())
