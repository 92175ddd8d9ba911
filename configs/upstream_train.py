"""The ``upstream_train`` recipe as a file for ``train.py --config=configs/upstream_train.py``: see medmamba_jax/configs/upstream_train.py."""

from medmamba_jax.configs.upstream_train import get_config  # noqa: F401
