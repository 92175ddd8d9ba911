r"""Training throughput with JAX's dispatch queue unbounded, and bounded as train.py bounds it.

    python benchmarks/bench_dispatch.py [--image-size 64] [--batch-size 8] [--steps 12] [--rounds 3]

train.py waits, after dispatching step s, for step s - 1 to finish (``Trainer.train_epoch``),
so one step waits behind the running one. This times the same loop (train.py's compiled
step, its data stream and prefetching) both ways, alternating rounds in one process; the
losses are read at the end in both, as a logging window would. Prints one JSON object with
the median images/s of each and their ratio. Data are random uint8 images, nothing is
downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import jax
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from medmamba_jax.configs import medmnist  # noqa: E402
from medmamba_jax import data as data_lib  # noqa: E402
from medmamba_jax.runtime import prefer_low_memory_cpu_schedule  # noqa: E402
from medmamba_jax import sharding  # noqa: E402
from medmamba_jax.models import MedMamba  # noqa: E402
from medmamba_jax.training import config as config_lib  # noqa: E402
from medmamba_jax.training import model_init, optim, steps  # noqa: E402


def _images_per_sec(step_fn, states, stream, mesh, first: int, n_steps: int, bounded: bool):
    def batch(step):
        images, labels = stream(step)
        return sharding.shard_batch(mesh, images), sharding.shard_batch(mesh, labels)

    model_state, opt_state = states
    began, losses, previous = time.perf_counter(), [], None
    steps_range = range(first, first + n_steps)
    for step, (images, labels) in zip(steps_range, data_lib.prefetch(batch, steps_range, 4)):
        model_state, opt_state, loss = step_fn(model_state, opt_state, images, labels, np.int32(step))
        if bounded and previous is not None:
            jax.block_until_ready(previous)
        previous = loss
        losses.append(loss)
    [float(loss) for loss in losses]
    seconds = time.perf_counter() - began
    return n_steps * stream.micro_batch / seconds, (model_state, opt_state)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=12, help="steps per timed round")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of each, alternating")
    args = ap.parse_args()
    config = medmnist.get_config()
    config.image_size, config.batch_size, config.grad_accum_steps = args.image_size, args.batch_size, 1
    mesh = sharding.make_mesh()
    rng = np.random.default_rng(0)
    n = args.batch_size * args.steps * (2 * args.rounds + 1)
    stream = data_lib.TrainStream(rng.integers(0, 256, (n, 28, 28, 3), dtype=np.uint8), rng.integers(0, 9, n),
                                  args.batch_size, 0)
    model = MedMamba(config_lib.model_config(config, 9), rngs=model_init.init_rngs(config))
    tx, _ = optim.make_tx(config, 100)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    step_fn = steps.compile_train_step(model, optimizer, stream, data_lib.train_transform(config), False, 0, mesh)
    states = (sharding.replicate(mesh, nnx.state(model)), sharding.replicate(mesh, nnx.state(optimizer)))
    _, states = _images_per_sec(step_fn, states, stream, mesh, 0, 2, bounded=False)  # warm-up
    rates = {"unbounded": [], "bounded": []}
    first = 2
    for _ in range(args.rounds):
        for name in rates:
            rate, states = _images_per_sec(step_fn, states, stream, mesh, first, args.steps, name == "bounded")
            rates[name].append(rate)
            first += args.steps
    medians = {name: statistics.median(values) for name, values in rates.items()}
    print(json.dumps({
        "device": str(jax.devices()[0].device_kind), "cpus": os.cpu_count(), "python": platform.python_version(),
        "jax": jax.__version__, "image_size": args.image_size, "batch_size": args.batch_size, "steps": args.steps,
        "rounds": rates, "median_images_per_sec": medians,
        "bounded_over_unbounded": medians["bounded"] / medians["unbounded"],
    }))


if __name__ == "__main__":
    prefer_low_memory_cpu_schedule()
    main()
