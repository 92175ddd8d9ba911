"""medmamba-jax as an installed package: the wheel, the `medmamba` command, optional extras and the
preprocessing a model directory carries.

The wheel test builds the package offline, installs it into a fresh virtual environment outside
the checkout (its dependencies come from the running environment through a .pth file, so
nothing is downloaded) and runs the commands a user would.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib

import pytest
from PIL import Image

import medmamba_jax
from medmamba_jax import extras
from medmamba_jax.cli import commands, convert, explain, predict
from medmamba_jax.cli import common as cli
from medmamba_jax.model_files import CONFIG_FILE, CheckpointError, ModelCard, load_model
from medmamba_jax.data import medmnist_source
from medmamba_jax.cli.train import resolve_config
from helpers import DATA

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_LABELS = ["adipose", "background", "debris", "lymphocytes", "mucus"]  # tiny.pth has 5 outputs


def readme_library_example() -> str:
    readme = open(os.path.join(ROOT, "README.md")).read()
    section = readme[readme.index("## Install as a library"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_version_is_the_same_everywhere(capsys):
    project = tomllib.load(open(os.path.join(ROOT, "pyproject.toml"), "rb"))
    # pyproject.toml takes it from the package rather than writing it again
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "medmamba_jax.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", medmamba_jax.__version__)
    assert commands.main(["--version"]) == 0
    assert capsys.readouterr().out == f"medmamba-jax {medmamba_jax.__version__}\n"


def test_the_command_lists_its_subcommands_and_refuses_unknown_ones(capsys):
    assert commands.main(["--help"]) == 0
    listed = capsys.readouterr().out
    for name in ("train", "evaluate", "predict", "explain", "robustness", "flops", "curves", "convert", "export"):
        assert re.search(rf"^  {name} ", listed, re.M), name
    reproduce = os.path.exists(os.path.join(ROOT, "medmamba_jax", "reproduce.py"))
    assert bool(re.search(r"^  reproduce ", listed, re.M)) == reproduce
    assert commands.main(["fit"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: unknown subcommand 'fit'; one of: train, evaluate, predict,") and err.count("\n") == 1


def test_a_subcommand_runs_its_tool_with_the_remaining_arguments(tmp_path, capsys, monkeypatch):
    assert commands.main(["predict", "--checkpoint", str(tmp_path / "nowhere"), "x.png"]) == 1
    assert capsys.readouterr().err == f"error: checkpoint directory {tmp_path / 'nowhere'} does not exist\n"
    monkeypatch.setattr(sys, "argv", [os.path.join("venv", "bin", "medmamba"), "explain", "gradcam", "--help"])
    with pytest.raises(SystemExit, match="0"):
        commands.main()
    assert capsys.readouterr().out.startswith("usage: medmamba explain gradcam [-h]")  # named as the user typed it


def test_train_takes_a_recipe_name(tmp_path, monkeypatch):
    packaged = os.path.join(os.path.dirname(medmamba_jax.__file__), "configs", "medmnist.py")
    assert resolve_config("medmnist") == packaged
    monkeypatch.chdir(tmp_path)  # where configs/medmnist.py is no file, the README's path names the recipe
    assert resolve_config("configs/medmnist.py") == packaged
    assert resolve_config("smoke.py:arg") == packaged.replace("medmnist", "smoke") + ":arg"
    (tmp_path / "mine.py").write_text("")
    assert resolve_config("mine.py") == "mine.py"  # a file that exists is itself
    with pytest.raises(Exception, match=r"not a recipe name \(one of base, folder, medmnist, medmnist_x, smoke, upstream_train\)"):
        resolve_config("medmnst")


def test_a_missing_extra_is_one_line_naming_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    assert commands.main(["convert", str(DATA / "tiny.pth"), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: Reading or writing PyTorch .pth files needs torch, which is not installed: "
                          'pip install "medmamba-jax[torch]"') and err.count("\n") == 1
    monkeypatch.setitem(sys.modules, "medmnist", None)
    with pytest.raises(extras.MissingExtra, match=re.escape(extras.MEDMNIST_INSTALL)):
        medmnist_source.info("pathmnist")


def test_a_converted_checkpoint_carries_its_input_size_and_labels(sample_images, tmp_path, capsys):
    converted = str(tmp_path / "converted")
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(TINY_LABELS) + "\n")
    assert convert.main([str(DATA / "tiny.pth"), converted, "--image-size", "64", "--labels", str(labels)]) == 0
    card = load_model(converted).card
    assert (card.image_size, card.channels, card.label_names) == (64, 3, tuple(TINY_LABELS))
    assert (card.mean, card.std, card.decoding) == ((0.5,) * 3, (0.5,) * 3, "upstream")
    capsys.readouterr()
    assert cli.run(predict.main, ["--checkpoint", converted, "--top-k", "5", sample_images["rgb.png"]]) == 0
    carried = json.loads(capsys.readouterr().out)
    assert sorted(entry["class"] for entry in carried["top_k"]) == sorted(TINY_LABELS)

    # A checkpoint converted before model_config.json had a card: the flags say the same.
    config_path = os.path.join(converted, CONFIG_FILE)
    config = json.load(open(config_path))
    json.dump({k: v for k, v in config.items() if k not in ("preprocessing", "label_names", "task")},
              open(config_path, "w"))
    argv = ["--checkpoint", converted, "--top-k", "5", "--image-size", "64", "--labels", ",".join(TINY_LABELS)]
    assert cli.run(predict.main, [*argv, sample_images["rgb.png"]]) == 0
    assert json.loads(capsys.readouterr().out) == carried


def test_an_exported_workdir_predicts_as_the_workdir_does(tools_workdir, sample_images, tmp_path, capsys):
    """The tools workdir stores 28-px RGB images and feeds the model 64 px: the card keeps both."""
    exported = str(tmp_path / "exported")
    assert convert.main([tools_workdir, exported, "--which", "best"]) == 0
    card = load_model(exported).card
    assert (card.image_size, card.stored_size, card.channels, card.decoding) == (64, 28, 3, "dataset")
    files = [sample_images[name] for name in ("rgb.png", "gray.png", "rgba.png")]
    capsys.readouterr()
    assert cli.run(predict.main, ["--workdir", tools_workdir, *files]) == 0
    from_workdir = capsys.readouterr().out
    assert cli.run(predict.main, ["--checkpoint", exported, *files]) == 0
    assert capsys.readouterr().out == from_workdir
    assert cli.run(explain.main, ["gradcam", "--checkpoint", exported, files[0], "--out", str(tmp_path / "cams"),
                                  "--target", "debris"]) == 0
    assert json.loads(capsys.readouterr().out)["target"] == "debris"
    assert convert.main([tools_workdir, str(tmp_path / "again"), "--labels", "a,b"]) == 1
    assert "a workdir records its own" in capsys.readouterr().err


def test_a_model_card_survives_json_and_a_damaged_one_is_named(tmp_path):
    card = ModelCard(64, 28, 1, (0.5,) * 3, (0.5,) * 3, "dataset", ("a", "b"), "multi-label, binary-class")
    assert ModelCard.from_json(json.loads(json.dumps(card.to_json()))) == card
    assert ModelCard.from_json({}) == ModelCard()  # a model_config.json from before cards
    damaged = {"depths": [1], "dims": [8], "preprocessing": {"image_size": "64", "decoding": "pil"}}
    (tmp_path / CONFIG_FILE).write_text(json.dumps(damaged))
    with pytest.raises(CheckpointError, match=r"image_size '64' is not a positive integer; decoding 'pil' is not"):
        load_model(tmp_path)
    (tmp_path / CONFIG_FILE).write_text(json.dumps({"depths": [1, 1], "dims": [8, 16], "num_classes": 2,
                                                    "label_names": ["a"]}))
    with pytest.raises(CheckpointError, match="1 label_names for 2 outputs"):
        load_model(tmp_path)


def test_convert_refuses_labels_that_do_not_fit(tmp_path, capsys):
    assert convert.main([str(DATA / "tiny.pth"), str(tmp_path / "out"), "--labels", "a,b,c"]) == 1
    assert capsys.readouterr().err == "error: 3 label names for a model with 5 outputs\n"


def test_medmamba_train_resolves_a_recipe_and_fails_in_one_line(tmp_path):
    argv = ["train", "--config=smoke", f"--workdir={tmp_path / 'w'}", f"--config.data_dir={tmp_path / 'none'}"]
    done = subprocess.run([sys.executable, "-m", "medmamba_jax", *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 1 and done.stderr.startswith(f"error: MedMNIST file {tmp_path / 'none'}/pathmnist.npz"
                                                          " not found"), done.stderr
    assert done.stderr.count("\n") == 1


def _run(args: list[str], cwd, env) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{args}: {done.stderr[-3000:]}"
    return done.stdout


def test_the_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    source = tmp_path / "source"  # a copy, so that the build leaves nothing in the checkout
    shutil.copytree(os.path.join(ROOT, "medmamba_jax"), source / "medmamba_jax",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), source)
    offline = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "PIP_NO_INDEX": "1",
               "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "NO_PROXY": ""}
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"),
          str(source)], tmp_path, offline)
    [wheel] = os.listdir(tmp_path / "dist")
    assert wheel == f"medmamba_jax-{medmamba_jax.__version__}-py3-none-any.whl"

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python, scripts = str(venv / "bin" / "python"), venv / "bin"
    site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path, offline).strip()
    with open(os.path.join(site, "running_environment.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")  # the dependencies, and pip to install with
    _run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(tmp_path / "dist" / wheel)],
         tmp_path, offline)

    work = tmp_path / "user"
    work.mkdir()
    Image.new("RGB", (40, 30), (200, 120, 60)).save(work / "scan.png")
    where = _run([python, "-c", "import importlib.metadata as m, os, medmamba_jax as mm; "
                  "from medmamba_jax import paper; "
                  "print(mm.__file__, mm.__version__, m.version('medmamba-jax'), len(paper.table('table6_medmnist')), "
                  "os.path.isfile(os.path.join(os.path.dirname(mm.__file__), 'configs', 'medmnist.py')))"],
                 work, offline).split()
    assert where[0].startswith(site) and where[1] == where[2] == medmamba_jax.__version__
    assert int(where[3]) > 0 and where[4] == "True"  # the package data: the paper's tables, the recipes
    assert "convert" in _run([str(scripts / "medmamba"), "--help"], work, offline)
    _run([str(scripts / "medmamba"), "convert", str(DATA / "tiny.pth"), "converted", "--image-size", "64",
          "--labels", ",".join(TINY_LABELS)], work, offline)
    record = json.loads(_run([str(scripts / "medmamba"), "predict", "--checkpoint", "converted", "scan.png"],
                             work, offline))
    assert record["file"] == "scan.png" and record["prediction"] in TINY_LABELS
    name, probability = _run([python, "-c", readme_library_example()], work, offline).split()
    assert name == record["prediction"] and float(probability) == pytest.approx(record["top_k"][0]["probability"],
                                                                                abs=1e-3)
