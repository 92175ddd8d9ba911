"""The ``medmamba`` command (also ``python -m medmamba_jax``): one subcommand per tool.

    medmamba train --config=medmnist --workdir=runs/pathmnist
    medmamba predict --checkpoint converted/ scan.png
    medmamba SUBCOMMAND --help

Each subcommand runs the tool module's ``main`` with the remaining arguments, exactly as
``python -m medmamba_jax.<tool>`` does; a module is imported only when its subcommand runs,
so ``medmamba --help`` and ``--version`` start fast.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Sequence

from medmamba_jax import __version__

PROG = "medmamba"
# subcommand: (module whose main(argv) runs it, one line of help)
TOOLS = {
    "train": ("medmamba_jax.cli.train", "train a model: --config=RECIPE (e.g. medmnist) or a config file, --workdir=DIR"),
    "evaluate": ("medmamba_jax.cli.evaluate", "metrics, confusion matrix and ROC of a trained workdir on a split"),
    "predict": ("medmamba_jax.cli.predict", "classify image files (PNG, JPEG, DICOM)"),
    "explain": ("medmamba_jax.cli.explain", "Grad-CAM overlays for image files, or a t-SNE map of a split"),
    "robustness": ("medmamba_jax.cli.robustness", "accuracy under noise, blur and other corruptions"),
    "flops": ("medmamba_jax.cli.flops", "parameters and FLOPs of a model variant"),
    "curves": ("medmamba_jax.cli.curves", "training curves of one or more workdirs"),
    "convert": ("medmamba_jax.cli.convert", "an upstream PyTorch .pth checkpoint -> a model directory"),
    "export": ("medmamba_jax.cli.export", "a trained model -> one jax.export or ONNX file that runs without medmamba-jax"),
    "reproduce": ("medmamba_jax.cli.reproduce", "reproduce the paper's results"),
}


def available() -> dict[str, tuple[str, str]]:
    """The subcommands whose module is part of this installation."""
    return {name: entry for name, entry in TOOLS.items() if importlib.util.find_spec(entry[0]) is not None}


def version() -> str:
    return __version__


def usage(tools: dict[str, tuple[str, str]]) -> str:
    width = max(map(len, tools))
    lines = [f"usage: {PROG} [--version] SUBCOMMAND [ARGS...]", "",
             "MedMamba in JAX: train, evaluate, explain and convert models, one subcommand per tool.", "",
             "subcommands:"]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in tools.items()]
    lines += ["", f"`{PROG} SUBCOMMAND --help` describes a subcommand's arguments."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs ``medmamba ARGV`` (without the program name); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    tools = available()
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage(tools))
        return 0 if argv else 1
    if argv[0] in ("-V", "--version"):
        print(f"medmamba-jax {version()}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in tools:
        print(f"error: unknown subcommand {name!r}; one of: {', '.join(tools)}", file=sys.stderr)
        return 1
    module = importlib.import_module(tools[name][0])
    if name == "train":  # absl parses its flags and exits the process itself
        return module.main(rest, prog=f"{PROG} train")
    from medmamba_jax.cli import common as cli

    return cli.run(module.main, rest)
