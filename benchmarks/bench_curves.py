r"""Cost of drawing W/curves.png, which train.py redraws after epochs (at most once a minute).

    python benchmarks/bench_curves.py [--epochs 100] [--steps-per-epoch 703] [--log-every 20] [--repeats 3]

Writes a metrics.jsonl shaped like a PathMNIST run's (703 micro-steps per epoch at batch 128,
a train record every 20) into a temporary workdir, then times reading it back and drawing
the figure; the first draw (matplotlib's start-up) is reported apart from the median of the rest.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import record  # noqa: E402
from medmamba_jax.analysis import curves  # noqa: E402
from medmamba_jax.training.reporting import METRICS_FILE  # noqa: E402


def fake_records(epochs: int, steps_per_epoch: int, log_every: int) -> list[dict]:
    records = []
    for e in range(epochs):
        lr = 1e-3 if e < epochs // 2 else 1e-4
        for step in range(e * steps_per_epoch + log_every, (e + 1) * steps_per_epoch + 1, log_every):
            records.append({"step": step, "epoch": e, "split": "train", "loss": 2.0 / (1 + step / steps_per_epoch),
                            "lr": lr, "images_per_sec": 1000.0})
        end, value = (e + 1) * steps_per_epoch, 1.0 - 0.5 / (e + 1)
        records.append({"step": end, "epoch": e, "split": "val", "accuracy": value, "auc": value, "precision": value,
                        "sensitivity": value, "specificity": value, "f1": value})
        records.append({"step": end, "epoch": e, "split": "epoch", "loss": 2.0 / (e + 1), "lr": lr, "seconds": 60.0,
                        "images_per_sec": 1000.0})
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--steps-per-epoch", type=int, default=703)
    parser.add_argument("--log-every", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    records = fake_records(args.epochs, args.steps_per_epoch, args.log_every)
    with tempfile.TemporaryDirectory() as workdir:
        with open(os.path.join(workdir, METRICS_FILE), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
        times = []
        for _ in range(args.repeats + 1):
            start = time.perf_counter()
            curves.draw([curves.read_history(workdir)], "auc", os.path.join(workdir, "curves.png"))
            times.append(time.perf_counter() - start)
    meta = {"host": platform.node(), "cpus": os.cpu_count()}
    record({"epochs": args.epochs, "records": len(records), "first_draw_s": round(times[0], 2),
            "draw_s": round(statistics.median(times[1:]), 2)}, [], meta, None)


if __name__ == "__main__":
    main()
