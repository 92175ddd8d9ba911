"""Fixtures for the analysis-command tests: one tiny trained workdir and sample image files.

The workdir is trained once per test session (a few steps of the 4-block smoke model at
64x64, so the last stage is 2x2 and Grad-CAM has spatial detail) and reused by every test.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from conftest import write_fake_medmnist  # noqa: E402 - tests/ is on sys.path under pytest

TOOLS_SPLITS = {"train": 32, "val": 16, "test": 18}


@pytest.fixture(scope="session")
def tools_workdir(tmp_path_factory) -> str:
    """A train.py workdir of a tiny MedMamba trained for 4 steps on fake pathmnist."""
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


def _write_dicom(path: str, pixels: np.ndarray) -> None:
    """A minimal 12-bit MONOCHROME2 DICOM file with the given (H, W) uint16 pixels."""
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
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
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
    _write_dicom(paths["scan.dcm"], rng.integers(0, 4096, (30, 30)).astype(np.uint16))
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
