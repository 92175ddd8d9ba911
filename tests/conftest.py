"""Shared fixtures: small fake MedMNIST files in the official .npz format, a tiny-run config, and
for the analysis-command tests one tiny trained workdir and sample image files.

Nothing here downloads. The fake images carry a class-dependent brightness so a few
training steps can already beat chance.
"""

from __future__ import annotations

import atexit
import os
import shutil
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

from helpers import write_dicom, write_fake_medmnist  # noqa: E402  (after the cache settings)


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
