"""``python -m medmamba_jax.convert``: the ``convert`` command at its documented address; the command is
``medmamba_jax/cli/convert.py``."""

import runpy

if __name__ == "__main__":
    runpy.run_module("medmamba_jax.cli.convert", run_name="__main__", alter_sys=True)
