"""Selective-scan benchmark: reference vs associative vs pallas at MedMamba-T's stage shapes.

For each (stage, batch, impl) it reports, as JSON lines and a final JSON list:
forward time, forward+backward time (grads of all 7 inputs), compile times, XLA's
compiled memory analysis of the forward+backward program (arguments, outputs, temps;
their sum is the peak the program can need), and for each time the bandwidth floor:
the bytes that any implementation must read and write once, over the HBM bandwidth
measured here with a plain device copy. The forward+backward floor is that of training's
two passes (``floor_bytes``), not of one fused gradient program.

``--op cross`` (the default) times SS2D's four-direction ``cross_selective_scan`` in
its channels-minor layout, which is what MedMamba runs; ``--op scan`` times the
mamba_ssm-layout ``selective_scan`` (the Pallas path then includes transposes into and
out of the channels-minor layout: u, delta and y in the forward, more in the backward).

Usage (on a GPU):
    PYTHONPATH=. python benchmarks/bench_scan.py --batch 64 128 --out scan.json
    PYTHONPATH=. python benchmarks/bench_scan.py --impls pallas --pallas tile=32,seg=8
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import jax.numpy as jnp

from benchmarks.common import median_seconds, record
from medmamba_jax.ops import cross_selective_scan, selective_scan
from medmamba_jax.ops.pallas_scan import ScanConfig, cross_selective_scan_pallas, selective_scan_pallas

# MedMamba-T at 224x224: (L, K*D) of the four stages, K = 4 directions, N = 16.
STAGES = ((3136, 384), (784, 768), (196, 1536), (49, 3072))
GROUPS, N_STATE = 4, 16


def make_inputs(op: str, batch: int, length: int, channels: int, dtype) -> tuple[jax.Array, ...]:
    """Random inputs in MedMamba's ranges: (u, delta, A, B, C, D, bias, dy)."""
    ks = jax.random.split(jax.random.key(int(time.time())), 8)
    dim = channels // GROUPS
    if op == "cross":
        u_shape, shape = (batch, 2, length, dim), (batch, GROUPS, length, dim)
    else:
        u_shape = shape = (batch, channels, length)
    bc = (batch, GROUPS, N_STATE, length)
    return (
        jax.random.normal(ks[0], u_shape, dtype),
        jax.random.normal(ks[1], shape, dtype) * 0.5,
        -jnp.exp(jax.random.uniform(ks[2], (channels, N_STATE), jnp.float32, 0.0, 2.8)),
        jax.random.normal(ks[3], bc, dtype),
        jax.random.normal(ks[4], bc, dtype),
        jax.random.normal(ks[5], (channels,), jnp.float32),
        jax.random.uniform(ks[6], (channels,), jnp.float32, -4.6, -2.3),
        jax.random.normal(ks[7], shape, jnp.float32),
    )


def scan_fn(op: str, impl: str, config: ScanConfig | None, interpret: bool | None = None):
    """The scan ``op`` ('cross' or 'single') of ``impl``; ``config`` and ``interpret`` (None: the
    Pallas kernel's defaults) reach the Pallas kernel only."""
    config = config or ScanConfig()
    if op == "cross":
        if impl == "pallas":
            return lambda *a: cross_selective_scan_pallas(*a, config=config, interpret=interpret)
        return lambda *a: cross_selective_scan(*a, impl=impl)
    if impl == "pallas":
        return lambda *a: selective_scan_pallas(*a, delta_softplus=True, config=config, interpret=interpret)
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
    run_s = median_seconds(lambda: jax.block_until_ready(compiled(*args)), iters)
    if with_compiled:
        return compile_s, run_s, compiled
    return compile_s, run_s


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


def floor_bytes(inputs, dy, backward: bool) -> int:
    """Bytes that must cross HBM once per pass, S + Y forward and 3S + 2Y with the backward.

    Forward: read u, delta, B, C (S bytes), write y (Y, dy's size). Backward: read them
    again and dy, write du, ddelta, dB, dC. In training the two passes cannot be one: the
    forward must write y for the layers after the scan, and dy exists only once their
    backward has run, long after the inputs left the chip. A program that computed only
    the gradients, with y never needed, could move 2S + Y bytes."""
    sequences = sum(x.nbytes for x in (inputs[0], inputs[1], inputs[3], inputs[4]))
    fwd = sequences + dy.nbytes
    return fwd + (2 * sequences + dy.nbytes if backward else 0)


def bench_one(op, impl, config, stage, batch, dtype, iters, bandwidth) -> dict:
    length, channels = STAGES[stage]
    *inputs, dy = make_inputs(op, batch, length, channels, dtype)
    scan = scan_fn(op, impl, config)
    train = fwd_bwd(scan)
    row = {"op": op, "impl": impl, "stage": stage, "L": length, "KD": channels, "batch": batch}
    row["dtype"] = jnp.dtype(dtype).name
    if config is not None:
        row["config"] = config.describe()
    row["fwd_compile_s"], row["fwd_s"] = time_fn(scan, inputs, iters)
    row["fwdbwd_compile_s"], row["fwdbwd_s"], compiled = time_fn(train, (*inputs, dy), iters, True)
    row["memory_fwdbwd"] = memory(compiled)
    for key, backward in (("fwd", False), ("fwdbwd", True)):
        floor = floor_bytes(inputs, dy, backward) / bandwidth
        row[f"{key}_floor_s"] = floor
        row[f"{key}_over_floor"] = row[f"{key}_s"] / floor
    return row


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--op", default="cross", choices=["cross", "scan"])
    ap.add_argument("--batch", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--stages", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--impls", nargs="+", default=["reference", "associative", "pallas"])
    ap.add_argument("--pallas", nargs="*", default=[""], help="pallas configs to try, e.g. tile=32,seg=8")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--out", default=None, help="write the JSON list here")
    args = ap.parse_args(argv)
    try:  # every config checked before hours of measuring, not when its turn comes
        pallas_configs = [ScanConfig.parse(c) for c in args.pallas]
    except ValueError as err:
        ap.error(f"--pallas: {err}")
    bandwidth = hbm_bandwidth()
    meta = {"device": jax.devices()[0].device_kind, "jax": jax.__version__, "hbm_bytes_per_s": bandwidth}
    print(json.dumps(meta), flush=True)
    rows = []
    for batch in args.batch:
        for stage in args.stages:
            for impl in args.impls:
                configs = pallas_configs if impl == "pallas" else [None]
                for config in configs:
                    try:
                        row = bench_one(
                            args.op, impl, config, stage, batch, jnp.dtype(args.dtype), args.iters, bandwidth
                        )
                    except Exception as err:  # report and go on: one failing config must not hide the rest
                        row = {"impl": impl, "stage": stage, "batch": batch, "error": repr(err)[:500]}
                    record(row, rows, meta, args.out)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
