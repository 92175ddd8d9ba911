"""Helpers shared by the tests (pytest fixtures live in conftest.py).

- Numbers: the parity data's paths, fresh random generators, relative errors, the selective
  scan's arguments and their gradients.
- Files: fake MedMNIST files in the official .npz format, minimal DICOM files, PNG checks.
- Runs: train.py commands, what a workdir holds, and fake lifecycles that steer a run through
  the ``Lifecycle`` handed to ``train_and_evaluate`` (or ``Trainer.fit``), never by patching
  the trainer's module.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from medmamba_jax.training import preemption
from medmamba_jax.training.checkpointing import load_trained
from medmamba_jax.training.lifecycle import Lifecycle, Phase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPLIT_SIZES = {"train": 48, "val": 24, "test": 24}  # images per split of a fake MedMNIST file

DATA = Path(__file__).parent / "data"
SHARED_PARITY = Path(__file__).resolve().parents[2] / "shared" / "parity"


def fresh_rng() -> np.random.Generator:
    """A generator with a new seed on every call, printed so that pytest shows it with a
    failure; MEDMAMBA_TEST_SEED=N replays one."""
    seed = int(os.environ.get("MEDMAMBA_TEST_SEED") or secrets.randbits(32))
    print(f"random inputs from seed {seed} (replay: MEDMAMBA_TEST_SEED={seed})")
    return np.random.default_rng(seed)


def rel_err(actual, expected) -> float:
    """Norm-wise relative error ||actual - expected||_2 / ||expected||_2, in float64."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


# The selective scan's arguments, in the order selective_scan takes them.
NAMES = ("u", "delta", "A", "B", "C", "D", "delta_bias")


def as_float32(arrays) -> list:
    """The scan arguments named in NAMES, taken from a mapping (an .npz file), as float32 arrays."""
    return [jnp.asarray(arrays[name], jnp.float32) for name in NAMES]


def value_and_grads(fn, args, dy):
    """y and d sum(y * dy) / d args for every non-None arg (keyed by NAMES), as one jitted
    program (one compile: interpret-mode Pallas kernels are cheap to run but slow to compile)."""
    live = [i for i, a in enumerate(args) if a is not None]

    def full(xs):
        out = list(args)
        for i, x in zip(live, xs):
            out[i] = x
        return out

    @jax.jit
    def run(xs, dy):
        y, vjp = jax.vjp(lambda *xs: fn(*full(xs)), *xs)
        return y, vjp(dy)

    y, grads = run([args[i] for i in live], jnp.asarray(dy, jnp.float32))
    return y, dict(zip([NAMES[i] for i in live], grads))


def random_inputs(rng, batch, groups, dim, n, length, dtype=np.float32, extras=True):
    """Fresh random (u, delta, A, B, C, D, delta_bias) in the ranges MedMamba produces."""
    kd = groups * dim
    arrays = [
        rng.standard_normal((batch, kd, length)),
        rng.standard_normal((batch, kd, length)) * 0.7,
        -np.exp(rng.uniform(0.0, 2.8, (kd, n))),
        rng.standard_normal((batch, groups, n, length)),
        rng.standard_normal((batch, groups, n, length)),
    ]
    arrays = [jnp.asarray(a, dtype) for a in arrays[:2]] + [jnp.asarray(arrays[2], np.float32)] + [
        jnp.asarray(a, dtype) for a in arrays[3:]
    ]
    if extras:
        arrays += [jnp.asarray(rng.standard_normal(kd), np.float32), jnp.asarray(rng.uniform(-3, 0.5, kd), np.float32)]
    else:
        arrays += [None, None]
    return arrays


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


def assert_png_not_blank(path: str) -> None:
    """The file decodes as an image with more than one colour in it."""
    assert os.path.isfile(path), path
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"), np.float64)
    assert pixels.shape[0] > 50 and pixels.shape[1] > 50, pixels.shape
    assert pixels.std() > 5, f"{path} looks blank"
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 10, f"{path} has almost no colours"


def records(workdir) -> list[dict]:
    """The workdir's metrics.jsonl records, in order."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def losses(workdir) -> dict[int, float]:
    """The logged train losses by step."""
    return {r["step"]: r["loss"] for r in records(workdir) if r["split"] == "train"}


def latest_steps(workdir) -> list[int]:
    """The steps of the workdir's 'latest' checkpoints, as directories on disk (none yet: [])."""
    latest = os.path.join(workdir, "checkpoints", "latest")
    return sorted(int(d) for d in os.listdir(latest) if d.isdigit()) if os.path.isdir(latest) else []


def weights(workdir, which="latest") -> list[np.ndarray]:
    """The parameters and batch statistics of the workdir's ``which`` checkpoint."""
    model, _ = load_trained(workdir, which)
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param, nnx.BatchStat))]


def assert_records_and_results_match(workdir, reference) -> None:
    """Each (split, step) is logged once, as in the uninterrupted ``reference`` run, with its
    values (the epoch's mean loss included; timings aside), and results.json is the same."""
    logged = [(r["split"], r["step"]) for r in records(workdir)]
    assert sorted(logged) == sorted((r["split"], r["step"]) for r in records(reference))
    skipped = ("images_per_sec", "seconds", "split")
    ours, theirs = ({(r["split"], r["step"]): {k: v for k, v in r.items() if k not in skipped} for r in records(w)}
                    for w in (workdir, reference))
    for key, record in theirs.items():
        assert ours[key] == pytest.approx(record, rel=1e-5, nan_ok=True), key
    assert json.load(open(os.path.join(workdir, "results.json"))) == json.load(
        open(os.path.join(reference, "results.json")))


class StopAfter(preemption.StopNotice):
    """A notice that arrives as micro-step ``step`` ends."""

    def __init__(self, step: int):
        super().__init__()
        self.step = step

    def reached(self, step: int) -> bool:
        self._received = self._received or step == self.step
        return self._received


class Hooked(Lifecycle):
    """A lifecycle that calls ``on_enter(phase, epoch)`` as each phase begins and ``on_saved(kind,
    step, meta)`` after each checkpoint (either may raise, or signal), and records the phases
    entered as (phase, epoch) pairs."""

    def __init__(self, on_enter: Callable[[Phase, int], None] | None = None,
                 on_saved: Callable[[str, int, dict], None] | None = None):
        super().__init__()
        self.on_enter, self.on_saved, self.entered = on_enter, on_saved, []

    def enter(self, phase: Phase, epoch: int) -> None:
        super().enter(phase, epoch)
        self.entered.append((phase, epoch))
        if self.on_enter is not None:
            self.on_enter(phase, epoch)

    def saved(self, kind: str, step: int, meta: dict) -> None:
        super().saved(kind, step, meta)
        if self.on_saved is not None:
            self.on_saved(kind, step, meta)

    def trained_epochs(self) -> list[int]:
        """The epochs whose training started, in order."""
        return [epoch for phase, epoch in self.entered if phase is Phase.TRAINING]
