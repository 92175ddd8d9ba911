r"""CPU cost of ``evaluate --bootstrap``: seconds per draw on test splits shaped like MedMNIST's.

    python benchmarks/bench_bootstrap.py [--flags breastmnist,pathmnist,chestmnist] [--draws 50]

Labels and scores are random, with each split's published test size, task and class count
(from medmnist.INFO, so nothing is downloaded); a draw's cost depends on those, not on the
model. Prints one JSON line per dataset, with the projected time of 1000 draws.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np
import scipy.special

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import record  # noqa: E402
from medmamba_jax.evaluation.bootstrap import bootstrap_intervals  # noqa: E402
from medmamba_jax.evaluation.metrics import MULTI_LABEL  # noqa: E402


def fake_split(flag: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, str]:
    """(labels, scores, task) with the size, task and class count of ``flag``'s test split."""
    import medmnist

    info = medmnist.INFO[flag]
    n, k, task = info["n_samples"]["test"], len(info["label"]), info["task"]
    if task == MULTI_LABEL:
        labels = (rng.random((n, k)) < 0.1).astype(np.int64)
        return labels, rng.random((n, k)), task
    labels = rng.integers(0, k, n)
    scores = scipy.special.softmax(rng.normal(size=(n, k)) + 2.0 * np.eye(k)[labels], axis=1)
    return labels[:, None], scores, task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n\n")[0])
    parser.add_argument("--flags", default="breastmnist,pathmnist,chestmnist")
    parser.add_argument("--draws", type=int, default=50)
    parser.add_argument("--out", help="also write the rows as JSON here")
    args = parser.parse_args()
    meta = {"host": platform.node(), "cpus": os.cpu_count(), "draws": args.draws}
    rows: list = []
    for flag in args.flags.split(","):
        labels, scores, task = fake_split(flag, np.random.default_rng(0))
        start = time.perf_counter()
        bootstrap_intervals(labels, scores, task, resamples=args.draws)
        per_draw = (time.perf_counter() - start) / args.draws
        record({"dataset": flag, "images": len(labels), "classes": scores.shape[1], "task": task,
                "ms_per_draw": round(1e3 * per_draw, 1), "s_for_1000_draws": round(1e3 * per_draw)},
               rows, meta, args.out)


if __name__ == "__main__":
    main()
