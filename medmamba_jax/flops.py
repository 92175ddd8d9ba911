"""``python -m medmamba_jax.flops``: the ``flops`` command at its documented address; the command is
``medmamba_jax/cli/flops.py``."""

import runpy

if __name__ == "__main__":
    runpy.run_module("medmamba_jax.cli.flops", run_name="__main__", alter_sys=True)
