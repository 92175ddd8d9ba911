"""``python -m medmamba_jax.explain``: the ``explain`` command at its documented address; the command is
``medmamba_jax/cli/explain.py``."""

import runpy

if __name__ == "__main__":
    runpy.run_module("medmamba_jax.cli.explain", run_name="__main__", alter_sys=True)
