r"""Trains MedMamba: ``python train.py --config=configs/medmnist.py --workdir=DIR [--config.KEY=VALUE]``.

The work is done by ``medmamba_jax.training.train.train_and_evaluate``; this file only
parses flags and turns bad-input exceptions into a one-line message and exit status 1.
Running it again with the same workdir resumes from the latest checkpoint. A SIGTERM (a
scheduler's preemption notice) first saves the step in progress, then exits with status 143.
"""

import sys

from medmamba_jax.runtime import prefer_low_memory_cpu_schedule

prefer_low_memory_cpu_schedule()  # before JAX starts: see medmamba_jax/runtime.py

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

config_flags.DEFINE_config_file("config", None, "Training config file, e.g. configs/medmnist.py.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.json.")
flags.mark_flags_as_required(["config", "workdir"])


def repeated_config_keys(argv) -> list[str]:
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


def parse_flags(argv):
    """absl flag parsing, with ml_collections' traceback for an unknown --config.KEY made one line."""
    repeated = repeated_config_keys(argv)
    if repeated:
        print(f"error: {', '.join('--' + key for key in repeated)} given more than once; give each key once",
              file=sys.stderr)
        sys.exit(1)
    try:
        return flags.FLAGS(argv)
    except flags.Error as err:
        print(f"error: {err}", file=sys.stderr)
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        detail = " ".join(str(err).encode().decode("unicode_escape").replace("'", "").split())
        print(f"error: bad --config override: {detail}", file=sys.stderr)
    sys.exit(1)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)  # Orbax logs every checkpoint operation at INFO
    from medmamba_jax.training.errors import expected_errors
    from medmamba_jax.training.preemption import EXIT_STATUS, Preempted
    from medmamba_jax.training.train import train_and_evaluate

    try:
        train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)
    except expected_errors() as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    except Preempted as stopped:
        print(stopped, file=sys.stderr)
        sys.exit(EXIT_STATUS)
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command to resume from the latest checkpoint", file=sys.stderr)
        sys.exit(130)  # the shell's status for SIGINT


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
