"""Unit tests of the analysis helpers: image reading, perturbations, the optional medmnistc hook."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import sys
import types

import numpy as np
import pytest
from PIL import Image

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from helpers import assert_png_not_blank, write_dicom

from medmamba_jax.cli import evaluate
from medmamba_jax.analysis import perturb
from medmamba_jax.data import image_files as images


def test_to_stored_converts_modes_and_sizes(sample_images):
    for name in ("rgb.png", "gray.png", "rgba.png", "photo.jpg", "scan.dcm"):
        rgb = images.load_for_model(sample_images[name], channels=3, size=28)
        gray = images.load_for_model(sample_images[name], channels=1, size=28)
        assert rgb.shape == (28, 28, 3) and gray.shape == (28, 28, 1) and rgb.dtype == np.uint8
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 0  # fully transparent red composites to black
    assert images.to_stored(Image.fromarray(rgba), 3, 4).max() == 0
    deep = Image.fromarray(np.array([[0, 1000], [2000, 4000]], np.uint16))  # 16-bit grayscale
    assert images.to_stored(deep, 1, 2)[..., 0].tolist() == [[0, 64], [128, 255]]


def test_dicom_is_windowed_to_full_range(sample_images):
    pixels = np.asarray(images.read_image(sample_images["scan.dcm"]))
    assert pixels.dtype == np.uint8 and pixels.min() == 0 and pixels.max() == 255


CT_WINDOW = {"RescaleIntercept": -1024, "RescaleSlope": 1, "WindowCenter": 40, "WindowWidth": 400}


def _dicom_row(tmp_path, hounsfield, **header) -> list[int]:
    """One row of CT values written as a 12-bit file and read back."""
    write_dicom(str(tmp_path / "ct.dcm"), np.array([hounsfield]) + 1024, **header)
    return np.asarray(images.read_image(str(tmp_path / "ct.dcm")))[0].tolist()


def test_a_dicom_window_maps_its_own_range_to_black_and_white(tmp_path):
    # DICOM's linear window (centre 40, width 400): -160 HU and below black, above 239 white.
    assert _dicom_row(tmp_path, [-500, -160, 0, 40, 240, 1000], **CT_WINDOW) == [0, 0, 102, 128, 255, 255]
    # Soft tissue only stays mid-grey, as in a viewer, instead of being stretched to 0..255.
    assert _dicom_row(tmp_path, [0, 20, 40], **CT_WINDOW) == [102, 115, 128]
    assert _dicom_row(tmp_path, [0, 20, 40], **CT_WINDOW, PhotometricInterpretation="MONOCHROME1") == [153, 140, 127]
    # A window pydicom rejects (width 0) or ignores (no width, an empty VOI LUT sequence)
    # falls back to min-max instead of failing the file or turning it flat grey.
    assert _dicom_row(tmp_path, [0, 20, 40], **{**CT_WINDOW, "WindowWidth": 0}) == [0, 128, 255]
    assert _dicom_row(tmp_path, [0, 20, 40], **{k: v for k, v in CT_WINDOW.items() if k != "WindowWidth"}) == [0, 128, 255]
    rescale_only = {k: v for k, v in CT_WINDOW.items() if k.startswith("Rescale")}
    assert _dicom_row(tmp_path, [0, 20, 40], **rescale_only, VOILUTSequence=Sequence([])) == [0, 128, 255]
    # An empty sequence beside a window leaves the window in charge.
    assert _dicom_row(tmp_path, [0, 20, 40], **CT_WINDOW, VOILUTSequence=Sequence([])) == [102, 115, 128]


def test_a_voi_lut_maps_its_table_range_to_black_and_white(tmp_path):
    table = Dataset()
    table.add_new(0x00283002, "US", [4001, 0, 12])  # LUT Descriptor: 4001 entries from stored value 0, 12 bits
    table.add_new(0x00283006, "US", np.round(np.linspace(0, 4095, 4001)).astype(int).tolist())  # LUT Data
    for stored, shown in (([0, 1000, 2000, 4000], [0, 64, 127, 255]), ([1000, 1500, 2000], [64, 96, 127])):
        write_dicom(str(tmp_path / "lut.dcm"), np.array([stored]), VOILUTSequence=Sequence([table]))
        assert np.asarray(images.read_image(str(tmp_path / "lut.dcm")))[0].tolist() == shown


def test_palette_colour_dicoms_are_looked_up(tmp_path):
    entries = np.arange(256, dtype=np.uint16) * 257  # 16-bit table entries
    tables = {"Red": entries, "Green": entries[::-1], "Blue": np.zeros(256, np.uint16)}
    header = {f"{c}PaletteColorLookupTableDescriptor": [256, 0, 16] for c in tables}
    header.update({f"{c}PaletteColorLookupTableData": t.tobytes() for c, t in tables.items()})
    write_dicom(str(tmp_path / "us.dcm"), np.array([[0, 100, 255]], np.uint8), PhotometricInterpretation="PALETTE COLOR",
                **header)
    rgb = np.asarray(images.read_image(str(tmp_path / "us.dcm")))
    assert rgb[0].tolist() == [[0, 255, 0], [100, 155, 0], [255, 0, 0]]


def test_multi_frame_dicoms_give_their_middle_frame(tmp_path):
    shade = np.arange(5)[:, None, None] * 40  # frame f is shade 40 * f
    cine = np.broadcast_to(shade[..., None] + np.array([0, 10, 20]), (5, 8, 6, 3))  # RGB frames
    write_dicom(str(tmp_path / "cine.dcm"), cine, frames=5, colour=True)
    assert np.asarray(images.read_image(str(tmp_path / "cine.dcm")))[0, 0].tolist() == [80, 90, 100]
    # Three-column grayscale frames: (frames, H, 3) must not be taken for one RGB image.
    series = np.broadcast_to(shade * 100, (5, 7, 3)) + np.arange(3)
    write_dicom(str(tmp_path / "series.dcm"), series, frames=5)
    assert np.asarray(images.read_image(str(tmp_path / "series.dcm"))).shape == (7, 3)


def test_colour_dicoms_deeper_than_8_bits_are_scaled_not_wrapped(tmp_path):
    pixels = np.zeros((4, 6, 3), np.uint16)
    pixels[:, :3, 0], pixels[:, 3:, 2] = 40000, 1000  # a bright red half and a dim blue half
    write_dicom(str(tmp_path / "deep.dcm"), pixels, colour=True)
    rgb = np.asarray(images.read_image(str(tmp_path / "deep.dcm")))
    assert rgb[0, 0].tolist() == [156, 0, 0] and rgb[0, 5].tolist() == [0, 0, 4]  # 255 * v / 65535


def test_unreadable_files(sample_images, tmp_path, monkeypatch):
    with pytest.raises(images.ImageReadError, match="notes.txt"):
        images.read_image(sample_images["notes.txt"])
    with pytest.raises(images.ImageReadError, match="no such file"):
        images.read_image(str(tmp_path / "missing.png"))
    with pytest.raises(images.ImageReadError, match="is a directory, not an image"):
        images.read_image(str(tmp_path))
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"\0" * 128 + b"DICM" + b"garbage")
    with pytest.raises(images.ImageReadError, match="DICOM"):
        images.read_image(str(broken))
    # Pillow refuses images over twice MAX_IMAGE_PIXELS with an error that is not an OSError.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(images.ImageReadError, match="rgb.png: .*raise PIL.Image.MAX_IMAGE_PIXELS to read it"):
        images.read_image(sample_images["rgb.png"])


def test_gradcam_maps_each_cell_onto_the_pixels_it_saw():
    import jax

    from medmamba_jax.analysis.gradcam import upsample

    hot = np.zeros((1, 7, 7), np.float32)
    hot[0, 6, 2] = 1.0  # evidence in the cell covering rows 192-223, columns 64-95
    for size in (224, 255):  # 255: the last 31 rows and columns were dropped by the patch embedding and merges
        cam = np.asarray(upsample(hot, 32, (size, size)))[0]
        rows, cols = np.nonzero(cam > 0.5)
        assert (rows.min(), rows.max(), cols.min(), cols.max()) == (192, 223, 64, 95), size
        assert cam[224:].max(initial=0) == 0 and cam[:, 224:].max(initial=0) == 0
    ramp = np.arange(49, dtype=np.float32).reshape(1, 7, 7)  # where the map covers the image: a plain resize
    np.testing.assert_allclose(upsample(ramp, 32, (224, 224)), jax.image.resize(ramp, (1, 224, 224), "linear"))


def test_figure_stems_are_distinct():
    from medmamba_jax.cli.explain import figure_stems

    paths = ["cat/0.png", "dog/0.png", "x/rgb.png", "x/rgb.jpg", "A.png", "a.png", "a_b/c.png", "a/b/c.png"]
    stems = figure_stems(paths)
    assert [stems[p] for p in paths[:2]] == ["cat_0", "dog_0"]
    assert len({s.casefold() for s in stems.values()}) == len(paths), stems


def test_perturbations_grow_with_severity():
    # A smooth pattern, so a larger shift or rotation moves each pixel further from its value.
    yy, xx = np.mgrid[0:28, 0:28] / 28.0
    pattern = 127.5 + 100 * np.sin(2 * np.pi * xx) * np.cos(2 * np.pi * yy * 0.7)
    batch = np.round(np.stack([pattern, pattern[::-1], pattern.T], axis=-1)[None].repeat(2, 0)).astype(np.uint8)
    for p in perturb.PERTURBATIONS:
        assert p(batch, 0) is batch
        changes = []
        for severity in perturb.SEVERITIES:
            out = p(batch, severity)
            assert out.shape == batch.shape and out.dtype == np.uint8
            changes.append(np.abs(out.astype(float) - batch).mean())
        assert changes[0] > 0 and changes[-1] > changes[0], (p.name, changes)
    assert perturb.contrast(batch, 0.2).std() < batch.std()
    warm = perturb.colour_temperature(batch, 0.3).astype(float)
    assert warm[..., 0].mean() > batch[..., 0].mean() and warm[..., 2].mean() < batch[..., 2].mean()


def test_robustness_perturbs_a_split_in_chunks_with_the_same_result():
    from medmamba_jax.inference.robustness_sweep import Scorer

    images = np.random.default_rng(0).integers(0, 256, (40, 16, 16, 3), dtype=np.uint8)
    labels = np.arange(40) % 3
    seen = []

    def scores(batch, batch_size):  # a stand-in model: class scores from each channel's mean
        seen.append(len(batch))
        means = batch.reshape(len(batch), -1, 3).mean(axis=1)
        return means / means.sum(axis=1, keepdims=True)

    loaded = types.SimpleNamespace(scores=scores, task="multi-class")
    score = Scorer(loaded, labels, batch_size=4)
    rotation, noise = (p for p in perturb.PERTURBATIONS if p.name in ("rotation", "gaussian_noise"))
    whole = score(images, 3, rotation)
    seen.clear()
    chunked = Scorer(loaded, labels, batch_size=4, chunk_bytes=10 * images[0].nbytes)  # chunks of 8 images (2 batches)
    assert chunked(images, 3, rotation) == whole and seen == [8, 8, 8, 8, 8]
    # Noise is seeded per image by its index in the split: no chunk repeats another's, and
    # how the split is cut (which follows --batch-size) changes nothing.
    first, second = noise(images[:8], 5, first=0), noise(images[8:16], 5, first=8)
    assert not np.array_equal(first.astype(int) - images[:8], second.astype(int) - images[8:16])
    np.testing.assert_array_equal(noise(images[:16], 5, first=0), np.concatenate([first, second]))
    assert score(images, 5, noise) == Scorer(loaded, labels, batch_size=12)(images, 5, noise)  # chunks of 12


def test_robustness_keeps_finished_perturbations_for_the_same_weights_and_images(tmp_path, monkeypatch, capsys):
    from flax import nnx

    from medmamba_jax.inference import robustness_sweep

    images = np.random.default_rng(0).integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)
    labels = np.arange(12) % 3

    def scores(batch, batch_size):  # a stand-in model, as above
        means = batch.reshape(len(batch), -1, 3).mean(axis=1)
        return means / means.sum(axis=1, keepdims=True)

    loaded = types.SimpleNamespace(scores=scores, task="multi-class", image_size=16,
                                   model=nnx.Linear(2, 2, rngs=nnx.Rngs(0)))

    def table(out, model=loaded, data=images):
        os.makedirs(out, exist_ok=True)
        return robustness_sweep.run_all(model, data, labels, 4, False,
                                        robustness_sweep.KeptSweeps(out, model, data, labels))

    uninterrupted = table(str(tmp_path / "whole"))
    sweep, scored = robustness_sweep.sweep, []

    def sweep_until_ctrl_c(name, *args):
        if len(scored) == 2 and interrupt:
            raise KeyboardInterrupt
        scored.append(name)
        return sweep(name, *args)

    monkeypatch.setattr(robustness_sweep, "sweep", sweep_until_ctrl_c)
    out, interrupt = str(tmp_path / "cut"), True
    with pytest.raises(KeyboardInterrupt):
        table(out)
    scored.clear()
    interrupt = False
    assert table(out) == uninterrupted
    assert scored == ["colour_temperature", "gaussian_noise", "blur", "contrast"]
    assert "resuming: 2 of 6 perturbations kept in" in capsys.readouterr().err
    other_weights = types.SimpleNamespace(**{**vars(loaded), "model": nnx.Linear(2, 2, rngs=nnx.Rngs(1))})
    for i, other in enumerate(({"model": other_weights}, {"data": images[::-1].copy()})):
        scored.clear()
        table(shutil.copytree(out, str(tmp_path / f"other{i}")), **other)
        assert len(scored) == 6, other  # kept results of other weights or images are not reused
    partial = os.path.join(out, robustness_sweep.PARTIAL_FILE)
    with open(partial) as f:
        saved = json.load(f)
    saved["table"]["perturbations"]["rotation"]["params"][-1] += 1  # as kept by a version that rotated further
    with open(partial, "w") as f:
        json.dump(saved, f)
    scored.clear()
    assert table(out) == uninterrupted and scored == ["rotation"]


def test_a_ctrl_c_in_a_tool_is_one_line_and_status_130(capsys):
    from medmamba_jax.cli import common as cli

    def interrupted(argv):
        raise KeyboardInterrupt

    assert cli.run(interrupted, []) == 130
    assert capsys.readouterr().err.strip() == "interrupted"


def test_medmnistc_absent_or_present(monkeypatch):
    monkeypatch.setitem(sys.modules, "medmnistc", None)  # as if not installed
    assert "not installed" in perturb.medmnistc_corruptions("pathmnist")

    class Invert:  # the shape of a medmnistc corruption: apply(PIL image, severity 0..4)
        def apply(self, img, severity=-1):
            return 255 - np.asarray(img) // (severity + 1)

    registry = types.ModuleType("medmnistc.corruptions.registry")
    registry.CORRUPTIONS_DS = {"pathmnist": {"invert": Invert()}}
    for name, module in (("medmnistc", types.ModuleType("medmnistc")),
                         ("medmnistc.corruptions", types.ModuleType("medmnistc.corruptions")),
                         ("medmnistc.corruptions.registry", registry)):
        monkeypatch.setitem(sys.modules, name, module)
    found = perturb.medmnistc_corruptions("pathmnist")
    batch = np.full((2, 4, 4, 1), 100, np.uint8)
    assert set(found) == {"invert"} and found["invert"](batch, 1).ravel().tolist() == [155] * 32
    assert "no corruptions" in perturb.medmnistc_corruptions("octmnist")


def test_evaluate_plots_of_a_multilabel_task(tmp_path):
    # The tools' end-to-end tests train a multi-class workdir; this is the multi-label branch.
    from medmamba_jax.evaluation import metrics_and_outcomes
    from medmamba_jax.evaluation.calibration import calibration_error

    rng = np.random.default_rng(0)
    labels, scores = (rng.random((40, 3)) < 0.4).astype(int), rng.random((40, 3))
    metrics, truth, counts = metrics_and_outcomes(labels, scores, "multi-label, binary-class")
    metrics.update(calibration_error(labels, scores, multi_label=True), temperature=1.0, tta=None)
    loaded = types.SimpleNamespace(label_names=["a", "b", "c"], multi_label=True,
                                   config=types.SimpleNamespace(dataset="chestmnist"))
    written = evaluate.write_plots(str(tmp_path), loaded, labels, truth, counts, scores, metrics, "chestmnist test")
    assert [os.path.basename(path) for path in written] == ["confusion_matrix.png", "roc.png", "reliability.png"]
    for path in written:
        assert_png_not_blank(path)


@pytest.mark.parametrize("module, args, message", [
    ("predict", ["--workdir", "w", "--batch-size", "0", "a.png"], "--batch-size: must be at least 1, got 0"),
    ("predict", ["--workdir", "w", "--top-k", "two", "a.png"], "--top-k: 'two' is not an integer"),
    ("evaluate", ["--workdir", "w", "--limit", "-1"], "--limit: must be at least 0, got -1"),
    ("robustness", ["--workdir", "w", "--out", "o", "--batch-size", "-2"], "--batch-size: must be at least 1"),
    ("explain", ["tsne", "--workdir", "w", "--out", "o", "--batch-size", "0"], "--batch-size: must be at least 1"),
    ("explain", ["tsne", "--workdir", "w", "--out", "o", "--perplexity", "0"], "--perplexity: must be above 0, got 0"),
    ("explain", ["tsne", "--workdir", "w", "--out", "o", "--perplexity", "x"], "--perplexity: 'x' is not a number"),
])
def test_bad_counts_are_usage_errors(module, args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(f"medmamba_jax.cli.{module}").parse_args(args)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
