r"""Training throughput of MedMamba-T at 224x224: the full train step, and the input pipeline alone.

    python benchmarks/bench_train.py [--batch-size 8] [--steps 3] [--source-size 28]

Prints one JSON object. ``train_images_per_sec`` times jitted train steps (after one
warm-up step that compiles); ``pipeline_images_per_sec`` times the host stream (index,
gather, shard) followed by the on-device train transform (random-resized-crop from the
source size to 224, flip, normalise), without the model. Data are random uint8 images
shaped like a MedMNIST split at ``--source-size``, so nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import medmnist as medmnist_config  # noqa: E402
from medmamba_jax import data as data_lib  # noqa: E402
from medmamba_jax.runtime import prefer_low_memory_cpu_schedule  # noqa: E402
from medmamba_jax import sharding  # noqa: E402
from medmamba_jax.models import MedMamba  # noqa: E402
from medmamba_jax.training import config as config_lib  # noqa: E402
from medmamba_jax.training import model_init, optim, steps  # noqa: E402


def _config(args):
    config = medmnist_config.get_config()
    config.batch_size = args.batch_size
    config.size = args.source_size
    config.scan_impl = args.scan_impl
    config.dtype = args.dtype
    return config


def _stream(config, n_images: int, source_size: int) -> data_lib.TrainStream:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n_images, source_size, source_size, 3), dtype=np.uint8)
    labels = rng.integers(0, 9, n_images)
    return data_lib.TrainStream(images, labels, config.batch_size, config.seed)


def bench_pipeline(config, mesh, stream, n_steps: int) -> float:
    """Images/s of stream -> device -> train transform, with the prefetching used in training."""
    transform = jax.jit(data_lib.train_transform(config))

    def batch(step):
        images, labels = stream(step)
        return sharding.shard_batch(mesh, images), sharding.shard_batch(mesh, labels)

    def run(step_range):
        out = None
        for step, (images, _) in zip(step_range, data_lib.prefetch(batch, step_range, config.prefetch)):
            out = transform(images, steps.augment_key(config.seed, jnp.int32(step)))
        jax.block_until_ready(out)

    run(range(0, 2))  # compile
    start = time.perf_counter()
    run(range(2, 2 + n_steps))
    return n_steps * config.batch_size / (time.perf_counter() - start)


def bench_train(config, mesh, stream, n_steps: int) -> dict:
    model = MedMamba(config_lib.model_config(config, 9), rngs=model_init.init_rngs(config))
    tx, _ = optim.make_tx(config, steps_per_epoch=100)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    model_def, model_state = nnx.split(model)
    opt_def, opt_state = nnx.split(optimizer)
    # As in training: states placed replicated up front, or the second step recompiles for
    # the new input sharding (seen on an H100 as a 20 s stall inside the timed steps).
    model_state, opt_state = sharding.replicate(mesh, (model_state, opt_state))
    step_fn = steps.make_train_step(model_def, opt_def, data_lib.train_transform(config), False, 0, mesh)
    batches = [tuple(sharding.shard_batch(mesh, a) for a in stream(s)) for s in range(n_steps + 1)]
    start = time.perf_counter()
    model_state, opt_state, loss = step_fn(model_state, opt_state, *batches[0], jnp.int32(0))
    jax.block_until_ready(loss)
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    for s in range(1, n_steps + 1):
        model_state, opt_state, loss = step_fn(model_state, opt_state, *batches[s], jnp.int32(s))
    jax.block_until_ready(loss)
    seconds = time.perf_counter() - start
    return {"train_images_per_sec": n_steps * config.batch_size / seconds,
            "train_step_seconds": seconds / n_steps, "first_step_seconds_incl_compile": compile_s}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="timed train steps after the warm-up")
    parser.add_argument("--pipeline-steps", type=int, default=50)
    parser.add_argument("--source-size", type=int, default=28, help="stored MedMNIST resolution")
    parser.add_argument("--scan-impl", default="auto", help="auto: pallas on a GPU, associative elsewhere")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    args = parser.parse_args()
    prefer_low_memory_cpu_schedule()  # as train.py does, before JAX starts its backends
    config, mesh = _config(args), sharding.make_mesh()
    stream = _stream(config, 64 * args.batch_size, args.source_size)
    result = {
        "model": "medmamba_t", "image_size": config.image_size, "source_size": args.source_size,
        "batch_size": args.batch_size, "scan_impl": args.scan_impl, "dtype": args.dtype, "devices": [str(d) for d in jax.devices()],
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "pipeline_images_per_sec": bench_pipeline(config, mesh, stream, args.pipeline_steps),
    }
    result.update(bench_train(config, mesh, stream, args.steps))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
