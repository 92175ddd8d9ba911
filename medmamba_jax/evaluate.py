"""``python -m medmamba_jax.evaluate``: the ``evaluate`` command at its documented address; the command is
``medmamba_jax/cli/evaluate.py``."""

import runpy

if __name__ == "__main__":
    runpy.run_module("medmamba_jax.cli.evaluate", run_name="__main__", alter_sys=True)
