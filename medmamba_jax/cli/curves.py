r"""Training curves of train.py workdirs: loss, validation metrics and learning rate per epoch.

    python -m medmamba_jax.curves runs/pathmnist                        # -> runs/pathmnist/curves.png
    python -m medmamba_jax.curves runs/a runs/b --out compare.png       # several runs on one figure

train.py draws W/curves.png itself after every validated epoch; this command redraws it, for
a run still going on another machine or to compare runs. The data is each workdir's
metrics.jsonl. The best epoch by --metric (default: the first run's training best_metric)
is starred, and a tested run's test result is given in the legend.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from medmamba_jax.cli import common as cli
from medmamba_jax.evaluation.metrics import SUMMARY_KEYS


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = cli.parser_for("medmamba_jax.curves", __doc__)
    parser.add_argument("workdirs", nargs="+", help="train.py workdirs")
    parser.add_argument("--out", help="PNG to write (default: W/curves.png for one workdir; required for several)")
    parser.add_argument("--metric", choices=SUMMARY_KEYS, help="validation metric to star (default: the first "
                        "workdir's best_metric from its config.json, else auc)")
    args = parser.parse_args(argv)
    if args.out is None and len(args.workdirs) > 1:
        parser.error("--out is required with several workdirs")
    return args


def _names(workdirs: list[str]) -> list[str]:
    """Each run's last path component, or its whole path where two would share one."""
    short = [os.path.basename(os.path.normpath(w)) for w in workdirs]
    return [s if short.count(s) == 1 else os.path.normpath(w) for s, w in zip(short, workdirs)]


def _training_metric(workdir: str) -> str:
    from medmamba_jax.training.checkpointing import NoCheckpointError, read_config

    try:
        return str(read_config(workdir).best_metric)
    except NoCheckpointError:
        return "auc"


def main(argv: Sequence[str] | None = None) -> int:
    from medmamba_jax.analysis import curves
    from medmamba_jax.training.reporting import CURVES_FILE

    args = parse_args(argv)
    workdirs = [os.path.expanduser(w) for w in args.workdirs]
    histories = [curves.read_history(w, name) for w, name in zip(workdirs, _names(workdirs))]
    out = os.path.expanduser(args.out) if args.out else os.path.join(workdirs[0], CURVES_FILE)
    parent = os.path.dirname(os.path.abspath(out))
    if os.path.isdir(out):
        raise cli.ToolError(f"--out {out} is a directory; give the name of the PNG file to write")
    if not os.path.isdir(parent):
        raise cli.ToolError(f"cannot write {out}: directory {parent} does not exist")
    metric = args.metric or _training_metric(workdirs[0])
    try:
        print(curves.draw(histories, metric, out))
    except OSError as err:
        raise cli.ToolError(f"cannot write {out}: {err.strerror or err}") from None
    for run in histories:
        best = run.best(metric)
        epochs = len(run.epoch_x)
        where = f"best val {metric} {best[1]:.4f} at epoch {best[0]:.0f}" if best else f"no finite val {metric}"
        print(f"{run.name}: {epochs} epoch{'s' * (epochs != 1)}, {where}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
