"""Shared fixtures: small fake MedMNIST files in the official .npz format, a tiny-run config, and
for the analysis-command tests one tiny trained workdir and sample image files.

Nothing here downloads. The fake images carry a class-dependent brightness so a few
training steps can already beat chance.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile

import jax
import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # so tests can import configs/ like train.py does
    sys.path.insert(0, ROOT)

# One persistent compilation cache for the session, shared with the train.py subprocesses
# (through the environment), so each distinct program compiles once per test run.
COMPILE_CACHE = tempfile.mkdtemp(prefix="medmamba-jax-compile-cache-")
atexit.register(shutil.rmtree, COMPILE_CACHE, ignore_errors=True)
os.environ["JAX_COMPILATION_CACHE_DIR"] = COMPILE_CACHE
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
jax.config.update("jax_compilation_cache_dir", COMPILE_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)

SPLIT_SIZES = {"train": 48, "val": 24, "test": 24}


def train_cmd(workdir, *overrides: str) -> list[str]:
    """train.py on configs/smoke.py writing to ``workdir``, with ``--config.KEY=VALUE`` overrides."""
    return [sys.executable, os.path.join(ROOT, "train.py"), "--config=" + os.path.join(ROOT, "configs/smoke.py"),
            f"--workdir={workdir}", *overrides]


def run_train(workdir, *overrides: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Runs ``train_cmd`` from the repository root to the end; stdout and stderr are captured."""
    return subprocess.run(train_cmd(workdir, *overrides), capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=ROOT, timeout=600)


def write_fake_medmnist(root: str, flag: str, size: int = 28, split_sizes=None, seed: int = 0) -> str:
    """Writes ``{root}/{flag}[_{size}].npz`` shaped like the real file; returns its path."""
    import medmnist

    info = medmnist.INFO[flag]
    n_labels, n_channels = len(info["label"]), info["n_channels"]
    multi_label = info["task"].startswith("multi-label")
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (split_sizes or SPLIT_SIZES).items():
        if multi_label:
            labels = (rng.random((n, n_labels)) < 0.3).astype(np.uint8)
            level = labels[:, 0].astype(np.float64)
        else:
            labels = (np.arange(n) % n_labels).astype(np.uint8)[rng.permutation(n)].reshape(n, 1)
            level = labels[:, 0] / max(n_labels - 1, 1)
        shape = (n, size, size) + ((3,) if n_channels == 3 else ())
        noise = rng.normal(0, 30, shape)
        brightness = (40 + 170 * level).reshape((n,) + (1,) * (len(shape) - 1))
        arrays[f"{split}_images"] = np.clip(brightness + noise, 0, 255).astype(np.uint8)
        arrays[f"{split}_labels"] = labels
    os.makedirs(root, exist_ok=True)
    path = os.path.join(root, f"{flag}{'' if size == 28 else f'_{size}'}.npz")
    np.savez(path, **arrays)
    return path


@pytest.fixture(scope="session")
def fake_medmnist_dir(tmp_path_factory) -> str:
    """A directory with fake pathmnist (multi-class RGB), chestmnist (multi-label gray) and
    breastmnist (binary gray) at size 28."""
    root = str(tmp_path_factory.mktemp("medmnist"))
    for i, flag in enumerate(("pathmnist", "chestmnist", "breastmnist")):
        write_fake_medmnist(root, flag, seed=i)
    return root


@pytest.fixture
def tiny_config(fake_medmnist_dir):
    """configs/smoke.py pointed at the fake data: a seconds-long run."""
    from configs import smoke

    config = smoke.get_config()
    config.data_dir = fake_medmnist_dir
    return config


TOOLS_SPLITS = {"train": 32, "val": 16, "test": 18}


@pytest.fixture(scope="session")
def tools_workdir(tmp_path_factory) -> str:
    """A train.py workdir of a tiny MedMamba trained for 4 steps on fake pathmnist: the 4-block
    smoke model at 64x64, so the last stage is 2x2 and Grad-CAM has spatial detail. Trained
    once per session and shared by every analysis test."""
    from configs import smoke
    from medmamba_jax.training.train import train_and_evaluate

    root = tmp_path_factory.mktemp("tools")
    data_dir = str(root / "data")
    write_fake_medmnist(data_dir, "pathmnist", split_sizes=TOOLS_SPLITS, seed=5)
    config = smoke.get_config()
    config.data_dir = data_dir
    config.image_size = 64
    workdir = str(root / "workdir")
    train_and_evaluate(config, workdir)
    return workdir


@pytest.fixture
def workdir_copy(tools_workdir, tmp_path) -> str:
    """A copy of the shared tools workdir that a test may damage."""
    workdir = str(tmp_path / "copied")
    shutil.copytree(tools_workdir, workdir)
    return workdir


def write_dicom(path: str, pixels: np.ndarray, frames: int = 1, colour: bool = False, **header) -> None:
    """A minimal DICOM file: 12-bit MONOCHROME2 of (H, W) pixels (8-bit if uint8), or RGB of (H, W, 3)
    ones if ``colour`` (8-bit, or 16-bit for uint16 pixels); with ``frames`` > 1 the pixels
    lead with a frame axis. ``header`` sets further attributes (a window, a rescale...)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    ds.Rows, ds.Columns = pixels.shape[int(frames > 1):][:2]
    if frames > 1:
        ds.NumberOfFrames = frames
    if colour:
        bits = 16 if pixels.dtype == np.uint16 else 8
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
        ds.PixelData = pixels.astype(np.uint16 if bits == 16 else np.uint8).tobytes()
    else:
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        if pixels.dtype == np.uint8:
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        else:
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = pixels.astype(np.uint8 if pixels.dtype == np.uint8 else np.uint16).tobytes()
    for name, value in header.items():
        setattr(ds, name, value)
    ds.save_as(path, enforce_file_format=True)


@pytest.fixture(scope="session")
def sample_images(tmp_path_factory) -> dict[str, str]:
    """RGB PNG (odd size), grayscale PNG, RGBA PNG, JPEG, 12-bit DICOM, and a text file."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)
    paths = {name: str(root / name) for name in ("rgb.png", "gray.png", "rgba.png", "photo.jpg", "scan.dcm", "notes.txt")}
    Image.fromarray(rgb).save(paths["rgb.png"])
    Image.fromarray(rgb[..., 0]).save(paths["gray.png"])
    Image.fromarray(np.concatenate([rgb, np.full((40, 52, 1), 128, np.uint8)], axis=-1)).save(paths["rgba.png"])
    Image.fromarray(rgb).save(paths["photo.jpg"], quality=90)
    write_dicom(paths["scan.dcm"], rng.integers(0, 4096, (30, 30)).astype(np.uint16))
    with open(paths["notes.txt"], "w") as f:
        f.write("not an image\n")
    return paths


def assert_png_not_blank(path: str) -> None:
    """The file decodes as an image with more than one colour in it."""
    assert os.path.isfile(path), path
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"), np.float64)
    assert pixels.shape[0] > 50 and pixels.shape[1] > 50, pixels.shape
    assert pixels.std() > 5, f"{path} looks blank"
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 10, f"{path} has almost no colours"
