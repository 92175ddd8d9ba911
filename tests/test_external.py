"""evaluate --folder: an external test folder scored with a trained workdir, its classes matched by name."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
from PIL import Image

from helpers import assert_png_not_blank

from medmamba_jax.cli import evaluate, predict
from medmamba_jax.cli import common as cli
from medmamba_jax.evaluation import compute_metrics
from medmamba_jax.evaluation.external import ClassMatchError, match_classes, parse_class_map

TRAINED = ["adipose", "background", "smooth muscle", "normal colon mucosa"]


def test_classes_match_by_name_ignoring_case_and_separators():
    assert match_classes(["Adipose", "SMOOTH_MUSCLE", "normal-colon  mucosa"], TRAINED) == {
        "Adipose": 0, "SMOOTH_MUSCLE": 2, "normal-colon  mucosa": 3}
    mapped = match_classes(["fat", "bg", "other"], TRAINED, parse_class_map("fat=adipose, bg = Background"), ["other"])
    assert mapped == {"fat": 0, "bg": 1}
    assert match_classes(["fat", "lipid"], TRAINED, {"fat": "adipose", "lipid": "adipose"}) == {"fat": 0, "lipid": 0}


@pytest.mark.parametrize("folder, class_map, dropped, message", [
    (["adipose", "covid"], None, None, "folder classes ['covid'] match no trained class"),
    (["adipose"], {"adipose": "fat"}, None, "maps 'adipose' to 'fat', which is not a trained class"),
    (["adipose"], None, ["covid"], "names ['covid'], which are not class folders here"),
    (["adipose"], None, ["adipose"], "every folder class is dropped"),
    (["adipose"], {"adipose": "adipose"}, ["adipose"], "both mapped (--class-map) and dropped"),
])
def test_unmatchable_classes_are_refused(folder, class_map, dropped, message):
    with pytest.raises(ClassMatchError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        match_classes(folder, TRAINED, class_map, dropped)
    with pytest.raises(ClassMatchError, match="pairs separated by commas"):
        parse_class_map("adipose")


def test_metrics_over_the_scored_classes_only():
    # Class 2 is trained but absent; one image of class 0 is predicted as class 2.
    scores = np.array([[0.8, 0.1, 0.1], [0.1, 0.1, 0.8], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1]])
    labels = np.array([0, 0, 1, 1])
    metrics = compute_metrics(labels, scores, "multi-class", scored=np.array([True, True, False]))
    assert metrics["accuracy"] == 0.75
    assert math.isnan(metrics["per_class_f1"][2]) and math.isnan(metrics["per_class_auc"][2])
    assert metrics["sensitivity"] == pytest.approx((0.5 + 1.0) / 2)  # over classes 0 and 1 only
    assert metrics["precision"] == pytest.approx((1.0 + 1.0) / 2)
    assert metrics["f1"] == pytest.approx((2 / 3 + 1.0) / 2)
    unscored = compute_metrics(labels, scores, "multi-class")  # class 2, predicted once, pulls the macros down
    assert unscored["sensitivity"] == pytest.approx(0.5)
    binary = compute_metrics(np.array([1, 1]), np.array([[0.3, 0.7], [0.6, 0.4]]), "binary-class",
                             scored=np.array([False, True]))
    assert binary["accuracy"] == 0.5 and math.isnan(binary["auc"]) and binary["sensitivity"] == 0.5


@pytest.fixture
def external_folder(tmp_path):
    """adipose (3 images, named differently), mucus (3, under another name), a COVID class to drop,
    and one unreadable file."""
    rng = np.random.default_rng(1)
    files = {"ADIPOSE": 3, "slime": 3, "covid": 1}
    for name, count in files.items():
        os.makedirs(tmp_path / "ext" / name)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (36, 30, 3), dtype=np.uint8)).save(tmp_path / "ext" / name / f"{i}.png")
    (tmp_path / "ext" / "slime" / "notes.txt").write_text("not an image")
    (tmp_path / "ext" / "ADIPOSE" / ".DS_Store").write_text("hidden")
    return str(tmp_path / "ext")


def test_evaluate_folder_scores_the_matched_classes(tools_workdir, external_folder, tmp_path, capsys):
    out = str(tmp_path / "out")
    argv = ["--workdir", tools_workdir, "--folder", external_folder, "--out", out,
            "--class-map", "slime=mucus", "--drop-class", "covid", "--batch-size", "8"]  # test_tools' batch: compiled once
    assert cli.run(evaluate.main, argv) == 0
    captured = capsys.readouterr()
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert metrics["num_images"] == 6 and metrics["scored_classes"] == ["adipose", "mucus"]
    assert metrics["class_map"] == {"ADIPOSE": "adipose", "covid": None, "slime": "mucus"}
    assert len(metrics["unread_files"]) == 1 and "notes.txt" in metrics["unread_files"][0]
    assert "1 of 7 files are not readable" in captured.err
    names = metrics["label_names"]
    assert metrics["support"] == [3 if n in ("adipose", "mucus") else 0 for n in names]
    for k, name in enumerate(names):
        if name not in ("adipose", "mucus"):
            assert math.isnan(metrics["per_class_sensitivity"][k]), name
    # predict classifies the same files the same way: the accuracy is its share of right answers
    # (6 files: the batch of test_tools' predict test, so no new compilation).
    paths = [os.path.join(external_folder, d, f) for d in ("ADIPOSE", "slime") for f in sorted(os.listdir(
        os.path.join(external_folder, d))) if f.endswith(".png")]
    assert cli.run(predict.main, ["--workdir", tools_workdir, *paths]) == 0
    predicted = [json.loads(line)["prediction"] for line in capsys.readouterr().out.splitlines()]
    right = sum(p == ("adipose" if "ADIPOSE" in path else "mucus") for p, path in zip(predicted, paths))
    assert metrics["accuracy"] == pytest.approx(right / 6)
    assert "scored classes (the macro averages): adipose, mucus" in captured.out
    for name in ("confusion_matrix.png", "roc.png"):
        assert_png_not_blank(os.path.join(out, name))


def test_evaluate_folder_refuses_an_unmatched_class(tools_workdir, external_folder, capsys):
    assert cli.run(evaluate.main, ["--workdir", tools_workdir, "--folder", external_folder]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "folder classes ['covid', 'slime'] match no trained class" in err
    assert "the trained classes: ['adipose', 'background'," in err and "--drop-class FOLDER_NAME" in err
    with pytest.raises(SystemExit):
        evaluate.parse_args(["--workdir", "w", "--folder", "f", "--split", "val"])
    assert "--split and --limit are for a dataset split" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate.parse_args(["--workdir", "w", "--drop-class", "covid"])
    assert "need --folder" in capsys.readouterr().err
