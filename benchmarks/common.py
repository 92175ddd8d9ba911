"""Timing and result-recording helpers shared by the benchmark scripts (no JAX import here:
bench_model.py sets XLA flags in child processes before JAX is imported)."""

from __future__ import annotations

import json
import statistics
import subprocess
import time
from typing import Callable


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``run()`` over ``repeats`` calls, after one warm-up call.
    ``run`` must block until its work is done (e.g. wrap it in jax.block_until_ready)."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def report(results: dict, out: str | None) -> None:
    """Prints a whole benchmark's ``results`` as indented JSON, and writes them to ``out`` too if given."""
    text = json.dumps(results, indent=2)
    print(text)
    if out:
        with open(out, "w") as f:
            f.write(text + "\n")


def record(row: dict, rows: list, meta: dict, out: str | None) -> None:
    """Appends a result row, prints it as a JSON line, and rewrites ``out`` (if given) with
    everything so far, so a crash or timeout keeps the rows already measured."""
    rows.append(row)
    print(json.dumps(row), flush=True)
    if out:
        with open(out, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


def run_json_child(cmd: list[str], **kwargs) -> dict:
    """Runs a benchmark child process; returns the JSON object on its last stdout line, or
    {"error": its last stderr line} if it failed. kwargs go to subprocess.run."""
    done = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if done.returncode:
        return {"error": (done.stderr.strip().splitlines() or ["exit status %d" % done.returncode])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])
