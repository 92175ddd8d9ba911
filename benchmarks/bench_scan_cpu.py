"""The CPU selective scan (impl='cpu') at MedMamba-T's four stage shapes, against its compute floor.

The floor counts the arithmetic per state element (one element = one (batch, direction,
channel, position, state) of the recurrence) and prices it at this CPU's measured vector
throughput (one core's, measured alone, times the cores numba uses):

* forward: 1 exp + 4 multiply(-add)s (dt*A; exp*h + dt*u*B as a multiply and an FMA;
  out += h*C);
* backward: the forward's recomputation plus the adjoint's 1 exp + 10 multiply(-add)s.

Throughputs come from single-threaded numba loops over L1-resident arrays: ``exp_nonpositive`` (the
kernels' exp) and independent FMA chains. The scan times are of the kernels alone, called
on host arrays (no XLA around them), alternating forward and backward; medians.

    PYTHONPATH=. python benchmarks/bench_scan_cpu.py [--batch 1 8] [--repeats 5] [--out scan_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numba
import numpy as np
from numba import njit

from benchmarks.common import median_seconds, record
from medmamba_jax.ops import cpu_scan
from medmamba_jax.ops.cpu_kernels import backward_kernel, exp_nonpositive, forward_kernel

STAGES = ((3136, 384), (784, 768), (196, 1536), (49, 3072))  # (L, K*D) of MedMamba-T at 224
N_STATE, DIRECTIONS = 16, 4
OPS = {"forward": (1, 4), "backward": (2, 14)}  # (exps, multiply-adds) per state element


@njit(fastmath=True)
def _exp_loop(x, out, reps):
    for _ in range(reps):
        for i in range(x.shape[0]):
            # The FMA makes each rep depend on the last, so the loop cannot be hoisted.
            out[i] = exp_nonpositive(x[i] - np.float32(1e-6) * out[i])


@njit(fastmath=True)
def _fma_loop(acc, reps):
    for _ in range(reps):
        for i in range(acc.shape[0]):  # 64 floats: 8 independent vector chains hide the latency
            acc[i] = acc[i] * np.float32(0.999) + np.float32(1e-3)


def _best_seconds(run, repeats: int) -> float:
    """The fastest of ``repeats`` timed calls after a warm-up: peak throughput is the floor's
    premise, and on a shared machine only the fastest run shows it."""
    run()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def throughputs(repeats: int) -> dict[str, float]:
    """Nanoseconds per exp and per FMA on one core (vectorised, L1-resident)."""
    size, reps = 256, 20000
    x = -np.random.default_rng(0).random(size).astype(np.float32) * 20
    out = np.zeros(size, np.float32)
    acc = np.ones(64, np.float32)
    fma_s = _best_seconds(lambda: _fma_loop(acc, reps * 4), repeats) / (64 * reps * 4)
    exp_s = _best_seconds(lambda: _exp_loop(x, out, reps), repeats) / (size * reps) - fma_s
    return {"exp_ns": exp_s * 1e9, "fma_ns": fma_s * 1e9}


def stage_inputs(batch: int, length: int, channels: int) -> dict[str, np.ndarray]:
    """Host arrays in the kernels' layout, in MedMamba's ranges (dt = softplus of ~-3)."""
    rng = np.random.default_rng(0)
    dim = channels // DIRECTIONS
    f32 = np.float32
    return {
        "u": rng.standard_normal((batch, 2, length, dim)).astype(f32),
        "dt": rng.uniform(0.01, 0.1, (batch, DIRECTIONS, length, dim)).astype(f32),
        "A": -np.exp(rng.uniform(0.0, 2.8, (DIRECTIONS, N_STATE, dim))).astype(f32),
        "B": rng.standard_normal((batch, DIRECTIONS, length, N_STATE)).astype(f32),
        "C": rng.standard_normal((batch, DIRECTIONS, length, N_STATE)).astype(f32),
    }


def bench_stage(stage: int, batch: int, repeats: int, speed: dict) -> dict:
    length, channels = STAGES[stage]
    x = stage_inputs(batch, length, channels)
    chunk, tile = cpu_scan.DEFAULT_CHUNK, cpu_scan.DEFAULT_TILE
    dim, n_tiles = x["dt"].shape[-1], -(-x["dt"].shape[-1] // tile)
    # Outputs allocated once, as XLA's buffer pool reuses its buffers from call to call.
    y = np.empty_like(x["dt"])
    hs = np.empty((batch, DIRECTIONS, -(-length // chunk), N_STATE, dim), np.float32)
    grads = [np.empty_like(x["dt"]), np.empty_like(x["dt"]), np.empty((batch, DIRECTIONS, N_STATE, dim), np.float32),
             *(np.empty((batch, DIRECTIONS, n_tiles, length, N_STATE), np.float32) for _ in range(2))]  # fmt: skip
    scan_inputs = (x["u"], x["dt"], x["A"], x["B"], x["C"])
    forward_kernel(*scan_inputs, 2, chunk, tile, y, hs, True)
    forward = lambda: forward_kernel(*scan_inputs, 2, chunk, tile, y, hs, False)  # noqa: E731
    backward = lambda: backward_kernel(*scan_inputs, hs, y, 2, chunk, tile, *grads)  # noqa: E731
    times = {"forward": [], "backward": []}
    for _ in range(repeats):  # alternate, so a burst of load on the shared machine hits both
        times["forward"].append(median_seconds(forward, 1))
        times["backward"].append(median_seconds(backward, 1))
    elements = batch * channels * length * N_STATE
    cores = numba.get_num_threads()
    row = {"stage": stage, "L": length, "KD": channels, "batch": batch, "state_elements": elements}
    for name, (exps, fmas) in OPS.items():
        seconds = float(np.median(times[name]))
        floor = elements * (exps * speed["exp_ns"] + fmas * speed["fma_ns"]) * 1e-9 / cores
        row[f"{name}_s"] = round(seconds, 5)
        row[f"{name}_ns_per_element_per_core"] = round(seconds * cores / elements * 1e9, 3)
        row[f"{name}_floor_s"] = round(floor, 5)
        row[f"{name}_over_floor"] = round(seconds / floor, 2)
    return row


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--stages", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=None, help="write the JSON here")
    args = ap.parse_args(argv)
    speed = throughputs(args.repeats)
    meta = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "numba_threads": numba.get_num_threads(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        **{k: round(v, 4) for k, v in speed.items()},
    }
    print(json.dumps(meta), flush=True)
    rows = []
    for batch in args.batch:
        for stage in args.stages:
            record(bench_stage(stage, batch, args.repeats, speed), rows, meta, args.out)


if __name__ == "__main__":
    main()
