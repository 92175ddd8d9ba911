"""Convert an upstream PyTorch MedMamba checkpoint to a medmamba-jax model directory.

    python -m medmamba_jax.convert IN.pth OUT_DIR

OUT_DIR receives ``model_config.json`` and an Orbax checkpoint, which
``medmamba_jax.checkpoints.load_model`` (and the training and evaluation tools) read.
The architecture is inferred from the tensor shapes.
"""

from __future__ import annotations

import sys
from typing import Sequence

from medmamba_jax.analysis import cli
from medmamba_jax.checkpoints import save_model
from medmamba_jax.models import count_params
from medmamba_jax.params import from_torch


def _convert(argv: Sequence[str] | None) -> int:
    parser = cli.parser_for("medmamba_jax.convert", __doc__)
    parser.add_argument("checkpoint", help="upstream .pth file (torch.save(model.state_dict()))")
    parser.add_argument("out_dir", help="directory to write model_config.json and the Orbax state into")
    cli.add_allow_nonfinite(parser)
    args = parser.parse_args(argv)
    cli.writable_dir(args.out_dir)
    try:
        with cli.nonfinite_hint():
            model = from_torch(args.checkpoint, allow_nonfinite=args.allow_nonfinite)
    except ImportError as err:  # torch is missing: its message says how to install it
        raise cli.ToolError(str(err)) from None
    out = save_model(args.out_dir, model)
    cfg = model.config
    print(f"wrote {out}: depths={cfg.depths} dims={cfg.dims} d_state={cfg.d_state} "
          f"num_classes={cfg.num_classes} in_chans={cfg.in_chans} params={count_params(model):,}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m medmamba_jax.convert IN.pth OUT_DIR``; returns the exit status."""
    return cli.run(_convert, argv)


if __name__ == "__main__":
    sys.exit(main())
