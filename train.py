r"""Trains MedMamba: ``python train.py --config=configs/medmnist.py --workdir=DIR [--config.KEY=VALUE]``.

The same as ``medmamba train`` or ``python -m medmamba_jax.train``: see medmamba_jax/cli/train.py.
"""

import sys

from medmamba_jax.cli.train import main

if __name__ == "__main__":
    sys.exit(main(prog=sys.argv[0]))
