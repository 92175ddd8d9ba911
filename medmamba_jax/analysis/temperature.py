"""The temperature that ``evaluate --calibrate`` saves beside a checkpoint, and the tools read back.

It lives in ``DIR/temperature.json``, DIR being the directory of the weights it was fitted
for: a workdir checkpoint's step directory (``W/checkpoints/best/STEP/``), which goes with
that checkpoint when a better one or a resumed run replaces it, or a model directory
written by ``medmamba convert``::

    {"temperature": 1.73, "fitted_on": "val", "num_images": 7180, "tta": null,
     "nll_before": 0.41, "nll_after": 0.33, "weights_sha256": "..."}

``weights_sha256`` is the checksum of those weights (``model_files.weights_digest``, what a
model directory's weights.sha256 holds): a temperature.json that does not match the weights
beside it (copied from another checkpoint, say) is an error, never silently applied.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from flax import nnx

from medmamba_jax.analysis.errors import ToolError
from medmamba_jax.model_files import weights_digest
from medmamba_jax.files import write_json

TEMPERATURE_FILE = "temperature.json"


def path(directory: str) -> str:
    return os.path.join(directory, TEMPERATURE_FILE)


def read(directory: str, model: nnx.Module) -> dict[str, Any] | None:
    """The temperature.json record saved beside ``model``'s weights in ``directory``, or None
    if there is none; ToolError for one that is malformed or fitted for other weights."""
    where = path(directory)
    if not directory or not os.path.isfile(where):
        return None
    try:
        with open(where) as f:
            record = json.load(f)
        temperature = float(record["temperature"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ToolError(f"{where} is unreadable ({type(err).__name__}: {err}); delete it, or fit it again "
                        "with evaluate --calibrate") from None
    if not (math.isfinite(temperature) and temperature > 0):
        raise ToolError(f"{where}: temperature {temperature} is not a positive number; delete it, or fit it again "
                        "with evaluate --calibrate")
    if record.get("weights_sha256") != weights_digest(model):
        raise ToolError(f"{where} was fitted for other weights than the ones beside it; delete it, or fit it again "
                        "with evaluate --calibrate")
    return {**record, "temperature": temperature}


def write(directory: str, model: nnx.Module, record: dict[str, Any]) -> str:
    """Saves ``record`` (with at least "temperature") as ``directory``/temperature.json, tied
    to ``model``'s weights by their checksum; returns the file's path."""
    where = path(directory)
    write_json(where, {**record, "weights_sha256": weights_digest(model)})
    return where


def describe(record: dict[str, Any], directory: str) -> str:
    """One line saying which temperature is applied and where it came from."""
    fitted = f", fitted on {record['num_images']} {record['fitted_on']} images" if "fitted_on" in record else ""
    fitted += f" with --tta {record['tta']}" if record.get("tta") else ""
    return f"applying temperature {record['temperature']:.4f} ({path(directory)}{fitted})"
