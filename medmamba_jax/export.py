"""``python -m medmamba_jax.export``: the ``export`` command at its documented address; the command is
``medmamba_jax/cli/export.py``."""

import runpy

if __name__ == "__main__":
    runpy.run_module("medmamba_jax.cli.export", run_name="__main__", alter_sys=True)
