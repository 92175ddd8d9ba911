"""``python -m medmamba_jax.robustness``: the ``robustness`` command at its documented address; the command is
``medmamba_jax/cli/robustness.py``."""

import runpy

if __name__ == "__main__":
    runpy.run_module("medmamba_jax.cli.robustness", run_name="__main__", alter_sys=True)
