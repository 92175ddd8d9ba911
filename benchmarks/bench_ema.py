r"""What weight EMA and class weights cost train.py's step: memory per XLA, and time.

    python benchmarks/bench_ema.py [--image-size 64] [--batch-size 8] [--steps 4] [--rounds 3] [--out FILE]

Compiles MedMamba-T's train step (``steps.compile_train_step``, as train.py does) three ways:
plain, with an EMA of the weights (``training.ema``), and with balanced class weights; then
times rounds of ``--steps`` steps of each, alternating, and prints one JSON line per variant
with XLA's memory analysis and the median seconds per step. The EMA's work grows with the
parameter count, not the image size, so a small ``--image-size`` bounds its share from above.
Data are random uint8 images, nothing is downloaded.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import record  # noqa: E402
from medmamba_jax.runtime import prefer_low_memory_cpu_schedule  # noqa: E402

VARIANTS = {"plain": {}, "ema": {"ema_decay": 0.9999}, "class_weights": {"class_weights": "balanced"}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=4, help="steps per timed round")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of each variant, alternating")
    ap.add_argument("--out", help="also write the rows to this JSON file as they come")
    args = ap.parse_args()
    prefer_low_memory_cpu_schedule()
    import jax
    import numpy as np
    from flax import nnx

    from medmamba_jax import data as data_lib
    from medmamba_jax.configs import medmnist
    from medmamba_jax import sharding
    from medmamba_jax.models import MedMamba
    from medmamba_jax.training import class_weights, ema, memory, model_init, optim, steps
    from medmamba_jax.training import config as config_lib

    config = medmnist.get_config()
    config.image_size = args.image_size
    mesh, rng = sharding.make_mesh(), np.random.default_rng(0)
    n = args.batch_size * (args.steps * args.rounds + 1)
    images, labels = rng.integers(0, 256, (n, 28, 28, 3), dtype=np.uint8), rng.integers(0, 9, n)
    stream = data_lib.TrainStream(images, labels, args.batch_size, 0)
    info = {"label_names": [str(i) for i in range(9)], "multi_label": False}
    meta = {"device": str(jax.devices()[0].device_kind), "cpus": os.cpu_count(), "python": platform.python_version(),
            "jax": jax.__version__, "image_size": args.image_size, "batch_size": args.batch_size}
    compiled, states = {}, {}
    for name, settings in VARIANTS.items():
        model = MedMamba(config_lib.model_config(config, 9), rngs=model_init.init_rngs(config))
        optimizer = ema.make_optimizer(model, optim.make_tx(config, 100)[0], settings.get("ema_decay", 0.0), 1)
        weights = class_weights.resolve(settings.get("class_weights"), labels, info)
        began = time.perf_counter()
        compiled[name] = steps.compile_train_step(model, optimizer, stream, data_lib.train_transform(config), False, 0,
                                                  mesh, weights)
        print(f"{name}: compiled in {time.perf_counter() - began:.0f}s", file=sys.stderr, flush=True)
        states[name] = (sharding.replicate(mesh, nnx.state(model)), sharding.replicate(mesh, nnx.state(optimizer)))
    seconds: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for round_ in range(args.rounds + 1):  # round 0 warms up
        for name in VARIANTS:
            model_state, opt_state = states[name]
            began = time.perf_counter()
            for step in range(args.steps):
                batch = [sharding.shard_batch(mesh, x) for x in stream(step)]
                model_state, opt_state, loss = compiled[name](model_state, opt_state, *batch, np.int32(step))
            jax.block_until_ready(loss)
            states[name] = (model_state, opt_state)
            if round_:
                seconds[name].append((time.perf_counter() - began) / args.steps)
    rows: list = []
    for name in VARIANTS:
        stats = compiled[name].memory_analysis()
        record({"variant": name, **meta, "step_gb": memory.step_bytes(compiled[name]) / memory.GB,
                "argument_mb": stats.argument_size_in_bytes / 2**20, "temp_mb": stats.temp_size_in_bytes / 2**20,
                "median_step_s": statistics.median(seconds[name]), "rounds_step_s": seconds[name]}, rows, meta, args.out)


if __name__ == "__main__":
    main()
