r"""What train.py's step needs in memory, per XLA, at each micro-batch size; and its compile time.

    python benchmarks/bench_step_memory.py [--config configs/medmnist.py] [--micro 4 16 64]

For each micro-batch size, compiles the recipe's train step (``steps.compile_train_step``, as
train.py does before its first step) and prints one JSON line with XLA's memory analysis and
what ``memory.step_bytes`` makes of it, with the lowering and compile times. These are the
figures train.py's automatic ``grad_accum_steps`` compares with the device's memory.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from medmamba_jax.runtime import prefer_low_memory_cpu_schedule  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--micro", type=int, nargs="+", default=[4, 16])
    ap.add_argument("--classes", type=int, default=9)
    args = ap.parse_args()
    prefer_low_memory_cpu_schedule()
    import jax
    import numpy as np
    from flax import nnx

    from medmamba_jax import data as data_lib
    from medmamba_jax.configs import medmnist
    from medmamba_jax import sharding
    from medmamba_jax.models import MedMamba
    from medmamba_jax.training import config as config_lib
    from medmamba_jax.training import memory, model_init, optim, steps

    config = medmnist.get_config()
    mesh = sharding.make_mesh()
    model = MedMamba(config_lib.model_config(config, args.classes), rngs=model_init.init_rngs(config))
    for micro in args.micro:
        rng = np.random.default_rng(0)
        stream = data_lib.TrainStream(rng.integers(0, 256, (micro, config.size, config.size, 3), dtype=np.uint8),
                                      rng.integers(0, args.classes, micro), micro, 0)
        optimizer = nnx.Optimizer(model, optim.make_tx(config, 100)[0], wrt=nnx.Param)
        began = time.perf_counter()
        compiled = steps.compile_train_step(model, optimizer, stream, data_lib.train_transform(config), False, 0, mesh)
        seconds = time.perf_counter() - began
        stats = compiled.memory_analysis()
        print(json.dumps({
            "device": jax.devices()[0].device_kind, "image_size": config.image_size, "micro_batch": micro,
            "lower_and_compile_s": round(seconds, 1), "step_gb": memory.step_bytes(compiled) / memory.GB,
            "argument_gb": stats.argument_size_in_bytes / memory.GB, "temp_gb": stats.temp_size_in_bytes / memory.GB,
        }), flush=True)


if __name__ == "__main__":
    main()
