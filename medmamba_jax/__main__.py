"""``python -m medmamba_jax SUBCOMMAND ...``: the ``medmamba`` command (see medmamba_jax/commands.py)."""

import sys

from medmamba_jax.commands import main

sys.exit(main())
