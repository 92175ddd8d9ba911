r"""Shared defaults for every MedMamba training config; the recipes override it.

Not run directly: use a recipe, e.g.

    python train.py --config=configs/medmnist.py --workdir=runs/pathmnist \
        --config.dataset=pathmnist --config.data_dir=~/.medmnist

The keys and their meaning are in medmamba_jax/training/config.py, where the package
can also validate a config and read a workdir's config.json back. A key that is not
there (`--config.learning_rat=...`) is an error rather than a silently ignored value.
"""

from medmamba_jax.training.config import default_config


def get_config():
    return default_config()
