"""Selective-scan benchmark: reference vs associative vs pallas at MedMamba-T's stage shapes.

For each (stage, batch, impl) it reports, as JSON lines and a final JSON list:
forward time, forward+backward time (grads of all 7 inputs), compile times, XLA's
compiled memory analysis of the forward+backward program (arguments, outputs, temps;
their sum is the peak the program can need), and for each time the bandwidth floor:
the bytes that any implementation must read and write once, over the HBM bandwidth
measured here with a plain device copy.

Usage (on a GPU):
    PYTHONPATH=. python benchmarks/bench_scan.py --batch 64 128 --out scan.json
    PYTHONPATH=. python benchmarks/bench_scan.py --impls pallas --pallas tile=32,seg=8
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp

from medmamba_jax.ops import selective_scan
from medmamba_jax.ops.pallas_scan import DEFAULT_CONFIG, ScanConfig, selective_scan_pallas

# MedMamba-T at 224x224: (L, K*D) of the four stages, K = 4 directions, N = 16.
STAGES = ((3136, 384), (784, 768), (196, 1536), (49, 3072))
GROUPS, N_STATE = 4, 16
CONFIG_KEYS = {"tile": "tile", "seg": "seg", "ckpt": "ckpt_segs", "warps": "num_warps", "bwd_tile": "bwd_tile"}


def make_inputs(batch: int, length: int, channels: int, dtype) -> tuple[jax.Array, ...]:
    """Random inputs in MedMamba's ranges: (u, delta, A, B, C, D, bias, dy)."""
    ks = jax.random.split(jax.random.key(int(time.time())), 8)
    shape, bc = (batch, channels, length), (batch, GROUPS, N_STATE, length)
    return (
        jax.random.normal(ks[0], shape, dtype),
        jax.random.normal(ks[1], shape, dtype) * 0.5,
        -jnp.exp(jax.random.uniform(ks[2], (channels, N_STATE), jnp.float32, 0.0, 2.8)),
        jax.random.normal(ks[3], bc, dtype),
        jax.random.normal(ks[4], bc, dtype),
        jax.random.normal(ks[5], (channels,), jnp.float32),
        jax.random.uniform(ks[6], (channels,), jnp.float32, -4.6, -2.3),
        jax.random.normal(ks[7], shape, jnp.float32),
    )


def scan_fn(impl: str, config: ScanConfig | None):
    if impl == "pallas":
        return lambda *a: selective_scan_pallas(*a, delta_softplus=True, config=config or DEFAULT_CONFIG)
    return lambda *a: selective_scan(*a, delta_softplus=True, impl=impl)


def fwd_bwd(scan):
    """All seven gradients of sum(y * dy)."""

    def run(*args):
        *inputs, dy = args
        return jax.grad(lambda *x: jnp.sum(scan(*x) * dy), argnums=tuple(range(7)))(*inputs)

    return run


def time_fn(fn, args, iters: int, with_compiled: bool = False):
    """(compile seconds, median run seconds[, compiled]) of jax.jit(fn)(*args)."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(compiled(*args))
    runs = []
    for _ in range(iters):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        runs.append(time.perf_counter() - t0)
    if with_compiled:
        return compile_s, statistics.median(runs), compiled
    return compile_s, statistics.median(runs)


def memory(compiled) -> dict[str, int]:
    """XLA's buffer assignment for a compiled program: the device memory it needs."""
    stats = compiled.memory_analysis()
    out = {
        "argument_bytes": int(stats.argument_size_in_bytes),
        "output_bytes": int(stats.output_size_in_bytes),
        "temp_bytes": int(stats.temp_size_in_bytes),
    }
    out["peak_bytes"] = sum(out.values())
    return out


def hbm_bandwidth(nbytes: int = 1 << 30) -> float:
    """Bytes/s of a device-wide copy (read + write), the practical HBM bandwidth."""
    x = jnp.ones((nbytes // 4,), jnp.float32)
    _, secs = time_fn(lambda v: v * 1.0001, (x,), 20)
    return 2 * nbytes / secs


def floor_bytes(batch: int, length: int, channels: int, itemsize: int, backward: bool) -> int:
    """Bytes that must cross HBM: inputs read and outputs written once per pass."""
    seq = batch * channels * length
    bc = batch * GROUPS * N_STATE * length
    fwd = (2 * seq + 2 * bc) * itemsize + seq * 4  # u, delta, B, C in; y (fp32) out
    if not backward:
        return fwd
    # The backward re-reads u, delta, B, C and dy (fp32) and writes du, ddelta, dB, dC.
    bwd = (2 * seq + 2 * bc) * itemsize + seq * 4 + (2 * seq + 2 * bc) * itemsize
    return fwd + bwd


def bench_one(impl, config, stage, batch, dtype, iters, bandwidth) -> dict:
    length, channels = STAGES[stage]
    *inputs, dy = make_inputs(batch, length, channels, dtype)
    scan, train = scan_fn(impl, config), fwd_bwd(scan_fn(impl, config))
    row = {"impl": impl, "stage": stage, "L": length, "KD": channels, "batch": batch, "dtype": jnp.dtype(dtype).name}
    if config is not None:
        row["config"] = {k: getattr(config, v) for k, v in CONFIG_KEYS.items()}
    row["fwd_compile_s"], row["fwd_s"] = time_fn(scan, inputs, iters)
    row["fwdbwd_compile_s"], row["fwdbwd_s"], compiled = time_fn(train, (*inputs, dy), iters, True)
    row["memory_fwdbwd"] = memory(compiled)
    item = jnp.dtype(dtype).itemsize
    for key, backward in (("fwd", False), ("fwdbwd", True)):
        floor = floor_bytes(batch, length, channels, item, backward) / bandwidth
        row[f"{key}_floor_s"] = floor
        row[f"{key}_over_floor"] = row[f"{key}_s"] / floor
    return row


def parse_config(text: str) -> ScanConfig:
    """'tile=32,seg=8,ckpt=2,warps=4' -> ScanConfig."""
    fields = {}
    for item in filter(None, text.split(",")):
        key, value = item.split("=")
        fields[CONFIG_KEYS[key]] = int(value)
    return ScanConfig(**fields)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--stages", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--impls", nargs="+", default=["reference", "associative", "pallas"])
    ap.add_argument("--pallas", nargs="*", default=[""], help="pallas configs to try, e.g. tile=32,seg=8")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--out", default=None, help="write the JSON list here")
    args = ap.parse_args(argv)
    bandwidth = hbm_bandwidth()
    meta = {"device": jax.devices()[0].device_kind, "jax": jax.__version__, "hbm_bytes_per_s": bandwidth}
    print(json.dumps(meta), flush=True)
    rows = []
    for batch in args.batch:
        for stage in args.stages:
            for impl in args.impls:
                configs = [parse_config(c) for c in args.pallas] if impl == "pallas" else [None]
                for config in configs:
                    try:
                        row = bench_one(impl, config, stage, batch, jnp.dtype(args.dtype), args.iters, bandwidth)
                    except Exception as err:  # report and go on: one failing config must not hide the rest
                        row = {"impl": impl, "stage": stage, "batch": batch, "error": repr(err)[:500]}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    if args.out:
                        with open(args.out, "w") as f:
                            json.dump({"meta": meta, "rows": rows}, f, indent=1)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
