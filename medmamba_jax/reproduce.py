"""``python -m medmamba_jax.reproduce``: the ``reproduce`` command at its documented address; the command is
``medmamba_jax/cli/reproduce.py``."""

import runpy

if __name__ == "__main__":
    runpy.run_module("medmamba_jax.cli.reproduce", run_name="__main__", alter_sys=True)
