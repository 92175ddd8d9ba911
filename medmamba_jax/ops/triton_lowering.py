"""The Pallas kernels as the GPU compiler will see them, produced on any host.

``jax.export`` can lower a program for a CUDA target without a GPU: every
``pallas_call`` then goes through Pallas' Triton lowering and becomes a Triton
custom call. That checks, on a CPU-only machine, that each primitive the kernels
use has a Triton lowering (interpret mode accepts far more), and it yields the
Triton IR that ``benchmarks/kernel_stats.py`` compiles offline for each GPU
architecture. Nothing here compiles to PTX or runs a kernel.
"""

from __future__ import annotations

import contextlib
import re
from typing import Callable, NamedTuple

import jax

TRITON_CALL = "__gpu$xla.gpu.triton"


class TritonKernel(NamedTuple):
    """One Triton launch of a lowered program."""

    name: str
    num_warps: int
    grid: tuple[int, int, int]
    ir: str  # Triton IR (the `tt` dialect) as MLIR text; '' unless asked for


@contextlib.contextmanager
def _capture_triton_ir(sink: list[str]):
    """Records the text of every Triton module Pallas builds while active. This hooks a
    private jax function: a jax upgrade may need it updated (the tests would say so)."""
    from jax._src.pallas.triton import pallas_call_registration as registration

    lower = registration.lowering.lower_jaxpr_to_triton_module

    def recording(*args, **kwargs):
        result = lower(*args, **kwargs)
        sink.append(result.module.operation.get_asm(enable_debug_info=False))
        return result

    registration.lowering.lower_jaxpr_to_triton_module = recording
    try:
        yield
    finally:
        registration.lowering.lower_jaxpr_to_triton_module = lower


def _launches(module: str) -> list[tuple[str, int, tuple[int, int, int]]]:
    """(name, num_warps, grid) of every Triton custom call in a StableHLO module's text."""
    found = []
    for line in module.splitlines():
        if TRITON_CALL not in line:
            continue
        field = lambda pattern: re.search(pattern, line).group(1)  # noqa: E731
        grid = tuple(int(field(rf"grid_{axis} = (\d+)")) for axis in "xyz")
        found.append((field(r'name = "(\w+)"'), int(field(r"num_warps = (\d+)")), grid))
    return found


def lower_to_triton(fn: Callable, *args, with_ir: bool = False) -> list[TritonKernel]:
    """The Triton launches of ``jax.jit(fn)(*args)`` lowered for CUDA, in program order.

    Works on any host. Raises what the Triton lowering raises for a primitive it cannot
    lower (e.g. NotImplementedError). Pallas kernels must be in compiled (not
    interpret) mode while this runs; ``pallas_scan`` is switched for the call.
    """
    from jax import export

    from medmamba_jax.ops import pallas_scan

    modules: list[str] = []
    saved, pallas_scan.INTERPRET = pallas_scan.INTERPRET, False
    try:
        with _capture_triton_ir(modules) if with_ir else contextlib.nullcontext():
            skip_check = export.DisabledSafetyCheck.custom_call(TRITON_CALL)
            exported = export.export(jax.jit(fn), platforms=["cuda"], disabled_checks=[skip_check])(*args)
    finally:
        pallas_scan.INTERPRET = saved
    ir_by_name = {re.match(r"module @(\w+)", text).group(1): text for text in modules}
    return [TritonKernel(name, warps, grid, ir_by_name.get(name, "")) for name, warps, grid in _launches(exported.mlir_module())]
