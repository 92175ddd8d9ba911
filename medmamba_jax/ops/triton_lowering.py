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
def _capture_triton_ir(sink: list[tuple[str, str]]):
    """Records (name, MLIR text) of every Triton module Pallas builds while active. This
    hooks a private jax function: a jax upgrade may need it updated (the tests would say so)."""
    from jax._src.lib.mlir import ir
    from jax._src.pallas.triton import pallas_call_registration as registration

    lower = registration.lowering.lower_jaxpr_to_triton_module

    def recording(*args, **kwargs):
        result = lower(*args, **kwargs)
        module = result.module.operation
        name = ir.StringAttr(module.attributes["sym_name"]).value
        sink.append((name, module.get_asm(enable_debug_info=False)))
        return result

    registration.lowering.lower_jaxpr_to_triton_module = recording
    try:
        yield
    finally:
        registration.lowering.lower_jaxpr_to_triton_module = lower


def _attribute(line: str, pattern: str) -> str:
    found = re.search(pattern, line)
    if found is None:
        raise RuntimeError(f"no {pattern!r} in a Triton custom call; has jax's lowering format changed?")
    return found.group(1)


def _launches(module: str) -> list[tuple[str, int, tuple[int, int, int]]]:
    """(name, num_warps, grid) of every Triton custom call in a StableHLO module's text."""
    found = []
    for line in module.splitlines():
        if TRITON_CALL in line:
            grid = tuple(int(_attribute(line, rf"grid_{axis} = (\d+)")) for axis in "xyz")
            found.append((_attribute(line, r'name = "(\w+)"'), int(_attribute(line, r"num_warps = (\d+)")), grid))
    return found


def lower_to_triton(fn: Callable, *args, with_ir: bool = False) -> list[TritonKernel]:
    """The Triton launches of ``jax.jit(fn)(*args)`` lowered for CUDA, in program order.

    Works on any host. Raises what the Triton lowering raises for a primitive it cannot
    lower (e.g. NotImplementedError). ``fn``'s Pallas calls must be compiled, not
    interpreted: on a host without a GPU, pass them ``interpret=False``. ``fn`` is traced
    afresh (but a jitted function inside ``fn`` keeps jit's cache).
    """
    from jax import export

    def fresh(*a):  # a new function object: jit must trace again, now
        return fn(*a)

    modules: list[tuple[str, str]] = []
    with _capture_triton_ir(modules) if with_ir else contextlib.nullcontext():
        skip_check = export.DisabledSafetyCheck.custom_call(TRITON_CALL)
        exported = export.export(jax.jit(fresh), platforms=["cuda"], disabled_checks=[skip_check])(*args)
    launches = _launches(exported.mlir_module())
    if not with_ir:
        return [TritonKernel(name, warps, grid, "") for name, warps, grid in launches]
    # Kernels of one name can differ (e.g. one per stage shape), so IR is paired by order.
    if [name for name, _ in modules] != [name for name, _, _ in launches]:
        raise RuntimeError(
            f"captured Triton modules {[n for n, _ in modules]} do not match the program's "
            f"launches {[n for n, _, _ in launches]}"
        )
    return [TritonKernel(*launch, text) for launch, (_, text) in zip(launches, modules)]
