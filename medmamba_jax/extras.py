"""Optional dependencies: importing one that is missing gives a one-line error naming what to install.

A plain ``pip install medmamba-jax`` brings what the model, training on MedMNIST files and
the analysis tools need. The rest comes with an extra (see pyproject.toml)::

    torch    reading and writing upstream .pth files (convert, from_torch)
    folders  image-folder datasets (tensorflow-datasets, tensorflow-cpu)
    dicom    DICOM files in predict and explain (pydicom)
    export   ONNX export (onnx, onnx-ir, onnxruntime; jax2onnx with --no-deps, as below)

The ``medmnist`` package, whose table of datasets (class names, tasks, download addresses)
names MedMNIST's files, is no extra: its own requirements bring torchvision and a CUDA build
of torch, which it needs only for its PyTorch ``Dataset`` classes, and pip cannot install an
extra without its dependencies. It is installed with ``--no-deps`` instead, as is ``jax2onnx``,
which declares an older orbax-checkpoint than ours and libraries only its other plugins use.
"""

from __future__ import annotations

import contextlib
import importlib
import io
from types import ModuleType

MEDMNIST_INSTALL = 'pip install --no-deps "medmnist>=3.0.2"'
JAX2ONNX_INSTALL = 'pip install "medmamba-jax[export]" && pip install --no-deps "jax2onnx>=0.17.1"'


class MissingExtra(ImportError):
    """An optional dependency is not installed; ``str(err)`` is one line saying how to install it."""


def install_command(extra: str) -> str:
    """The pip command that installs the optional dependencies of ``extra``."""
    return f'pip install "medmamba-jax[{extra}]"'


def require(module: str, purpose: str, install: str) -> ModuleType:
    """``import module``, or MissingExtra: '<purpose> needs <module>, which is not installed: <install>'."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        if err.name is not None and err.name.split(".")[0] != module.split(".")[0]:
            raise  # the module is there but broken (one of its own imports failed): show that
        raise MissingExtra(f"{purpose} needs {module}, which is not installed: {install}") from None


def medmnist() -> ModuleType:
    """The ``medmnist`` package, for its dataset table ``INFO``.

    Without torch, importing it prints a request to install its requirements (its PyTorch
    ``Dataset`` classes cannot load); we read the files ourselves and silence that.
    """
    with contextlib.redirect_stdout(io.StringIO()):
        return require("medmnist", "MedMNIST's dataset table", MEDMNIST_INSTALL)
