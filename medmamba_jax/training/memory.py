"""Fitting the training batch to the device: how many micro-batches one update needs.

The compiled train step states what it needs (XLA's memory analysis: its arguments, outputs
and temporaries, per device); the device states what it has (a GPU's allocator limit less
what is in use; on a CPU, the memory the system reports available, within any cgroup limit,
shared by the local devices). With ``grad_accum_steps = 0`` (auto), the run takes the
fewest micro-batches whose step fits, compiling only the candidates a straight-line
estimate of memory against micro-batch size says may fit.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

import jax

GB = 1e9
# What a fitting step may use of what the device has: XLA's figure leaves out the runtime's
# own buffers, the input pipeline and (on a CPU) the evaluation step alongside.
USABLE_FRACTION = 0.85


@dataclasses.dataclass(frozen=True)
class Budget:
    """The bytes one device's step may use, and a phrase that says where they come from."""

    bytes: int
    source: str  # e.g. "this GPU has 22.1 GB free"


def _cgroup_free_bytes() -> float:
    """Memory left under this process's cgroup v2 limit (inf when there is none)."""
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            current = int(f.read())
    except (OSError, ValueError):
        return float("inf")
    return float("inf") if limit == "max" else float(int(limit) - current)


def _host_available_bytes() -> float:
    """MemAvailable from /proc/meminfo (memory the system can give without swapping)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def device_budget(device: jax.Device, override_gb: float = 0.0) -> Budget:
    """What one training device can give a step: ``override_gb`` if > 0, else asked of it."""
    if override_gb > 0:
        return Budget(int(override_gb * GB), f"device_memory_gb is {override_gb:g} GB")
    stats = device.memory_stats() or {}
    if "bytes_limit" in stats:
        free = stats["bytes_limit"] - stats.get("bytes_in_use", 0)
        return Budget(int(free * USABLE_FRACTION), f"this {device.platform.upper()} has {free / GB:.1f} GB free")
    free = min(_host_available_bytes(), _cgroup_free_bytes())
    shared = jax.local_device_count()
    per_device = f" shared by {shared} devices" if shared > 1 else ""
    return Budget(int(free * USABLE_FRACTION / shared), f"this machine has {free / GB:.1f} GB available{per_device}")


def step_bytes(compiled: jax.stages.Compiled) -> int | None:
    """The device memory a compiled program needs while it runs, or None if XLA does not say."""
    stats = compiled.memory_analysis()
    if stats is None:
        return None
    return int(stats.argument_size_in_bytes + stats.output_size_in_bytes - stats.alias_size_in_bytes
               + stats.temp_size_in_bytes + stats.generated_code_size_in_bytes)


def accumulation_choices(batch_size: int, n_devices: int) -> list[int]:
    """Micro-batch counts k, ascending, that split ``batch_size`` evenly over the devices."""
    return [k for k in range(1, batch_size + 1)
            if batch_size % k == 0 and (batch_size // k) % n_devices == 0]


@dataclasses.dataclass(frozen=True)
class Plan:
    """The micro-batch count a run trains with, and the line that says why (the caller keeps
    the steps it compiled)."""

    grad_accum_steps: int
    message: str


def _gb(n: float) -> str:
    return f"{n / GB:.1f} GB"


def fit_batch(batch_size: int, n_devices: int, compile_step: Callable[[int], jax.stages.Compiled],
              budget: Budget) -> Plan:
    """The fewest micro-batches of ``batch_size`` whose compiled step (``compile_step(k)``)
    fits ``budget``. Raises MemoryError, one line, when not even the smallest fits."""
    choices = accumulation_choices(batch_size, n_devices)
    seen: dict[int, int] = {}  # micro-batch size -> bytes its step needs
    too_big = None
    for k in choices:
        micro = batch_size // k
        if k != choices[-1] and not _may_fit(seen, micro, budget.bytes):
            continue  # the smallest is always compiled: an estimate never says that nothing fits
        step = compile_step(k)
        need = step_bytes(step)
        if need is None:  # no analysis on this backend: train as asked and let an OOM say so
            return Plan(k, "")
        if need <= budget.bytes:
            return Plan(k, _chosen_line(batch_size, k, need, too_big, budget))
        seen[micro], too_big = need, (micro, need)
    micro, need = too_big
    raise MemoryError(f"a micro-batch of {micro} image{'s' * (micro > 1)} per update needs {_gb(need)} and {budget.source}: "
                      "lower image_size, use a smaller model, or train on a device with more memory")


def _may_fit(seen: dict[int, int], micro: int, budget: int) -> bool:
    """Whether a straight line through the measured (micro-batch, bytes) points leaves room
    for ``micro``: with one point, the line through the origin (a lower bound); with two, the
    line through the nearest two."""
    if not seen:
        return True
    points = sorted(seen.items())[:2]
    if len(points) == 1:
        (m0, b0), = points
        return b0 * micro / m0 <= budget
    (m0, b0), (m1, b1) = points
    slope = (b1 - b0) / (m1 - m0)
    return b0 + slope * (micro - m0) <= budget


def _chosen_line(batch_size: int, k: int, need: int, too_big: tuple[int, int] | None, budget: Budget) -> str:
    if k == 1:
        return f"batch {batch_size} in one step (it needs {_gb(need)}; {budget.source})"
    why = f"a micro-batch of {too_big[0]} needs {_gb(too_big[1])}; {budget.source}" if too_big else budget.source
    return (f"batch {batch_size} = {k} micro-batches of {batch_size // k} ({why}; each needs {_gb(need)}). "
            "BatchNorm normalises each micro-batch on its own; set --config.grad_accum_steps to choose")
