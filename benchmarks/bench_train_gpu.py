"""End-to-end training throughput (images/s) of MedMamba-T/S/B at 224x224.

train.py's jitted train step (forward, softmax cross-entropy, backward and an optax.adamw
update; states donated) on random uint8 images and labels; data loading is not measured.
Each (variant, dtype, scan_impl) reports compile time, median step time and images/s, as
JSON lines and a final JSON file.

Usage (on a GPU):
    PYTHONPATH=. python benchmarks/bench_train_gpu.py --variants t s b --dtypes bfloat16 float32 \
        --batch 128 --out train.json
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np
import optax
from flax import nnx

from benchmarks.common import median_seconds, record
from medmamba_jax import models, sharding
from medmamba_jax.data import TrainTransform
from medmamba_jax.ops import ScanConfig
from medmamba_jax.training import steps

FACTORIES = {"t": models.medmamba_t, "s": models.medmamba_s, "b": models.medmamba_b}


def bench(variant: str, dtype: str, scan_impl: str, batch: int, size: int, n_steps: int, classes: int,
          scan_config: ScanConfig) -> dict:
    """Times train.py's own step (``steps.make_train_step``: sharded, states donated) on uint8
    images already at ``size``, so the transform is only the normalisation."""
    model = FACTORIES[variant](num_classes=classes, rngs=nnx.Rngs(0), scan_impl=scan_impl, dtype=dtype,
                               scan_config=scan_config)
    model.train()
    optimizer = nnx.Optimizer(model, optax.adamw(1e-3), wrt=nnx.Param)
    (model_def, model_state), (opt_def, opt_state) = nnx.split(model), nnx.split(optimizer)
    mesh = sharding.make_mesh()
    states = list(sharding.replicate(mesh, (model_state, opt_state)))
    transform = TrainTransform(size, 3, random_resized_crop=False, random_flip=False)
    step_fn = steps.make_train_step(model_def, opt_def, transform, False, 0, mesh)
    rng = np.random.default_rng(int(time.time()))
    images = sharding.shard_batch(mesh, rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8))
    labels = sharding.shard_batch(mesh, rng.integers(0, classes, batch))
    step = jax.numpy.int32(0)
    t0 = time.perf_counter()
    compiled = step_fn.lower(*states, images, labels, step).compile()
    compile_s = time.perf_counter() - t0
    losses = []

    def run():
        *new_states, loss = compiled(*states, images, labels, step)
        states[:] = new_states  # the old ones were donated
        losses.append(loss)
        return jax.block_until_ready(loss)

    run()  # a second warm-up on top of median_seconds' own: the first runs allocate and autotune
    step_s = median_seconds(run, n_steps)
    return {
        "variant": variant, "dtype": dtype, "scan_impl": scan_impl, "batch": batch, "image_size": size,
        "compile_s": compile_s, "step_s": step_s, "images_per_s": batch / step_s, "loss": float(losses[-1]),
        "peak_temp_bytes": int(compiled.memory_analysis().temp_size_in_bytes),
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="+", default=["t", "s", "b"], choices=sorted(FACTORIES))
    ap.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    ap.add_argument("--scan-impls", nargs="+", default=["pallas"])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--pallas-config", default="", help="Pallas ScanConfig, e.g. tile=32,warps=1")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    scan_config = ScanConfig.parse(args.pallas_config)
    meta = {"device": jax.devices()[0].device_kind, "jax": jax.__version__}
    meta["pallas_config"] = scan_config.describe()
    print(json.dumps(meta), flush=True)
    rows = []
    for variant in args.variants:
        for dtype in args.dtypes:
            for impl in args.scan_impls:
                try:
                    row = bench(variant, dtype, impl, args.batch, args.size, args.steps, args.classes, scan_config)
                except Exception as err:  # one failing configuration must not hide the others
                    row = {"variant": variant, "dtype": dtype, "scan_impl": impl, "error": repr(err)[:500]}
                record(row, rows, meta, args.out)


if __name__ == "__main__":
    main()
