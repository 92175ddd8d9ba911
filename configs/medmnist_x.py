"""The ``medmnist_x`` recipe as a file for ``train.py --config=configs/medmnist_x.py``: see medmamba_jax/configs/medmnist_x.py."""

from medmamba_jax.configs.medmnist_x import get_config  # noqa: F401
