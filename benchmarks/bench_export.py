"""ONNX Runtime's CPU forward time for an exported MedMamba beside ours, and both exports' sizes.

    python benchmarks/bench_export.py [--model medmamba_t] [--image-size 224] [--batches 1 8] \
        [--repeats 5] [--out results.json]

Builds the model (random weights, 9 classes: the timing does not depend on their values), writes
it as `medmamba export` does in both formats (uint8 images at --image-size in, probabilities
out), and times, per batch size, ONNX Runtime's CPU session on the ONNX file and ours (what
`medmamba predict` runs: the model under jit with the `auto` scan, after the same
preprocessing), alternating the two, one call each per round. Prints one JSON line per
result; the median over --repeats rounds, after a warm-up call each.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import record  # noqa: E402


def build(model_name: str, image_size: int):
    """A Loaded of a random ``model_name`` at ``image_size`` (no resize inside)."""
    from flax import nnx

    from medmamba_jax.inference.loaded_model import Loaded
    from medmamba_jax.models import MedMamba, MedMambaConfig

    model = MedMamba(MedMambaConfig.preset(model_name, num_classes=9), rngs=nnx.Rngs(0))
    model.eval()
    labels = [f"class_{i}" for i in range(model.config.num_classes)]
    return Loaded(model, labels, "multi-class", image_size, 3, image_size)


def timed_export(name: str, loaded) -> tuple[bytes, float]:
    """(file contents, seconds to trace and convert) of ``loaded`` in format ``name``."""
    from medmamba_jax.inference import standalone

    start = time.perf_counter()
    convert = standalone.CONVERTERS[name][0]
    probabilities = standalone.probability_function(loaded, standalone.FORMATS[name].scan_impl)
    data = convert(probabilities, standalone.input_shape(loaded))
    return data, time.perf_counter() - start


def alternating_medians(runs: dict, repeats: int) -> dict:
    """{name: median seconds} of each zero-argument ``runs[name]``, called once per round in turn
    for ``repeats`` rounds, after one warm-up call each."""
    times = {name: [] for name in runs}
    for run in runs.values():
        run()
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="medmamba_t")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out")
    args = parser.parse_args()

    import jax
    import numpy as np
    import onnxruntime

    from medmamba_jax.inference import standalone

    meta = {"machine": platform.platform(), "cpus": os.cpu_count(), "jax": jax.__version__,
            "onnxruntime": onnxruntime.__version__, "backend": jax.default_backend(), **vars(args)}
    rows: list = []
    loaded = build(args.model, args.image_size)
    onnx_model = None
    for name in ("jax", "onnx"):
        data, seconds = timed_export(name, loaded)
        record({"export": name, "bytes": len(data), "convert_s": round(seconds, 1)}, rows, meta, args.out)
        if name == "onnx":
            onnx_model = data
    session = onnxruntime.InferenceSession(onnx_model, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for batch in args.batches:
        images = rng.integers(0, 256, (batch, *standalone.input_shape(loaded)), dtype=np.uint8)
        medians = alternating_medians({
            "onnxruntime": lambda: session.run([standalone.OUTPUT_NAME], {standalone.INPUT_NAME: images}),
            "ours (jax, auto scan)": lambda: loaded.scores(images, batch),
        }, args.repeats)
        for runtime, seconds in medians.items():
            record({"runtime": runtime, "batch": batch, "forward_s": round(seconds, 4)}, rows, meta, args.out)


if __name__ == "__main__":
    main()
