"""The ``medmnist`` recipe as a file for ``train.py --config=configs/medmnist.py``: see medmamba_jax/configs/medmnist.py."""

from medmamba_jax.configs.medmnist import get_config  # noqa: F401
