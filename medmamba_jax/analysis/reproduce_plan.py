"""What ``reproduce --plan`` prints: the train.py commands, the MedMNIST files and a time estimate.

File sizes: the medmnist package's INFO gives each data set's image counts and channels but
no file sizes, so the size shown is that of the arrays a file holds (images x side² x
channels bytes, plus one byte per label), which the .npz download does not exceed.

Time: nothing is timed here. Throughputs measured in benchmarks/RESULTS.md (THROUGHPUT
below) for the standard architecture at 224 px are divided over the images a run passes
through: every epoch's training images, plus its validation images and the test split at a
third of the cost (a forward pass without the backward, which costs about twice a forward).
Compilation, checkpoints and data loading are left out.
"""

from __future__ import annotations

from typing import Any

from medmamba_jax import paper
from medmamba_jax.analysis.reproduce_tables import ABLATION_BLOCKS
from medmamba_jax.data import medmnist_source

# images/s of one train step, by (platform, model, dtype): (figure, where it was measured).
_H100 = "one H100, batch 128, benchmarks/bench_train_gpu.py, benchmarks/RESULTS.md (issue 4, 2026-11-23)"
THROUGHPUT = {
    ("cpu", "medmamba_t", "float32"): (0.33, "24.3 s per batch-8 step on the project's 2-core CPU VM, "
                                       "benchmarks/RESULTS.md (issue 2, 2026-11-23; 15.6-29.3 s in other runs)"),
    ("gpu", "medmamba_t", "float32"): (1059, _H100), ("gpu", "medmamba_t", "bfloat16"): (1277, _H100),
    ("gpu", "medmamba_s", "float32"): (803, _H100), ("gpu", "medmamba_s", "bfloat16"): (974, _H100),
    ("gpu", "medmamba_b", "float32"): (562, _H100), ("gpu", "medmamba_b", "bfloat16"): (663, _H100),
}
FORWARD_SHARE = 1 / 3  # an evaluated image's cost as a share of a trained one's


def file_bytes(flag: str, size: int) -> int:
    """Bytes of the arrays in MedMNIST's ``flag`` file at ``size``: an upper bound on its download."""
    entry = medmnist_source.info(flag)
    images = sum(entry["n_samples"].values())
    labels = len(entry["label"]) if entry["task"].startswith("multi-label") else 1
    return images * (size * size * entry["n_channels"] + labels)


def _human(seconds: float) -> str:
    for unit, length in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= length:
            return f"{seconds / length:.1f} {unit}"
    return f"{seconds:.0f} s"


def data_lines(configs: list[Any]) -> list[str]:
    """One line per distinct MedMNIST file the runs read: its size and whether it is there."""
    import os

    lines, missing, seen = [], 0, set()
    for config in configs:
        path = medmnist_source.npz_path(config.data_dir, config.dataset, int(config.size))
        if path in seen:
            continue
        seen.add(path)
        size = file_bytes(config.dataset, int(config.size))
        there = os.path.exists(path)
        missing += 0 if there else size
        lines.append(f"  {os.path.basename(path):<24} {size / 1e6:>9,.1f} MB  {'present' if there else 'to download'}")
    directory = os.path.dirname(next(iter(seen)))
    download = "set download=True (--set download=True) to fetch them" if missing else "nothing to download"
    return [f"data ({directory}; sizes are the arrays each file holds, which its .npz download does not exceed):",
            *lines, f"  to download: {missing / 1e6:,.1f} MB; {download}"]


def _rate(config) -> tuple[float, str] | None:
    """(images/s on the local devices, how it was found) for a run's config, if a figure applies."""
    import jax

    devices = jax.local_devices()
    platform = "gpu" if devices[0].platform in ("gpu", "cuda", "rocm") else devices[0].platform
    standard = config.depths is None and config.dims is None and int(config.image_size) == 224
    figure = THROUGHPUT.get((platform, config.model, config.dtype))
    if not standard or figure is None:
        return None
    rate, source = figure
    scale = len(devices) if platform == "gpu" else 1  # data parallel; the CPU figure is the whole machine's
    return rate * scale, f"{rate:g} images/s x {scale} {devices[0].device_kind} device(s): {source}"


def time_lines(runs: list[Any]) -> list[str]:
    """The estimated training time of each run and in all, or why there is none."""
    ablation_flops = _ablation_flops()
    lines, total, source = [], 0.0, ""
    for run in runs:
        config = run.config
        found = _rate(config)
        if found is None:
            return ["estimated time: no measured figure for this model, dtype, architecture and device "
                    "(benchmarks/RESULTS.md has MedMamba-T/S/B at 224 px on a CPU and an H100)"]
        rate, source = found
        split = medmnist_source.info(config.dataset)["n_samples"]
        epochs = int(config.num_epochs)
        images = split["train"] * epochs + FORWARD_SHARE * (split["val"] * epochs + split["test"])
        # Table 7's blocks differ in cost: scaled by its FLOPs against the full block's.
        cost = ablation_flops.get(config.get("block", "full"), 1.0)
        seconds = images * cost / rate
        total += seconds
        lines.append(f"  {run.name:<16} {_human(seconds):>10}  ({split['train']:,} training images x {epochs} epochs)")
    return [f"estimated time on this machine, from {source}; an eval image at {FORWARD_SHARE:.2f} of a trained one, "
            "compilation and I/O left out:", *lines, f"  total            {_human(total):>10}"]


def _ablation_flops() -> dict[str, float]:
    """Each ablation block's FLOPs relative to the full block's, from Table 7 (the same on every data set)."""
    flops = {ABLATION_BLOCKS["".join(r[k] for k in ("ssm", "conv", "split", "shuffle"))]: float(r["flops_G"])
             for r in paper.table("table7_ablation")}
    return {block: value / flops["full"] for block, value in flops.items()}


def describe(exp, workdir: str, commands: list[str]) -> str:
    """The plan of a ``reproduce.Experiment``: commands, data and time, as text."""
    configs = [run.config for run in exp.runs]
    lines = [f"reproduce {exp.table}: {len(exp.runs)} run(s) of {exp.model} with the {exp.recipe} recipe "
             f"(medmamba_jax/configs/{exp.recipe}.py), one train.py workdir each under {workdir}",
             "", "commands (reproduce runs these in order, keeps finished ones, then writes the table):",
             *(f"  {c}" for c in commands), "", *data_lines(configs), "", *time_lines(exp.runs)]
    return "\n".join(lines)
