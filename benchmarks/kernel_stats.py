"""Static resource use of the Pallas scan kernels per GPU architecture, with no GPU.

For each scan config and MedMamba-T stage shape, the cross scan's forward and
adjoint kernels are lowered to Triton IR (``medmamba_jax.ops.triton_lowering``),
compiled offline with the ``triton`` package for each architecture, and measured
from the compiler's own reports: registers and spills (``ptxas -v``), the resulting
occupancy (programs resident per SM, and how many waves a batch needs), the SASS
instruction mix (``nvdisasm``), and the size of each loop body in the SASS: the hot
loop's instructions per scan step say how much issue work a step costs.

These are compile-time facts, not timings. They come from the ``triton`` package's
own pass pipeline, which is close to but not the same as the one XLA runs inside
jax's CUDA plugin, so registers can differ by a few; check against a GPU before
relying on a small difference.

Needs ``pip install triton`` (a developer tool, not a project requirement; it bundles
ptxas and nvdisasm). Usage:
    PYTHONPATH=. python benchmarks/kernel_stats.py --pallas "" "seg=3,ckpt=3" --out stats.json
"""

from __future__ import annotations

import argparse
import collections
import math
import os
import re
import subprocess
import sys
import tempfile
from typing import NamedTuple

from typing import Iterator

import jax
import jax.numpy as jnp

from benchmarks.bench_scan import STAGES, fwd_bwd, make_inputs, scan_fn
from benchmarks.common import record
from medmamba_jax.ops.pallas_scan import ScanConfig
from medmamba_jax.ops.triton_lowering import TritonKernel, lower_to_triton

# Compute capability 8.x and 9.x: 64K registers per SM in 4 partitions, one per scheduler;
# a warp's registers (allocated in units of 256) must fit within one partition.
REGISTER_PARTITIONS, REGISTERS_PER_PARTITION = 4, 16384
SHARED_RESERVED_PER_BLOCK = 1024
# LDSM/STSM (ldmatrix/stmatrix) also move register layouts through shared memory.
SASS_CLASSES = ("MUFU", "SHFL", "BAR", "LDG", "STG", "LDS", "STS", "LDSM", "STSM", "FFMA", "FMUL", "FADD")


class Arch(NamedTuple):
    """Per-SM limits (CUDA programming guide, compute capability table) and a typical card."""

    capability: int
    card: str
    sms: int
    max_warps: int
    max_blocks: int
    shared_bytes: int  # per SM, the most a kernel can be given


ARCHS = {
    "sm_80": Arch(80, "A100", 108, 64, 32, 164 << 10),
    "sm_86": Arch(86, "RTX 3090", 82, 48, 16, 100 << 10),
    "sm_89": Arch(89, "RTX 4090", 128, 48, 24, 100 << 10),
    "sm_90": Arch(90, "H100 SXM", 132, 64, 32, 228 << 10),
}


def _toolchain() -> tuple:
    """(the triton module, its GPUTarget class, the folder of its bundled ptxas and nvdisasm)."""
    try:
        import triton
        from triton.backends.compiler import GPUTarget
    except ImportError:
        sys.exit("kernel_stats needs the triton package: pip install triton")
    bin_dir = os.path.join(os.path.dirname(triton.backends.nvidia.__file__), "bin")
    return triton, GPUTarget, bin_dir


def blocks_per_sm(arch: Arch, registers: int, warps: int, shared: int = 0) -> int:
    """Resident programs per SM, as CUDA's occupancy calculator counts them: limited by
    registers (per partition), shared memory (bytes per program) and the SM's warp and
    block slots."""
    per_warp = math.ceil(registers * 32 / 256) * 256
    by_registers = REGISTER_PARTITIONS * (REGISTERS_PER_PARTITION // per_warp) // warps
    by_shared = arch.shared_bytes // (shared + SHARED_RESERVED_PER_BLOCK)
    return min(by_registers, by_shared, arch.max_warps // warps, arch.max_blocks)


def _run(*cmd: str) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return done.stdout + done.stderr


def ptxas_report(bin_dir: str, ptx: str, arch: Arch) -> dict:
    """Registers and spilled bytes (stores; loads re-read the same slots) per thread."""
    suffix = "a" if arch.capability == 90 else ""  # Triton emits sm_90a PTX for Hopper
    report = _run(f"{bin_dir}/ptxas", "-v", f"-arch=sm_{arch.capability}{suffix}", ptx, "-o", os.devnull)
    return {
        "registers": int(re.search(r"Used (\d+) registers", report).group(1)),
        "spill_bytes": int(re.search(r"(\d+) bytes spill stores", report).group(1)),
    }


_SASS_INSTRUCTION = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9]+)([^;]*)")
_SASS_LABEL = re.compile(r"^\s*(\.L_x_\d+):")
_BRANCH_TARGET = re.compile(r"`?\((\.L_x_\d+)\)")


def parse_sass(sass: str) -> tuple[list[tuple[str, str]], dict[str, int]]:
    """(opcode, operands) per instruction, and each label's instruction index."""
    instructions, labels = [], {}
    for line in sass.splitlines():
        label = _SASS_LABEL.match(line)
        if label:
            labels[label.group(1)] = len(instructions)
        found = _SASS_INSTRUCTION.search(line)
        if found:
            instructions.append((found.group(1), found.group(2)))
    return instructions, labels


def loop_bodies(sass: str) -> list[dict]:
    """Every loop (a branch back to an earlier label), in code order, with its instruction
    count excluding the loops nested in it and its opcode mix. Static counts: a body runs
    once per iteration; one-instruction self-branches (the trap after exit) are left out."""
    instructions, labels = parse_sass(sass)
    spans = []
    for end, (opcode, operands) in enumerate(instructions):
        target = _BRANCH_TARGET.search(operands) if opcode == "BRA" else None
        if target and labels.get(target.group(1), end + 1) < end:
            spans.append((labels[target.group(1)], end))
    loops = []
    for start, end in sorted(spans):
        inside = set(range(start, end + 1))
        for other in spans:
            if other != (start, end) and start <= other[0] and other[1] <= end:
                inside -= set(range(other[0], other[1] + 1))
        mix = collections.Counter(instructions[i][0] for i in inside)
        loops.append({"instructions": len(inside), "sass": {name: mix[name] for name in SASS_CLASSES}})
    return loops


def sass_mix(bin_dir: str, cubin: str) -> dict:
    """Static counts (instructions in the code, not executed) of some SASS opcode classes,
    for the whole kernel and per loop body."""
    sass = _run(f"{bin_dir}/nvdisasm", "-c", cubin)
    opcodes = collections.Counter(opcode for opcode, _ in parse_sass(sass)[0])
    return {
        "sass_instructions": sum(opcodes.values()),
        "sass": {name: opcodes[name] for name in SASS_CLASSES},
        "loops": loop_bodies(sass),
    }


def hot_loop_per_step(row: dict, seg: int) -> float:
    """Warp instructions a program issues per scan step in its largest loop body (the
    unrolled segment of ``seg`` steps; the adjoint's recompute loop is not included)."""
    return max(loop["instructions"] for loop in row["loops"]) * row["warps"] / seg


def compile_kernel(kernel: TritonKernel, arch: Arch, workdir: str) -> dict:
    """Registers, spills, shared memory and the SASS mix of one kernel on one architecture."""
    triton, GPUTarget, bin_dir = _toolchain()
    ttir = os.path.join(workdir, f"{kernel.name}.ttir")
    with open(ttir, "w") as f:
        f.write(kernel.ir)
    target = GPUTarget("cuda", arch.capability, 32)
    compiled = triton.compile(ttir, target=target, options={"num_warps": kernel.num_warps, "num_stages": 1})
    base = os.path.join(workdir, f"{kernel.name}_sm{arch.capability}")
    with open(base + ".ptx", "w") as f:
        f.write(compiled.asm["ptx"])
    with open(base + ".cubin", "wb") as f:
        f.write(compiled.asm["cubin"])
    stats = ptxas_report(bin_dir, base + ".ptx", arch)  # same ptxas and flags as Triton's cubin
    stats["shared_bytes"] = int(compiled.metadata.shared)
    return {**stats, **sass_mix(bin_dir, base + ".cubin")}


def cross_scan_kernels(config: ScanConfig, stage: int) -> list[TritonKernel]:
    """The forward and adjoint kernels of the cross scan's gradient program at batch 1,
    at one of bench_scan's MedMamba-T stage shapes (u2 (1, 2, L, D), delta (1, 4, L, D))."""
    length, channels = STAGES[stage]
    *inputs, dy = make_inputs("cross", 1, length, channels, jnp.float32)
    return lower_to_triton(fwd_bwd(scan_fn("cross", "pallas", config, interpret=False)), *inputs, dy, with_ir=True)


def stage_rows(config: ScanConfig, stage: int, archs: list[str], batch: int, workdir: str) -> Iterator[dict]:
    """One result row per (kernel, architecture) at one stage shape."""
    length, channels = STAGES[stage]
    for kernel in cross_scan_kernels(config, stage):
        programs = batch * kernel.grid[1] * kernel.grid[2]  # grid_x is the batch (1 here)
        for name in archs:
            arch = ARCHS[name]
            row = {"config": config.describe(), "stage": stage, "L": length, "KD": channels, "kernel": kernel.name}
            row.update(arch=name, card=arch.card, warps=kernel.num_warps)
            try:
                row.update(compile_kernel(kernel, arch, workdir))
            except Exception as err:  # report and go on: one failing compile must not hide the rest
                row["error"] = repr(err)[:500]
                yield row
                continue
            resident = blocks_per_sm(arch, row["registers"], kernel.num_warps, row["shared_bytes"])
            row.update(programs_per_sm=resident, warps_per_sm=resident * kernel.num_warps)
            row["waves"] = programs / (resident * arch.sms)
            if row["loops"]:
                row["hot_loop_per_step"] = hot_loop_per_step(row, min(config.seg, length))
            yield row


def print_table(rows: list[dict]) -> None:
    """One markdown line per (config, stage, kernel, arch)."""
    print("| config | L | kernel | arch | warps | registers | spill B | programs/SM | waves | hot loop/step "
          "| MUFU | SHFL | BAR |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        config = ",".join(f"{k}={v}" for k, v in r["config"].items() if v is not None)
        head = f"| {config} | {r['L']} | {r['kernel'].split('_')[0]} | {r['arch']} | {r['warps']} |"
        if "error" in r:
            print(head, r["error"][:80], "|" + " |" * 7)
            continue
        mix = r["sass"]
        print(
            head, f"{r['registers']} | {r['spill_bytes']} | {r['programs_per_sm']} | {r['waves']:.2f} |",
            f"{r.get('hot_loop_per_step', float('nan')):.0f} |",
            f"{mix['MUFU']} | {mix['SHFL']} | {mix['BAR']} |",
        )


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pallas", nargs="*", default=[""], help="scan configs, e.g. seg=3,ckpt=3 ('' = default)")
    ap.add_argument("--stages", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    ap.add_argument("--batch", type=int, default=128, help="batch for the wave count")
    ap.add_argument("--out", default=None, help="write the JSON list here")
    args = ap.parse_args(argv)
    triton = _toolchain()[0]
    meta = {"jax": jax.__version__, "triton": triton.__version__, "batch": args.batch}
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as workdir:
        for text in args.pallas:
            for stage in args.stages:
                for row in stage_rows(ScanConfig.parse(text), stage, args.archs, args.batch, workdir):
                    record(row, rows, meta, args.out)
    print_table(rows)


if __name__ == "__main__":
    main()
