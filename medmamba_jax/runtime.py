"""Process-wide XLA settings that the command-line entry points apply before JAX starts.

XLA's CPU backend schedules a program for concurrency by default, which keeps many
activations of a training step's backward pass alive at once: MedMamba-T's train step at
batch 8, 224x224, needs 2.7 GiB of XLA temporaries that way and 1.9 GiB with the
memory-minimising schedule, at about the same speed on a 2-core machine (see
benchmarks/RESULTS.md). The flag only affects the CPU backend.
"""

from __future__ import annotations

import os

LOW_MEMORY_CPU_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"


def prefer_low_memory_cpu_schedule() -> None:
    """Adds the memory-minimising CPU scheduler to XLA_FLAGS unless the user chose otherwise.

    Must run before JAX initialises its backends (i.e. before the first computation).
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_enable_concurrency_optimized_scheduler" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {LOW_MEMORY_CPU_FLAG}".strip()
