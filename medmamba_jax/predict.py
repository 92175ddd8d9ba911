"""``python -m medmamba_jax.predict``: the ``predict`` command at its documented address; the command is
``medmamba_jax/cli/predict.py``."""

import runpy

if __name__ == "__main__":
    runpy.run_module("medmamba_jax.cli.predict", run_name="__main__", alter_sys=True)
