r"""Host memory of the robustness study: the peak while one perturbation is applied and scored.

    python benchmarks/bench_robustness_memory.py [--images 3000] [--side 224] [--channels 1]

A random uint8 split and a stand-in model (class scores from image means: the model's own
memory is not the question) go through ``robustness_sweep.Scorer`` at severity 5 of every own
perturbation, once in the default chunks (``robustness_sweep.CHUNK_BYTES``) and once as a single
chunk, which is how the whole split was perturbed before. The peak is Python's traced
allocations (``tracemalloc``), NumPy arrays included; one JSON line per perturbation.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tracemalloc
import types

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import record  # noqa: E402
from medmamba_jax.inference.robustness_sweep import CHUNK_BYTES, Scorer  # noqa: E402
from medmamba_jax.analysis import perturb  # noqa: E402


def stand_in_scores(images: np.ndarray, batch_size: int) -> np.ndarray:
    means = images.reshape(len(images), -1).mean(axis=1) / 255.0
    return np.stack([means, 1.0 - means], axis=1)


def peak_bytes(score: Scorer, images: np.ndarray, perturbation) -> int:
    tracemalloc.start()
    score(images, 5, perturbation)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n\n")[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--side", type=int, default=224)
    parser.add_argument("--channels", type=int, choices=(1, 3), default=1)
    parser.add_argument("--out", help="also write the rows as JSON here")
    args = parser.parse_args()
    images = np.random.default_rng(0).integers(0, 256, (args.images, args.side, args.side, args.channels), np.uint8)
    loaded, labels = types.SimpleNamespace(scores=stand_in_scores, task="binary-class"), np.arange(args.images) % 2
    meta = {"host": platform.node(), "cpus": os.cpu_count(), "images": list(images.shape)}
    rows: list = []
    for p in perturb.PERTURBATIONS:
        if p.rgb_only and args.channels == 1:
            continue
        row = {"perturbation": p.name, "split_mib": round(images.nbytes / 2**20)}
        for label, chunk_bytes in (("chunked", CHUNK_BYTES), ("whole_split", images.nbytes + 1)):
            peak = peak_bytes(Scorer(loaded, labels, batch_size=64, chunk_bytes=chunk_bytes), images, p)
            row[f"{label}_peak_mib"], row[f"{label}_x_split"] = round(peak / 2**20), round(peak / images.nbytes, 1)
        record(row, rows, meta, args.out)


if __name__ == "__main__":
    main()
