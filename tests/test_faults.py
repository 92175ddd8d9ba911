"""Faults that once gave tracebacks or hangs: each is now one ``error:`` line (or one warning).

A full or read-only disk, empty splits, odd files in an image folder, absurd sizes, stray
checkpoint keys, bad flags, damaged checkpoints and TensorFlow's own log lines.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from helpers import DATA, ROOT, run_train, write_fake_medmnist

from medmamba_jax import data
from medmamba_jax.cli import evaluate, predict
from medmamba_jax.cli import common as cli
from medmamba_jax.inference.loaded_model import MAX_IMAGE_SIZE
from medmamba_jax.training import checkpointing
from medmamba_jax.training.errors import TrainingError

NOBODY = 65534


def one_error_line(err: str) -> str:
    """The single line of ``err``, which must be an ``error:`` line."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# ---------------------------------------------------------------- full and read-only disks


class FullDiskManager:
    """A CheckpointManager stand-in whose write fails as TensorStore reports a full disk."""

    directory = "/fake/checkpoints/latest"

    def all_steps(self):
        return []

    def save(self, step, args):
        raise ValueError('RESOURCE_EXHAUSTED: Error writing "x" in OCDBT database: Failed to write 1848 bytes: '
                         "No space left on device [os_error_code='28']")

    def wait_until_finished(self):
        pass


def test_a_full_disk_is_one_line_naming_the_path_and_the_bytes_needed(tmp_path):
    state = {"w": jnp.zeros((1000,), jnp.float32)}  # 4,000 bytes
    manager = checkpointing.managers(str(tmp_path))["latest"]
    with pytest.raises(TrainingError) as refused:  # too little room: nothing is written
        checkpointing.save(manager, 3, state, {"step": 3}, free_bytes=lambda directory: 100)
    message = str(refused.value)
    assert str(manager.directory) in message and f"about {4000 + checkpointing.METADATA_BYTES:,} bytes" in message
    assert "100 are free" in message and "\n" not in message
    assert manager.all_steps() == [] and os.listdir(manager.directory) == []
    with pytest.raises(TrainingError, match=r"no space left on the disk of /fake/checkpoints/latest for checkpoint "
                                            r"step 3: it needs about [\d,]+ bytes and 7 are free"):
        free = iter([10**12, 7])  # room before the write, and after it filled the disk
        checkpointing.save(FullDiskManager(), 3, state, {"step": 3}, free_bytes=lambda directory: next(free))


@contextlib.contextmanager
def read_only(path: str):
    """Inside the block, ``path`` is read-only to this process: by its mode, and for root, whom
    modes do not stop, by running as nobody meanwhile."""
    os.chmod(path, 0o555)
    try:
        if os.geteuid() == 0:
            os.seteuid(NOBODY)
            try:
                yield
            finally:
                os.seteuid(0)
        else:
            yield
    finally:
        os.chmod(path, 0o755)


def test_a_read_only_workdir_or_out_is_one_line():
    base = tempfile.mkdtemp()  # not under pytest's tmp_path, which is closed to other users
    try:
        os.chmod(base, 0o755)
        with read_only(base):
            for target in (base, os.path.join(base, "new", "out")):
                with pytest.raises(cli.ToolError, match=f"--out {target} cannot be written: it is read-only"):
                    cli.writable_dir(target, "--out")
    finally:
        shutil.rmtree(base)


def test_a_workdir_that_is_a_file_a_missing_config_and_a_huge_seed_are_one_line(tmp_path, fake_medmnist_dir):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    result = run_train(a_file, f"--config.data_dir={fake_medmnist_dir}")
    assert one_error_line(result.stderr) == f"error: --workdir {a_file} is a file, not a directory"
    assert result.returncode == 1
    missing = os.path.join(ROOT, "configs", "nowhere.py")
    result = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), f"--config={missing}",
                             f"--workdir={tmp_path / 'w'}"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert one_error_line(result.stderr) == f"error: config file {missing} not found" and result.returncode == 1
    # The seed's bound itself is checked with the other config values in test_train_units.


# ---------------------------------------------------------------- empty splits


@pytest.mark.parametrize("split", ["val", "test"])
def test_a_split_without_images_stops_a_run_before_training(tmp_path, tiny_config, split):
    from medmamba_jax.training.train import prepare

    tiny_config.data_dir = str(tmp_path)
    write_fake_medmnist(str(tmp_path), "pathmnist", split_sizes={"train": 16, "val": 8, "test": 8, split: 0})
    with pytest.raises(data.DataError, match=f"pathmnist.npz holds no {split} images"):
        prepare(tiny_config)


def test_evaluate_data_dir_on_a_split_without_images_is_one_line(tools_workdir, tmp_path, capsys):
    write_fake_medmnist(str(tmp_path), "pathmnist", split_sizes={"train": 16, "val": 8, "test": 0})
    argv = ["--workdir", tools_workdir, "--data-dir", str(tmp_path), "--out", str(tmp_path / "out")]
    assert cli.run(evaluate.main, argv) == 1
    assert "holds no test images" in one_error_line(capsys.readouterr().err)


# ---------------------------------------------------------------- image folders

FOLDER_SCRIPT = """
import sys
from medmamba_jax.data import folder_source
from medmamba_jax.data.errors import DataError
for root in sys.argv[1:]:
    try:
        if root.endswith("direct"):  # past the listing's checks, as a file that changes after it would be
            folder_source._decode_split(root, "val", ["a", "b"], 32)
        else:
            folder_source.load(root, "val", 32)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
"""
ODD_FILES = ("FIFO", "dangling symlink", "symlink loop")


def image_folder(root, odd: str) -> str:
    """root/{train,val}/{a,b}/ with two PNGs each, and in val/a/ an odd x.png: a FIFO, a dangling
    symlink, or a symlink loop."""
    for split in ("train", "val"):
        for name in ("a", "b"):
            os.makedirs(root / split / name)
            for i in range(2):
                Image.fromarray(np.full((12, 12, 3), 40 + 150 * i, np.uint8)).save(root / split / name / f"{i}.png")
    odd_path = root / "val" / "a" / "x.png"
    if odd == "FIFO":
        os.mkfifo(odd_path)
    elif odd == "dangling symlink":
        os.symlink(root / "nowhere.png", odd_path)
    else:
        os.symlink(odd_path, odd_path)
    return str(root)


def test_odd_files_in_an_image_folder_are_refused_in_one_line_without_tensorflow_logs(tmp_path):
    """A FIFO (which hung the run), a dangling symlink and a symlink loop are each named; a file that
    TensorFlow itself fails to read (decoded past those checks) is one line too, with none of
    TensorFlow's log lines before it. One fresh process, in which TensorFlow loads as in a run,
    for all of them: a hang is then a timeout, not a stuck test."""
    roots = [image_folder(tmp_path / odd.replace(" ", "_"), odd) for odd in ODD_FILES]
    direct = image_folder(tmp_path / "direct", "dangling symlink")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run([sys.executable, "-c", FOLDER_SCRIPT, *roots, direct], capture_output=True, text=True,
                            cwd=ROOT, env=env, timeout=300)
    assert result.stderr.splitlines() == [
        *(f"error: image folder {root}/val: 1 image name not a regular file (a/x.png (a {odd})); remove or replace it"
          for root, odd in zip(roots, ODD_FILES)),
        f"error: image folder {direct}/val: cannot read {direct}/val/a/x.png; No such file or directory",
    ]


# ---------------------------------------------------------------- sizes and stray keys


def test_predict_refuses_a_huge_image_size_in_one_line(tmp_path, sample_images, capsys):
    from medmamba_jax.cli import convert

    converted = str(tmp_path / "converted")
    assert convert.main([str(DATA / "tiny.pth"), converted]) == 0
    capsys.readouterr()
    argv = ["--checkpoint", converted, "--image-size", "100000", sample_images["rgb.png"]]
    assert cli.run(predict.main, argv) == 1
    assert f"--image-size 100000 is above {MAX_IMAGE_SIZE}" in one_error_line(capsys.readouterr().err)


def test_a_stray_block_key_is_reported_without_building_that_many_blocks():
    from medmamba_jax.model_files import CheckpointError
    from medmamba_jax.params import from_torch, infer_config, load_torch_state_dict

    state_dict = load_torch_state_dict(DATA / "tiny.pth")
    stray = "layers.0.blocks.200.ln_1.weight"
    state_dict[stray] = state_dict["layers.0.blocks.0.ln_1.weight"]
    assert infer_config(state_dict).depths == infer_config(load_torch_state_dict(DATA / "tiny.pth")).depths
    with pytest.raises(CheckpointError, match=f"1 unexpected keys:\n  {stray}$"):
        from_torch(state_dict)


# ---------------------------------------------------------------- damaged checkpoints


def test_damaged_checkpoints_give_one_warning_each_and_no_train_first(tools_workdir, tmp_path, capsys, caplog):
    workdir = str(tmp_path / "copied")
    shutil.copytree(tools_workdir, workdir)
    latest = os.path.join(workdir, "checkpoints", "latest")
    steps = sorted(os.listdir(latest))
    for step in steps:  # Orbax logs an error for this file, and the weights after it are unreadable
        for damaged in ("_CHECKPOINT_METADATA", os.path.join("model", "manifest.ocdbt")):
            with open(os.path.join(latest, step, damaged), "r+b") as f:
                f.truncate(20)
    with caplog.at_level(logging.DEBUG, logger="absl"), pytest.raises(checkpointing.NoCheckpointError) as error:
        checkpointing.load_trained_checkpoint(workdir, "latest")
    assert "train first" not in str(error.value) and "can be read" in str(error.value)
    warnings = capsys.readouterr().err.strip().splitlines()
    assert len(warnings) == len(steps) and all(w.startswith("warning: checkpoint ") for w in warnings), warnings
    assert [r.getMessage()[:100] for r in caplog.records if r.levelno >= logging.WARNING] == []
