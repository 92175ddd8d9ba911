"""``python -m medmamba_jax.curves``: the ``curves`` command at its documented address; the command is
``medmamba_jax/cli/curves.py``."""

import runpy

if __name__ == "__main__":
    runpy.run_module("medmamba_jax.cli.curves", run_name="__main__", alter_sys=True)
