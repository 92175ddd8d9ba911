"""The ``smoke`` recipe as a file for ``train.py --config=configs/smoke.py``: see medmamba_jax/configs/smoke.py."""

from medmamba_jax.configs.smoke import get_config  # noqa: F401
