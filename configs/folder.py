"""The ``folder`` recipe as a file for ``train.py --config=configs/folder.py``: see medmamba_jax/configs/folder.py."""

from medmamba_jax.configs.folder import get_config  # noqa: F401
