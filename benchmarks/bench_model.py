"""MedMamba speed and memory for each selective-scan implementation.

    python benchmarks/bench_model.py [--model medmamba_t] [--image-size 224] \
        [--impls associative,reference] [--out results.json]

For every scan impl, a fresh subprocess builds the model and reports, as JSON:
compile time of the train step (its first call, less one timed step: tracing and
compilation only), forward time at batch 1 and 8, train-step time at
batch 8, and peak resident memory (ru_maxrss): once right after the train steps (the
train step's peak, its compilation included) and once at the end (after the forward
programs too). Each impl gets its own process so that peaks do not mix.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import median_seconds, report, run_json_child  # noqa: E402


def _timed(fn, *args, repeats: int):
    """Median wall time of ``fn(*args)`` over ``repeats`` runs, after one warm-up."""
    import jax

    return median_seconds(lambda: jax.block_until_ready(fn(*args)), repeats)


def measure(model_name: str, impl: str, image_size: int, batch: int, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from medmamba_jax.models import MedMamba, MedMambaConfig

    model = MedMamba(MedMambaConfig.preset(model_name, num_classes=9, scan_impl=impl), rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adamw(1e-4, weight_decay=1e-4), wrt=nnx.Param)
    images = jax.random.normal(jax.random.key(0), (batch, image_size, image_size, 3))
    labels = jnp.arange(batch) % 9

    @nnx.jit
    def forward(model, x):
        return model(x)

    # Donated like the training loop's step, so old and new weights are not both held.
    @functools.partial(nnx.jit, donate_argnums=(0, 1))
    def train_step(model, optimizer, x, y):
        def loss_fn(m):
            return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    model.train()
    start = time.perf_counter()
    jax.block_until_ready(train_step(model, optimizer, images, labels))
    first_call_s = time.perf_counter() - start
    step_s = _timed(train_step, model, optimizer, images, labels, repeats=repeats)
    compile_s = first_call_s - step_s  # the first call also ran a step
    train_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    model.eval()
    forward_s = {
        f"forward_b{b}_s": _timed(forward, model, images[:b], repeats=repeats) for b in sorted({1, batch})
    }
    return {
        "impl": impl,
        "train_step_compile_s": round(compile_s, 2),
        **{k: round(v, 4) for k, v in forward_s.items()},
        f"train_step_b{batch}_s": round(step_s, 3),
        f"train_images_per_s_b{batch}": round(batch / step_s, 2),
        "train_step_peak_rss_gib": round(train_peak, 3),
        "process_peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="medmamba_t")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--impls", default="associative,reference")
    parser.add_argument("--out", help="also write the JSON here")
    parser.add_argument("--xla-default-schedule", action="store_true",
                        help="keep XLA's concurrency-optimised CPU scheduler (more memory)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.child and not args.xla_default_schedule:
        from medmamba_jax.runtime import prefer_low_memory_cpu_schedule

        # The parent decides; children inherit XLA_FLAGS (deciding again there would undo
        # --xla-default-schedule, which is not passed down).
        prefer_low_memory_cpu_schedule()
    if args.child:
        print(json.dumps(measure(args.model, args.child, args.image_size, args.batch, args.repeats)))
        return

    import jax

    results = {
        "model": args.model,
        "image_size": args.image_size,
        "machine": f"{platform.processor() or platform.machine()}, {jax.device_count()} x {jax.devices()[0].device_kind}",
        "jax": jax.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "runs": [],
    }
    for impl in args.impls.split(","):
        cmd = [sys.executable, __file__, "--child", impl, "--model", args.model,
               "--image-size", str(args.image_size), "--batch", str(args.batch), "--repeats", str(args.repeats)]
        print(f"measuring {impl} ...", file=sys.stderr, flush=True)
        run = run_json_child(cmd)
        results["runs"].append({"impl": impl, **run} if "error" in run else run)
    report(results, args.out)


if __name__ == "__main__":
    main()
