"""A trained model as one file that runs without medmamba-jax: jax.export's StableHLO or ONNX.

``export(loaded, "onnx", out)`` writes model.onnx and model.onnx.json into ``out``. The file takes
uint8 images (batch, H, W, C) as training stored them and returns probabilities (batch, K)
float32, softmax or per-label sigmoid; the resize and normalisation are inside and the batch is
symbolic. The file is run on a few random images and compared with ``loaded.scores`` before it
is put in place. ``medmamba export`` (cli/export.py) is the command over this module.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
from types import ModuleType
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from medmamba_jax import __version__, extras
from medmamba_jax.analysis.errors import ToolError
from medmamba_jax.data.transforms import EvalTransform
from medmamba_jax.files import atomic_path, write_json
from medmamba_jax.inference.loaded_model import Loaded
from medmamba_jax.models.ss2d import SS2D

INPUT_NAME, OUTPUT_NAME = "images", "probabilities"
BATCH = "batch"  # the symbolic batch dimension's name in both formats
CHECK_IMAGES = 2
TOLERANCE = 1e-4  # largest accepted difference from medmamba predict's probabilities
# jax.export's default is the exporting machine's platform only; one file serves both.
JAX_PLATFORMS = ("cpu", "cuda")
ONNX_OPSET = 23


@dataclasses.dataclass(frozen=True)
class Format:
    """One export format: its file name, the selective scan it is traced with, and how to call it."""

    file: str
    # Both are XLA scans (Pallas calls are in neither jax.export's stable set nor ONNX). ONNX
    # takes the sequential one, a Loop: lax.associative_scan interleaves its partial results
    # with an interior-padded lax.pad, which ONNX's Pad cannot express.
    scan_impl: str
    usage: tuple[str, ...]


FORMATS = {
    "jax": Format("model.jaxexport", "associative", (
        "import jax",
        "run = jax.export.deserialize(open('model.jaxexport', 'rb').read()).call",
        "probabilities = run(images)",
    )),
    "onnx": Format("model.onnx", "reference", (
        "import onnxruntime",
        "session = onnxruntime.InferenceSession('model.onnx')",
        f"probabilities = session.run(None, {{'{INPUT_NAME}': images}})[0]",
    )),
}


def resize_matrix(source: int, target: int) -> np.ndarray:
    """(target, source) float32: jax.image.resize's antialiased linear resize of one axis, as
    the matrix that multiplies it (the resize is linear and separable)."""
    return np.asarray(jax.image.resize(jnp.eye(source, dtype=jnp.float32), (target, source), "linear", antialias=True))


def exportable_transform(transform: EvalTransform, height: int, width: int) -> Callable:
    """``transform`` for (b, height, width, C) uint8 images, with a linear
    resize done as two matrix products: jax2onnx has no antialiased resize. The resize is
    linear, so resizing the 0-255 values before ``transform`` scales them is the same input
    up to rounding."""
    side = transform.image_size
    if transform.resize != "linear" or (height, width) == (side, side):
        return transform
    rows, cols = resize_matrix(height, side), resize_matrix(width, side)

    def resized_then_transformed(images):
        x = jnp.einsum("sh,bhwc,tw->bstc", rows, images.astype(jnp.float32), cols, precision=jax.lax.Precision.HIGHEST)
        return transform(x)

    return resized_then_transformed


def probability_function(loaded: Loaded, scan_impl: str) -> Callable:
    """uint8 images (b, stored_size, stored_size, stored_channels) -> probabilities (b, K)
    float32 of ``loaded``'s model run with ``scan_impl``, its weights held as constants.
    ``loaded.model`` itself is left as it was."""
    graphdef, state = nnx.split(loaded.model)
    transform = exportable_transform(loaded.transform, loaded.stored_size, loaded.stored_size)

    def probabilities(images):
        model = nnx.merge(graphdef, state)  # a copy per trace, so the scan is chosen here only
        for _, node in nnx.iter_graph(model):
            if isinstance(node, SS2D):
                node.scan_impl = scan_impl
        logits = model(transform(images))
        return jax.nn.sigmoid(logits) if loaded.multi_label else jax.nn.softmax(logits, axis=-1)

    return probabilities


def input_shape(loaded: Loaded) -> tuple[int, int, int]:
    """(H, W, C) of one image the exported file takes: as training stored them."""
    return loaded.stored_size, loaded.stored_size, loaded.stored_channels


def to_jax(fn: Callable, shape: tuple[int, ...]) -> bytes:
    """``fn`` on uint8 (batch, *shape) as jax.export's serialized form, batch symbolic."""
    batch, = jax.export.symbolic_shape(BATCH)
    exported = jax.export.export(jax.jit(fn), platforms=JAX_PLATFORMS)(jax.ShapeDtypeStruct((batch, *shape), jnp.uint8))
    return bytes(exported.serialize())


def onnx_tools() -> tuple[ModuleType, ModuleType]:
    """(jax2onnx, onnxruntime), or MissingExtra saying how to install them."""
    with quiet_converter():  # importing jax2onnx loads its plugins
        converter = extras.require("jax2onnx", "ONNX export", extras.JAX2ONNX_INSTALL)
    return converter, extras.require("onnxruntime", "ONNX export", extras.install_command("export"))


@contextlib.contextmanager
def quiet_converter() -> Iterator[None]:
    """jax2onnx logs a traceback per plugin it skips for a library we do not use (equinox,
    dm-pix), and onnx-ir a warning per shape it leaves untyped: errors only while converting."""
    loggers = [logging.getLogger(name) for name in ("jax2onnx", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def to_onnx(fn: Callable, shape: tuple[int, ...]) -> bytes:
    """``fn`` on uint8 (batch, *shape) as an ONNX model, batch symbolic; input and output named
    INPUT_NAME and OUTPUT_NAME."""
    jax2onnx, _ = onnx_tools()
    with quiet_converter():
        model = jax2onnx.to_onnx(fn, [jax.ShapeDtypeStruct((BATCH, *shape), jnp.uint8)], model_name="medmamba",
                                 opset=ONNX_OPSET, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME])
    # jax2onnx annotates some intermediate shapes in the wrong layout; ONNX Runtime warns about
    # each and infers them itself. The annotations are optional, so none are shipped.
    del model.graph.value_info[:]
    return model.SerializeToString()


def run_jax(path: str, images: np.ndarray) -> np.ndarray:
    """Probabilities of ``images`` from the jax.export file at ``path``."""
    with open(path, "rb") as f:
        return np.asarray(jax.export.deserialize(bytearray(f.read())).call(images))


def run_onnx(path: str, images: np.ndarray) -> np.ndarray:
    """Probabilities of ``images`` from the ONNX file at ``path``, on ONNX Runtime's CPU."""
    _, ort = onnx_tools()
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: images})[0]


CONVERTERS = {"jax": (to_jax, run_jax), "onnx": (to_onnx, run_onnx)}


def largest_difference(loaded: Loaded, run: Callable[[str, np.ndarray], np.ndarray], path: str) -> float:
    """Largest |difference| between the file's probabilities and ``loaded.scores`` (what
    predict prints) on CHECK_IMAGES random images."""
    images = np.random.default_rng(0).integers(0, 256, (CHECK_IMAGES, *input_shape(loaded)), dtype=np.uint8)
    return float(np.abs(run(path, images) - loaded.scores(images, CHECK_IMAGES)).max())


def manifest(loaded: Loaded, name: str, size: int, difference: float, source: dict) -> dict:
    """The JSON beside the file: what the exported file takes and returns, and how to call it."""
    chosen = FORMATS[name]
    shape = [BATCH, *input_shape(loaded)]
    return {
        "format": name, "file": chosen.file, "bytes": size,
        "input": {"name": INPUT_NAME, "shape": shape, "dtype": "uint8",
                  "is": "images as training stored them; resized to the model's side and normalised inside"},
        "output": {"name": OUTPUT_NAME, "shape": [BATCH, len(loaded.label_names)], "dtype": "float32",
                   "is": "per-label sigmoid" if loaded.multi_label else "softmax over the classes"},
        "label_names": loaded.label_names, "task": loaded.task,
        "inside": {"image_size": loaded.image_size, "resize": loaded.transform.resize, "in_chans": loaded.in_chans,
                   "scan_impl": chosen.scan_impl},
        "usage": list(chosen.usage),
        "checked": {"images": CHECK_IMAGES, "largest_difference_from_predict": difference},
        "source": source,
        "exported_with": {"medmamba-jax": __version__, "jax": jax.__version__},
    }


def export(loaded: Loaded, name: str, out: str, source: dict | None = None) -> dict:
    """Writes ``loaded``'s model in format ``name`` (a key of FORMATS) and its manifest (the
    file's name plus .json) into the directory ``out``; returns the manifest. The file is
    written under a temporary name and checked against ``loaded.scores`` first: ToolError, and
    nothing replaced, when it differs by more than TOLERANCE."""
    chosen, (convert, run) = FORMATS[name], CONVERTERS[name]
    print(f"tracing with the {chosen.scan_impl} scan and writing {name} ...", file=sys.stderr, flush=True)
    data = convert(probability_function(loaded, chosen.scan_impl), input_shape(loaded))
    path = os.path.join(out, chosen.file)
    with atomic_path(path) as tmp:  # the usual permissions: a file to deploy
        with open(tmp, "wb") as f:
            f.write(data)
        print(f"checking it against medmamba predict on {CHECK_IMAGES} random images ...", file=sys.stderr, flush=True)
        difference = largest_difference(loaded, run, tmp)
        if not difference <= TOLERANCE:
            raise ToolError(f"the exported {name} model's probabilities differ from the model's by {difference:.2g} "
                            f"(more than {TOLERANCE:g}); nothing written")
    written = manifest(loaded, name, len(data), difference, source or {})
    write_json(manifest_path(path), written)
    return written


def manifest_path(path: str) -> str:
    """The JSON beside an exported file: its name plus .json (both formats fit in one directory)."""
    return path + ".json"
