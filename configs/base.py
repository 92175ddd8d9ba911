"""The ``base`` recipe as a file for ``train.py --config=configs/base.py``: see medmamba_jax/configs/base.py."""

from medmamba_jax.configs.base import get_config  # noqa: F401
