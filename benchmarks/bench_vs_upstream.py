"""MedMamba-T forward at 224 on a CPU: the released PyTorch code against medmamba-jax, in one run.

    PYTHONPATH=. python benchmarks/bench_vs_upstream.py --upstream /path/to/MedMamba \
        [--impls cpu,associative] [--batch 1 8] [--rounds 3] [--out vs_upstream.json]

The released code runs through ``../shared/upstream/upstream_medmamba.py`` (its plain
PyTorch scan is its only CPU path); it needs a checkout of YubiaoYue/MedMamba and einops.
Every contender is measured in its own fresh process, once per round, the rounds
alternating the contenders so that load on a shared machine hits them alike; the report
gives each contender's median over the rounds and the speed-ups over the released code.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import median_seconds, report, run_json_child  # noqa: E402

# The harness lives in the project's shared folder beside the checkout (../shared/upstream).
DEFAULT_HARNESS = REPO.parent / "shared" / "upstream"
IMAGE_SIZE, NUM_CLASSES = 224, 9


def measure_upstream(checkout: str, harness: str, batches: list[int]) -> dict[str, float]:
    import torch

    sys.path.insert(0, harness)
    import upstream_medmamba

    module = upstream_medmamba.load_module(checkout)
    model = module.VSSM(depths=[2, 2, 4, 2], dims=[96, 192, 384, 768], num_classes=NUM_CLASSES).eval()
    out = {}
    with torch.no_grad():
        for batch in batches:
            x = torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE)
            out[f"forward_b{batch}_s"] = median_seconds(lambda: model(x), 1)
    return out


def measure_jax(impl: str, batches: list[int]) -> dict[str, float]:
    import jax
    from flax import nnx

    from medmamba_jax.models import medmamba_t

    model = medmamba_t(num_classes=NUM_CLASSES, scan_impl=impl, rngs=nnx.Rngs(0))
    model.eval()
    forward = nnx.jit(lambda m, x: m(x))
    out = {}
    for batch in batches:
        x = jax.random.normal(jax.random.key(0), (batch, IMAGE_SIZE, IMAGE_SIZE, 3))
        out[f"forward_b{batch}_s"] = median_seconds(lambda: jax.block_until_ready(forward(model, x)), 3)
    return out


def run_child(contender: str, args) -> dict:
    cmd = [sys.executable, __file__, "--child", contender, "--upstream", args.upstream or "",
           "--harness", args.harness, "--batch", *map(str, args.batch)]  # fmt: skip
    return run_json_child(cmd, env={**os.environ, "PYTHONPATH": str(REPO)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream", help="a checkout (or bare git directory) of YubiaoYue/MedMamba")
    parser.add_argument("--harness", default=str(DEFAULT_HARNESS),
                        help="the folder holding upstream_medmamba.py (default: ../shared/upstream)")
    parser.add_argument("--impls", default="cpu,associative")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", help="also write the JSON here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        if args.child == "upstream":
            result = measure_upstream(args.upstream, args.harness, args.batch)
        else:
            result = measure_jax(args.child, args.batch)
        print(json.dumps(result))
        return
    if not args.upstream or not Path(args.upstream).exists():
        raise SystemExit("error: --upstream must name a checkout of YubiaoYue/MedMamba (fetch it first)")
    if not (Path(args.harness) / "upstream_medmamba.py").is_file():
        raise SystemExit(f"error: no upstream_medmamba.py in {args.harness}; give --harness")
    contenders = ["upstream", *args.impls.split(",")]
    rounds: dict[str, list[dict]] = {c: [] for c in contenders}
    for index in range(args.rounds):
        for contender in contenders if index % 2 == 0 else contenders[::-1]:
            print(f"round {index + 1}/{args.rounds}: {contender} ...", file=sys.stderr, flush=True)
            rounds[contender].append(run_child(contender, args))
    summary = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rounds": rounds, "median": {}}
    for contender, results in rounds.items():
        good = [r for r in results if "error" not in r]
        summary["median"][contender] = {
            key: round(statistics.median(r[key] for r in good), 4) for key in (good[0] if good else {})
        }
    base = summary["median"]["upstream"]
    summary["speedup_over_upstream"] = {
        c: {k: round(base[k] / v, 2) for k, v in summary["median"][c].items() if k in base}
        for c in contenders[1:]
    }
    report(summary, args.out)


if __name__ == "__main__":
    main()
