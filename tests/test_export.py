"""medmamba export: the exported file runs in a process that never imports medmamba_jax (plain
JAX, or ONNX Runtime), gives predict's probabilities, and refuses images of the wrong size or
dtype with a message naming what it expects."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from medmamba_jax import extras
from medmamba_jax.cli import export
from medmamba_jax.cli import common as cli
from medmamba_jax.inference import standalone
from medmamba_jax.inference.loaded_model import from_checkpoint, from_workdir

# Runs the manifest's usage lines, as a user would paste them, on images.npy in the export's
# directory; saves the probabilities and the messages of two bad calls.
USER_SCRIPT = r"""
import json, os, sys
import numpy as np
os.chdir(sys.argv[1])
manifest = json.load(open(sys.argv[2]))
images = np.load("images.npy")
namespace = {"images": images}
exec("\n".join(manifest["usage"]), namespace)
np.save("probabilities.npy", np.asarray(namespace["probabilities"]))
refusals = []
for bad in (images[:, :20], images.astype(np.float32)):
    namespace["images"] = bad
    try:
        exec(manifest["usage"][-1], namespace)
        refusals.append("accepted")
    except Exception as err:
        refusals.append(" ".join(str(err).split()))
json.dump({"refusals": refusals, "imported_medmamba_jax": "medmamba_jax" in sys.modules}, open("report.json", "w"))
"""

# What each runtime says about a 20-pixel-high image and a float32 one, for a 28x28x3 uint8 input.
REFUSALS = {
    "jax": ("expected (batch, 28, 28, 3) and called with (3, 20, 28, 3)", "expected uint8 and called with float32"),
    "onnx": ("invalid dimensions for input: images for the following indices index: 1 Got: 20 Expected: 28",
             "Actual: (tensor(float)) , expected: (tensor(uint8))"),
}


@pytest.fixture(scope="module")
def loaded(tools_workdir):
    return from_workdir(tools_workdir)


@pytest.fixture(scope="module", params=[("jax", "multi-class"), ("onnx", "multi-label, binary-class")],
                ids=["jax-softmax", "onnx-sigmoid"])
def sharp_model(request, loaded, tmp_path_factory):
    """(format, model directory): the trained tiny model with its head's weights scaled up and
    saved with the workdir's preprocessing and ``task``, so that its probabilities differ
    between images far beyond the 1e-4 compared (four training steps leave them near 1/K)."""
    import dataclasses

    from medmamba_jax.model_files import save_model

    name, task = request.param
    kernel = loaded.model.head.kernel
    original = kernel.get_value()
    kernel.set_value(original * 300)
    try:
        directory = save_model(tmp_path_factory.mktemp("sharp"), loaded.model, dataclasses.replace(loaded.card(), task=task))
    finally:
        kernel.set_value(original)
    return name, str(directory)


def test_the_exported_file_runs_without_us_and_matches_predict(sharp_model, tmp_path, capsys):
    name, model_dir = sharp_model
    out = tmp_path / "exported"
    assert cli.run(export.main, ["--checkpoint", model_dir, "--format", name, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    file = out / standalone.FORMATS[name].file
    assert printed.startswith(f"wrote {file} (") and f") and {file}.json\n" in printed
    assert "input: images uint8 (batch, 28, 28, 3)" in printed
    reference = from_checkpoint(model_dir, None, None)
    with open(standalone.manifest_path(str(file))) as f:
        manifest = json.load(f)
    assert manifest["label_names"] == reference.label_names and manifest["input"]["shape"] == ["batch", 28, 28, 3]
    assert manifest["bytes"] == os.path.getsize(file)

    # 3 images: not the batch of 2 the export was checked on, so the batch really is open
    images = np.random.default_rng(1).integers(0, 256, (3, 28, 28, 3), dtype=np.uint8)
    images[1] //= 4  # a dark one: far from the others
    np.save(out / "images.npy", images)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", USER_SCRIPT, str(out), standalone.manifest_path(str(file))],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["imported_medmamba_jax"] is False

    probabilities = np.load(out / "probabilities.npy")
    expected = reference.scores(images, 2)  # what predict prints
    assert probabilities.shape == expected.shape == (3, len(reference.label_names))
    assert np.ptp(expected, axis=0).max() > 0.1, expected  # a comparison that can tell images apart
    np.testing.assert_allclose(probabilities, expected, atol=1e-4, rtol=0)
    for said, wanted in zip(report["refusals"], REFUSALS[name]):
        assert wanted in said, said


def test_the_linear_resize_as_matrices_is_the_eval_transform(loaded):
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (2, 28, 28, 3), dtype=np.uint8)
    transform = loaded.transform
    assert transform.resize == "linear" and transform.image_size == 64  # the case that needs the matrices
    exportable = standalone.exportable_transform(transform, 28, 28)
    assert exportable is not transform
    np.testing.assert_allclose(np.asarray(exportable(images)), np.asarray(transform(images)), atol=1e-5, rtol=0)


def test_export_refuses_in_one_line_before_loading(tools_workdir, tmp_path, capsys, monkeypatch):
    taken = tmp_path / "a-file"
    taken.write_text("")
    assert cli.run(export.main, ["--workdir", tools_workdir, "--format", "jax", "--out", str(taken)]) == 1
    assert capsys.readouterr().err == f"error: output {taken} is a file, not a directory\n"
    monkeypatch.setitem(sys.modules, "jax2onnx", None)
    missing = tmp_path / "missing-workdir"  # the converter is asked for first: this is never read
    assert cli.run(export.main, ["--workdir", str(missing), "--format", "onnx", "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err == f"error: ONNX export needs jax2onnx, which is not installed: {extras.JAX2ONNX_INSTALL}\n"
