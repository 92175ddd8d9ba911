"""``python -m medmamba_jax.train``: the ``train`` command at its documented address; the command is
``medmamba_jax/cli/train.py``."""

import runpy

if __name__ == "__main__":
    runpy.run_module("medmamba_jax.cli.train", run_name="__main__", alter_sys=True)
