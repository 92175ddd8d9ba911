"""``python -m medmamba_jax SUBCOMMAND ...``: the ``medmamba`` command (see medmamba_jax/cli/commands.py)."""

import sys

from medmamba_jax.cli.commands import main

sys.exit(main())
