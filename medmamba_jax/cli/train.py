r"""Trains MedMamba: ``medmamba train --config=medmnist --workdir=DIR [--config.KEY=VALUE]``.

``--config`` takes a recipe shipped with the package (``base``, ``folder``, ``medmnist``,
``smoke``; ``configs/NAME.py`` names the same recipe where no such file exists) or the path of
a config file with ``get_config()``. The repository's ``train.py`` runs this module.

The work is done by ``medmamba_jax.training.train.train_and_evaluate``; this module only
parses flags and turns bad-input exceptions into a one-line message and exit status 1.
Running it again with the same workdir resumes from the latest checkpoint. A SIGTERM (a
scheduler's preemption notice) first saves the step in progress, then exits with status 143.
"""

from __future__ import annotations

import os
import sys
from importlib import resources
from typing import Sequence

from medmamba_jax.runtime import prefer_low_memory_cpu_schedule

prefer_low_memory_cpu_schedule()  # before JAX starts: see medmamba_jax/runtime.py

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

config_flags.DEFINE_config_file("config", None, "Training recipe name (e.g. medmnist) or config file path.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.json.")
flags.mark_flags_as_required(["config", "workdir"])


def recipe_names() -> list[str]:
    """The recipes shipped in ``medmamba_jax/configs``."""
    return sorted(entry.name[:-3] for entry in resources.files("medmamba_jax.configs").iterdir()
                  if entry.name.endswith(".py") and not entry.name.startswith("_"))


def resolve_config(value: str) -> str:
    """A ``--config`` value with a recipe name (``medmnist``, or ``configs/medmnist.py`` where that
    file does not exist) replaced by the packaged recipe's path; ``:ARGS`` after it are kept.
    A bare name that is not a recipe is a flags error."""
    path, colon, config_args = value.partition(":")
    if os.path.exists(path):
        return value
    folder, name = os.path.split(path[:-3] if path.endswith(".py") else path)
    if folder not in ("", "configs"):
        return value  # a path that is missing: the flag parser says so
    if name not in recipe_names():
        raise flags.IllegalFlagValueError(f"--config={value}: no such file, and not a recipe name "
                                          f"(one of {', '.join(recipe_names())})")
    return str(resources.files("medmamba_jax.configs").joinpath(f"{name}.py")) + colon + config_args


def _with_resolved_config(argv: Sequence[str]) -> list[str]:
    out = list(argv)
    for i, arg in enumerate(out):
        if arg.startswith("--config="):
            out[i] = "--config=" + resolve_config(arg[len("--config="):])
        elif arg == "--config" and i + 1 < len(out):
            out[i + 1] = resolve_config(out[i + 1])
    return out


def repeated_config_keys(argv: Sequence[str]) -> list[str]:
    """The --config.KEY flags given more than once: absl would append a repeated tuple override
    (``--config.depths='(1,1)'`` twice gives four stages), not replace it."""
    seen, repeated = set(), []
    for arg in argv[1:]:
        if arg == "--":
            break
        if arg.lstrip("-").startswith("config.") and arg.startswith("-"):
            key = arg.lstrip("-").split("=", 1)[0]
            if key in seen and key not in repeated:
                repeated.append(key)
            seen.add(key)
    return repeated


def parse_flags(argv: Sequence[str]) -> list[str]:
    """absl flag parsing, with ml_collections' traceback for an unknown --config.KEY, or a config
    file that is missing or fails to load, made one line; a --config.KEY given twice is refused."""
    repeated = repeated_config_keys(argv)
    if repeated:
        print(f"error: {', '.join('--' + key for key in repeated)} given more than once; give each key once",
              file=sys.stderr)
        sys.exit(1)
    try:
        parsed = flags.FLAGS(_with_resolved_config(argv))
        config_file = config_flags.get_config_filename(flags.FLAGS["config"]).partition(":")[0]
        if not os.path.isfile(config_file):
            print(f"error: config file {config_file} not found", file=sys.stderr)
            sys.exit(1)
        flags.FLAGS.config  # noqa: B018 - ml_collections loads the file here, on first use
        return parsed
    except flags.Error as err:
        print(f"error: {err}", file=sys.stderr)
    except OSError as err:  # ml_collections' report of a config file that failed to load, over several lines
        print(f"error: --config: {' '.join(str(err).split())}", file=sys.stderr)
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        detail = " ".join(str(err).encode().decode("unicode_escape").replace("'", "").split())
        print(f"error: bad --config override: {detail}", file=sys.stderr)
    sys.exit(1)


def _train(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)  # Orbax logs every checkpoint operation at INFO
    from medmamba_jax.cli.common import ToolError, writable_dir
    from medmamba_jax.training.errors import expected_errors
    from medmamba_jax.training.lifecycle import report_stop
    from medmamba_jax.training.preemption import Preempted
    from medmamba_jax.training.train import train_and_evaluate

    try:
        writable_dir(flags.FLAGS.workdir, "--workdir")  # before the data loads
        train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)
    except (ToolError, *expected_errors()) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    except (Preempted, KeyboardInterrupt) as stopped:
        sys.exit(report_stop(stopped, "run the same command to resume from the latest checkpoint"))


def main(argv: Sequence[str] | None = None, prog: str = "python -m medmamba_jax.train") -> int:
    """Trains with the flags ``argv`` (without the program name); exits the process with its status."""
    app.run(_train, argv=[prog, *(sys.argv[1:] if argv is None else argv)], flags_parser=parse_flags)
    return 0


if __name__ == "__main__":
    sys.exit(main())
