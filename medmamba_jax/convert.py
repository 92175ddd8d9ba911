"""Convert an upstream PyTorch MedMamba checkpoint to a medmamba-jax model directory.

    python -m medmamba_jax.convert IN.pth OUT_DIR

OUT_DIR receives ``model_config.json`` and an Orbax checkpoint, which
``medmamba_jax.checkpoints.load_model`` (and the training and evaluation tools) read.
The architecture is inferred from the tensor shapes.
"""

from __future__ import annotations

import argparse
import sys

from medmamba_jax.analysis import cli
from medmamba_jax.checkpoints import save_model
from medmamba_jax.models import count_params
from medmamba_jax.params import CheckpointError, from_torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m medmamba_jax.convert",
        description="Convert an upstream MedMamba .pth state dict into a medmamba-jax model directory.",
    )
    parser.add_argument("checkpoint", help="upstream .pth file (torch.save(model.state_dict()))")
    parser.add_argument("out_dir", help="directory to write model_config.json and the Orbax state into")
    args = parser.parse_args(argv)
    try:
        cli.writable_dir(args.out_dir)
        model = from_torch(args.checkpoint)
    except (cli.ToolError, CheckpointError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    out = save_model(args.out_dir, model)
    cfg = model.config
    print(
        f"wrote {out}: depths={cfg.depths} dims={cfg.dims} d_state={cfg.d_state} "
        f"num_classes={cfg.num_classes} in_chans={cfg.in_chans} params={count_params(model):,}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
