"""End-to-end training throughput (images/s) of MedMamba-T/S/B at 224x224.

One jitted train step: forward, softmax cross-entropy, backward and an optax.adamw
update, on random images and labels (data loading is not measured). Each
(variant, dtype, scan_impl) reports compile time, median step time and images/s,
as JSON lines and a final JSON file.

Usage (on a GPU):
    PYTHONPATH=. python benchmarks/bench_train_gpu.py --variants t s b --dtypes bfloat16 float32 \
        --batch 128 --out train.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from benchmarks.common import record
from medmamba_jax import models
from medmamba_jax.ops import pallas_scan

FACTORIES = {"t": models.medmamba_t, "s": models.medmamba_s, "b": models.medmamba_b}


def make_train_step(model: nnx.Module, lr: float = 1e-3):
    """Returns (step, state): step(state, x, y) -> (state, loss), a pure jitted function."""
    optimizer = nnx.Optimizer(model, optax.adamw(lr), wrt=nnx.Param)
    graphdef, state = nnx.split((model, optimizer))

    @jax.jit
    def step(state, images, labels):
        model, optimizer = nnx.merge(graphdef, state)

        def loss_fn(model):
            logits = model(images).astype(jnp.float32)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return nnx.state((model, optimizer)), loss

    return step, state


def bench(variant: str, dtype: str, scan_impl: str, batch: int, size: int, steps: int, classes: int) -> dict:
    model = FACTORIES[variant](num_classes=classes, rngs=nnx.Rngs(0), scan_impl=scan_impl, dtype=dtype)
    model.train()
    step, state = make_train_step(model)
    key_x, key_y = jax.random.split(jax.random.key(int(time.time())))
    images = jax.random.normal(key_x, (batch, size, size, 3), jnp.dtype(dtype))
    labels = jax.random.randint(key_y, (batch,), 0, classes)
    t0 = time.perf_counter()
    compiled = step.lower(state, images, labels).compile()
    compile_s = time.perf_counter() - t0
    for _ in range(2):  # warm-up: first runs include allocation and autotuning
        state, loss = compiled(state, images, labels)
    jax.block_until_ready(loss)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, loss = compiled(state, images, labels)
        jax.block_until_ready(loss)
        times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    return {
        "variant": variant,
        "dtype": dtype,
        "scan_impl": scan_impl,
        "batch": batch,
        "image_size": size,
        "compile_s": compile_s,
        "step_s": step_s,
        "images_per_s": batch / step_s,
        "loss": float(loss),
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
    pallas_scan.DEFAULT_CONFIG = pallas_scan.ScanConfig.parse(args.pallas_config)
    meta = {"device": jax.devices()[0].device_kind, "jax": jax.__version__}
    meta["pallas_config"] = pallas_scan.DEFAULT_CONFIG.describe()
    print(json.dumps(meta), flush=True)
    rows = []
    for variant in args.variants:
        for dtype in args.dtypes:
            for impl in args.scan_impls:
                try:
                    row = bench(variant, dtype, impl, args.batch, args.size, args.steps, args.classes)
                except Exception as err:  # one failing configuration must not hide the others
                    row = {"variant": variant, "dtype": dtype, "scan_impl": impl, "error": repr(err)[:500]}
                record(row, rows, meta, args.out)


if __name__ == "__main__":
    main()
