"""The analysis commands (evaluate, predict, explain, robustness, flops, curves) on a tiny trained workdir."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import sys

import jax
import numpy as np
import pytest

from helpers import DATA, assert_png_not_blank

from medmamba_jax.cli import curves, evaluate, explain, flops, predict, robustness
from medmamba_jax.cli import common as cli
from medmamba_jax.evaluation import SUMMARY_KEYS
from medmamba_jax.inference import robustness_sweep
from medmamba_jax.inference.loaded_model import from_workdir

PATHMNIST_CLASSES = 9


def run(main, argv) -> int:
    return cli.run(main, argv)


@pytest.mark.parametrize("module", [evaluate, predict, explain, robustness, flops, curves])
def test_help(module, capsys):
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    assert "usage: python -m medmamba_jax." in capsys.readouterr().out


def test_evaluate_writes_metrics_and_plots(tools_workdir, tmp_path, capsys):
    out = str(tmp_path / "eval")
    assert run(evaluate.main, ["--workdir", tools_workdir, "--out", out, "--batch-size", "8"]) == 0
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    for key in SUMMARY_KEYS:
        assert 0.0 <= metrics[key] <= 1.0, key
    for key in ("precision", "sensitivity", "specificity", "f1", "auc"):
        values = metrics[f"per_class_{key}"]
        assert len(values) == PATHMNIST_CLASSES and all(0 <= v <= 1 for v in values if not math.isnan(v))
    results = json.load(open(os.path.join(tools_workdir, "results.json")))
    assert metrics["accuracy"] == pytest.approx(results["accuracy"])  # same best checkpoint, same test split
    assert metrics["label_names"][0] == "adipose"
    assert sum(metrics["support"]) == metrics["num_images"] == 18
    for name in ("confusion_matrix.png", "roc.png"):
        assert_png_not_blank(os.path.join(out, name))
    captured = capsys.readouterr()
    assert "macro average" in captured.out and "adipose" in captured.out
    # Progress over the 3 batches of 8; captured, stderr is no terminal: a line per batch.
    assert re.search(r"^test: 3 batches \(\d+s\)$", captured.err, re.M)
    assert re.search(r"^test: batch 3/3 done \(\d+s\)$", captured.err, re.M)


def test_evaluate_bootstrap_gives_intervals_around_the_metrics(tools_workdir, tmp_path, capsys):
    out = str(tmp_path / "eval")
    assert run(evaluate.main, ["--workdir", tools_workdir, "--out", out, "--bootstrap", "200"]) == 0
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert sorted(metrics["ci95"]) == sorted(SUMMARY_KEYS) and metrics["bootstrap_draws"] == 200
    for key, (low, high) in metrics["ci95"].items():
        assert 0.0 <= low < high <= 1.0, key  # 18 test images: every metric varies between draws
    low, high = metrics["ci95"]["accuracy"]
    assert low <= metrics["accuracy"] <= high
    captured = capsys.readouterr()
    assert f"95% bootstrap intervals (200 draws): accuracy {low:.4f}-{high:.4f}, auc" in captured.out
    assert "bootstrap test" in captured.err  # its progress bar
    with pytest.raises(SystemExit):
        evaluate.main(["--workdir", tools_workdir, "--bootstrap", "1"])
    assert "takes 0 (off) or at least 2 draws" in capsys.readouterr().err
    assert run(evaluate.main, ["--workdir", tools_workdir, "--out", out, "--limit", "1", "--bootstrap", "5"]) == 1
    assert "--bootstrap needs at least 2 images, and the test split gives 1" in capsys.readouterr().err


def test_predict_prints_top_k_and_reports_bad_files(tools_workdir, sample_images, capsys):
    files = [sample_images[n] for n in ("rgb.png", "gray.png", "notes.txt", "rgba.png", "photo.jpg", "scan.dcm")]
    assert run(predict.main, ["--workdir", tools_workdir, "--top-k", "3", *files]) == 1  # one file failed
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.strip().splitlines()]
    assert [line["file"] for line in lines] == [f for f in files if not f.endswith(".txt")]
    for line in lines:
        probs = [entry["probability"] for entry in line["top_k"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0 + 1e-6
        assert line["prediction"] == line["top_k"][0]["class"]
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert any("notes.txt" in line and "not a readable image" in line for line in errors)


def test_predict_compiles_once_when_the_last_batch_is_short(tools_workdir, sample_images, capsys, monkeypatch):
    from medmamba_jax.evaluation.predict import PassLogits

    traced, pass_logits = [], PassLogits.__call__

    def counting_pass_logits(self, model, x):  # runs only while jit traces, so it counts compilations
        traced.append(x.shape)
        return pass_logits(self, model, x)

    monkeypatch.setattr(PassLogits, "__call__", counting_pass_logits)
    files = [sample_images[n] for n in ("rgb.png", "gray.png", "rgba.png", "photo.jpg", "scan.dcm")]
    probabilities = {}
    for batch_size in (2, 5):  # 5 images: batches of 2, 2 and a padded 1; then one batch
        assert run(predict.main, ["--workdir", tools_workdir, "--top-k", "9", "--batch-size", str(batch_size), *files]) == 0
        lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
        probabilities[batch_size] = [sorted((e["index"], e["probability"]) for e in line["top_k"]) for line in lines]
    assert traced == [(2, 64, 64, 3), (5, 64, 64, 3)]
    np.testing.assert_allclose(probabilities[2], probabilities[5], atol=2e-6)


def test_gradcam_depends_on_target_class(tools_workdir, sample_images):
    import jax.numpy as jnp

    from medmamba_jax.analysis.gradcam import gradcam, head_logits
    from medmamba_jax.data.image_files import load_for_model
    from medmamba_jax.data.transforms import EvalTransform

    loaded = from_workdir(tools_workdir)
    image = load_for_model(sample_images["rgb.png"], loaded.stored_channels, loaded.stored_size)
    x = EvalTransform(loaded.image_size, loaded.in_chans)(image[None])
    # The split forward Grad-CAM differentiates is the model's own forward.
    np.testing.assert_allclose(head_logits(loaded.model, loaded.model.last_stage(x)), loaded.model(x), atol=1e-5)
    maps = [np.asarray(gradcam(loaded.model, x, jnp.array([k]))[0][0]) for k in range(PATHMNIST_CLASSES)]
    assert maps[0].shape == (64, 64) and all(0 <= m.min() and m.max() <= 1 for m in maps)
    assert max(np.abs(maps[0] - m).max() for m in maps[1:]) > 0.05
    # In closed form: the head is linear on the mean-pooled map A, so d logit_k / dA = W[:, k] / (h w)
    # at every position, and the map is ReLU(A @ W[:, k]) up to a scale that min-max removes.
    feature_map = np.asarray(loaded.model.last_stage(x))[0]
    for k in range(PATHMNIST_CLASSES):
        cam = np.maximum(feature_map @ np.asarray(loaded.model.head.kernel.value)[:, k], 0.0)
        cam = np.asarray(jax.image.resize(cam, (64, 64), method="linear"))
        spread = cam.max() - cam.min()  # 0: no positive evidence anywhere, an all-zero map
        want = (cam - cam.min()) / spread if spread > 0 else np.zeros_like(cam)
        np.testing.assert_allclose(maps[k], want, atol=1e-4, err_msg=str(k))


def test_explain_gradcam_command(tools_workdir, sample_images, tmp_path, capsys):
    out = str(tmp_path / "cams")
    twins = [tmp_path / folder / "x.png" for folder in ("a", "b")]  # one file name in two folders
    for twin in twins:
        twin.parent.mkdir()
        shutil.copy(sample_images["rgb.png"], twin)
    files = [sample_images["rgb.png"], sample_images["scan.dcm"], *map(str, twins)]
    assert run(explain.main, ["gradcam", "--workdir", tools_workdir, *files, "--out", out, "--target", "debris"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [r["target"] for r in records] == ["debris"] * 4
    assert [os.path.basename(r["figure"]) for r in records] == [
        f"{stem}_gradcam_class2.png" for stem in ("rgb", "scan", "a_x", "b_x")]  # debris is class 2
    for record in records:
        assert_png_not_blank(record["figure"])
    assert run(explain.main, ["gradcam", "--workdir", tools_workdir, files[0], "--out", sample_images["notes.txt"]]) == 1
    assert "is a file, not a directory" in capsys.readouterr().err
    assert run(explain.main, ["gradcam", "--workdir", tools_workdir, sample_images["notes.txt"], "--out", out]) == 1
    assert run(explain.main, ["gradcam", "--workdir", tools_workdir, files[0], "--out", out, "--target", "x"]) == 1


def test_curves_of_a_trained_workdir(tools_workdir, tmp_path, capsys):
    """train.py drew W/curves.png; the command draws it again, starring the run's best_metric."""
    assert_png_not_blank(os.path.join(tools_workdir, "curves.png"))
    out = str(tmp_path / "curves.png")
    assert run(curves.main, [tools_workdir, "--out", out]) == 0
    assert_png_not_blank(out)
    best = max(r["auc"] for r in map(json.loads, open(os.path.join(tools_workdir, "metrics.jsonl")))
               if r["split"] == "val")
    assert f"workdir: 1 epoch, best val auc {best:.4f} at epoch 1" in capsys.readouterr().err


def test_explain_tsne(tools_workdir, tmp_path):
    out = str(tmp_path / "tsne")
    assert run(explain.main, ["tsne", "--workdir", tools_workdir, "--split", "val", "--out", out]) == 0
    assert_png_not_blank(os.path.join(out, "tsne.png"))
    embedding = json.load(open(os.path.join(out, "tsne.json")))
    assert np.asarray(embedding["points"]).shape == (16, 2) and np.isfinite(embedding["points"]).all()


def test_robustness(tools_workdir, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "medmnistc", None)  # as if not installed
    out = str(tmp_path / "robust")
    sweep, swept = robustness_sweep.sweep, []

    def sweep_then_ctrl_c(*args):
        if swept:
            raise KeyboardInterrupt
        swept.append(sweep(*args))
        return swept[-1]

    monkeypatch.setattr(robustness_sweep, "sweep", sweep_then_ctrl_c)
    assert run(robustness.main, ["--workdir", tools_workdir, "--out", out, "--limit", "12"]) == 130
    assert "interrupted: finished perturbations are kept in" in capsys.readouterr().err
    monkeypatch.setattr(robustness_sweep, "sweep", sweep)
    assert run(robustness.main, ["--workdir", tools_workdir, "--out", out, "--limit", "12"]) == 0
    captured = capsys.readouterr()
    assert "resuming: 1 of 6 perturbations kept" in captured.err
    notices = [line for line in (captured.out + captured.err).splitlines() if "not installed" in line]
    assert len(notices) == 1, notices  # said once, in the closing summary
    table = json.load(open(os.path.join(out, "robustness.json")))
    assert not os.path.exists(os.path.join(out, robustness_sweep.PARTIAL_FILE))  # finished: nothing left to resume
    assert set(table["perturbations"]) == {"rotation", "translation", "colour_temperature", "gaussian_noise",
                                           "blur", "contrast"}
    for entry in table["perturbations"].values():
        assert [row["severity"] for row in entry["results"]] == [0, 1, 2, 3, 4, 5]
        for row in entry["results"]:
            assert all(0 <= row[k] <= 1 for k in ("accuracy", "precision", "sensitivity", "specificity", "f1"))
    for metric in robustness.METRICS:
        assert_png_not_blank(os.path.join(out, f"robustness_{metric}.png"))


@pytest.mark.parametrize("argv, message", [
    (["--split", "tset"], "unknown split 'tset'"),
    (["--which", "best"], "no checkpoint"),
])
def test_bad_inputs(tmp_path, capsys, argv, message):
    workdir = tmp_path / "empty"
    workdir.mkdir()
    (workdir / "config.json").write_text("{}")  # a config but no checkpoints
    assert run(evaluate.main, ["--workdir", str(workdir), *argv]) == 1
    assert message in capsys.readouterr().err


def test_missing_workdir(tmp_path, capsys):
    for main, extra in ((evaluate.main, []), (predict.main, ["x.png"]), (robustness.main, ["--out", str(tmp_path)])):
        assert run(main, ["--workdir", str(tmp_path / "nowhere"), *extra]) == 1
        assert "does not exist" in capsys.readouterr().err
    pth = tmp_path / "MedMamba.pth"
    pth.write_bytes(b"")
    assert run(predict.main, ["--checkpoint", str(pth), "--image-size", "32", "x.png"]) == 1
    assert f"convert it first: python -m medmamba_jax.convert {pth} DIR" in capsys.readouterr().err


def test_a_moved_dataset_is_named_and_found_with_data_dir(workdir_copy, tmp_path, capsys):
    workdir = workdir_copy
    config_path = os.path.join(workdir, "config.json")
    config = json.load(open(config_path))
    data_dir, config["data_dir"] = config["data_dir"], str(tmp_path / "gone")
    json.dump(config, open(config_path, "w"))
    assert run(evaluate.main, ["--workdir", workdir, "--out", str(tmp_path / "a")]) == 1
    err = capsys.readouterr().err
    assert "not found" in err and "pass --data-dir if it moved" in err and len(err.strip().splitlines()) == 1
    assert run(evaluate.main, ["--workdir", workdir, "--out", str(tmp_path / "b"), "--data-dir", data_dir]) == 0
    metrics = json.load(open(tmp_path / "b" / "metrics.json"))
    assert metrics["accuracy"] == pytest.approx(json.load(open(os.path.join(workdir, "results.json")))["accuracy"])


def test_a_missing_or_unreadable_best_checkpoint_is_named_not_passed_off_as_best(workdir_copy, tmp_path, capsys):
    workdir = workdir_copy
    best = os.path.join(workdir, "checkpoints", "best")
    step = int(os.listdir(best)[0])
    for damage in ("unreadable", "missing"):
        if damage == "unreadable":
            for root, _, names in os.walk(os.path.join(best, str(step), "model")):
                for name in names:
                    open(os.path.join(root, name), "wb").close()
        else:
            shutil.rmtree(best)
        out = str(tmp_path / damage)
        assert run(evaluate.main, ["--workdir", workdir, "--out", out]) == 0
        captured = capsys.readouterr()
        assert f"holds no readable checkpoint; using the latest one (step {step})" in captured.err, damage
        assert f"latest checkpoint, step {step})" in captured.out
        metrics = json.load(open(os.path.join(out, "metrics.json")))
        assert (metrics["checkpoint"], metrics["step"]) == ("latest", step)


@pytest.mark.parametrize("damaged", ["config.json", "dataset.json"])
def test_a_damaged_workdir_json_is_one_line(workdir_copy, capsys, damaged):
    workdir = workdir_copy
    with open(os.path.join(workdir, damaged), "w") as f:
        f.write('{"x":')
    assert run(predict.main, ["--workdir", workdir, "x.png"]) == 1
    err = capsys.readouterr().err
    assert f"{damaged} is not valid JSON" in err and len(err.strip().splitlines()) == 1


def test_unknown_split_on_trained_workdir(tools_workdir, tmp_path, capsys):
    assert run(explain.main, ["tsne", "--workdir", tools_workdir, "--split", "validation", "--out", str(tmp_path)]) == 1
    assert "unknown split 'validation'" in capsys.readouterr().err


def test_flops_counts_every_scan_iteration(monkeypatch):
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from medmamba_jax.analysis import flop_count

    def looped(x, steps):
        return jax.lax.scan(lambda c, _: (c @ x, None), x, None, length=steps)[0]

    x = jax.ShapeDtypeStruct((32, 32), jnp.float32)
    one = flop_count.counted_flops(lambda a: looped(a, 1), x)["xla_flops"]
    many = flop_count.counted_flops(lambda a: looped(a, 12), x)
    assert many["xla_flops_raw"] == pytest.approx(one, rel=0.01)  # XLA alone: the body once
    assert many["xla_flops"] == pytest.approx(12 * one, rel=0.01)
    compiled = []
    count_compiles = flop_count._xla_flops
    monkeypatch.setattr(flop_count, "_xla_flops", lambda traced: compiled.append(traced) or count_compiles(traced))
    twice = flop_count.counted_flops(lambda a: looped(looped(a, 12), 12), x)
    assert twice["xla_flops"] == pytest.approx(24 * one, rel=0.01)
    assert len(compiled) == 2  # the program, and the scan body both scans run, once
    linear = nnx.Linear(8, 4, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(linear)
    macs = flop_count.macs(lambda s, a: nnx.merge(graphdef, s)(a), state, np.zeros((2, 8), np.float32))
    assert macs == {"conv": 0.0, "linear": 2 * 8 * 4, "batched": 0.0}


def test_flops_command(capsys):
    argv = ["--depths", "1", "1", "1", "1", "--dims", "8", "16", "32", "64", "--image-size", "32", "--num-classes",
            "9", "--json"]
    assert run(flops.main, argv) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[0])
    assert row["params"] == 73765 and row["xla_gflops"] > row["fvcore_scan_gmacs"] > row["hooks_gmacs"] > 0
    assert run(flops.main, [*argv[:10], "--image-size", "31"]) == 1  # the four-stage model's minimum is 32
    assert "--image-size must be at least 32 for this model" in capsys.readouterr().err
    assert run(flops.main, ["--depths", "1", "1", "--dims", "8", "24"]) == 1
    assert "each of dims must be twice the one before" in capsys.readouterr().err
    three_stages = ["--depths", "1", "1", "1", "--dims", "8", "16", "32", "--image-size", "20", "--json"]
    assert run(flops.main, three_stages) == 0  # any side from 4 * 2**2 = 16 up, not only multiples of 32
    assert json.loads(capsys.readouterr().out.strip().splitlines()[0])["image_size"] == 20


def test_predict_on_a_converted_upstream_checkpoint(sample_images, tmp_path, capsys):
    from medmamba_jax.cli import convert
    from medmamba_jax.model_files import load_model

    converted = str(tmp_path / "converted")
    assert convert.main([str(DATA / "tiny.pth"), converted]) == 0
    argv = ["--checkpoint", converted, "--image-size", "64", "--labels", "a,b,c,d,e", "--top-k", "5"]
    assert run(predict.main, [*argv, sample_images["rgb.png"]]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert sorted(entry["class"] for entry in line["top_k"]) == ["a", "b", "c", "d", "e"]
    assert sum(entry["probability"] for entry in line["top_k"]) == pytest.approx(1.0, abs=1e-5)
    capsys.readouterr()
    tiny_side = load_model(converted).config.min_image_size
    argv[3] = str(tiny_side - 1)
    assert run(predict.main, [*argv, sample_images["rgb.png"]]) == 1
    assert f"below this model's minimum, {tiny_side}" in capsys.readouterr().err


def test_nonfinite_weights_are_refused_and_never_give_a_prediction(sample_images, tmp_path, capsys):
    import jax.numpy as jnp

    from medmamba_jax import from_torch
    from medmamba_jax.model_files import save_model

    model = from_torch(DATA / "tiny.pth")
    model.head.bias.value = model.head.bias.value.at[0].set(jnp.nan)
    save_model(tmp_path / "nan", model)
    argv = ["--checkpoint", str(tmp_path / "nan"), "--image-size", "64", sample_images["rgb.png"]]
    assert run(predict.main, argv) == 1
    assert capsys.readouterr().err == (f"error: {tmp_path / 'nan'}: NaN or inf in 1 tensor: head.bias; such a model "
                                       "gives NaN scores; --allow-nonfinite loads it anyway\n")
    assert run(predict.main, [*argv, "--allow-nonfinite"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and f"error: {sample_images['rgb.png']}: the model's scores are NaN or inf; no prediction" in err


def test_a_converted_checkpoint_decodes_files_as_upstream_does(sample_images, tmp_path, capsys):
    """Upstream evaluates Image.open(f).convert("RGB"): alpha is dropped, not composited, so
    rgba.png (rgb.png at alpha 128) must score as rgb.png does; a workdir model composites."""
    from medmamba_jax.cli import convert

    converted = str(tmp_path / "converted")
    assert convert.main([str(DATA / "tiny.pth"), converted]) == 0
    argv = ["--checkpoint", converted, "--image-size", "64", "--top-k", "5"]
    assert run(predict.main, [*argv, sample_images["rgb.png"], sample_images["rgba.png"]]) == 0
    rgb, rgba = (json.loads(line)["top_k"] for line in capsys.readouterr().out.strip().splitlines()[-2:])
    assert rgb == rgba


def test_converted_checkpoints_that_cannot_classify_are_one_line(sample_images, tmp_path, capsys):
    import torch

    from medmamba_jax.cli import convert

    headless = {k: v for k, v in torch.load(DATA / "tiny.pth", weights_only=True).items() if not k.startswith("head.")}
    torch.save(headless, tmp_path / "features.pth")
    assert convert.main([str(tmp_path / "features.pth"), str(tmp_path / "features")]) == 0
    edited = str(tmp_path / "edited")
    assert convert.main([str(DATA / "tiny.pth"), edited]) == 0
    config = json.load(open(os.path.join(edited, "model_config.json")))
    json.dump({**config, "num_classes": 7}, open(os.path.join(edited, "model_config.json"), "w"))
    capsys.readouterr()
    for directory, message in ((str(tmp_path / "features"), "without a classification head (num_classes 0)"),
                               (edited, "model_config.json does not describe the weights in state/ (head.bias: saved (5,), config (7,)")):
        assert run(predict.main, ["--checkpoint", directory, "--image-size", "64", sample_images["rgb.png"]]) == 1
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    tiny = str(tmp_path / "tiny")
    assert convert.main([str(DATA / "tiny.pth"), tiny]) == 0
    for labels, message in (("a,b,c,d,", "5 distinct, non-empty names; one is empty"),
                            ("a,a,b,b,c", "repeated: ['a', 'b']")):
        capsys.readouterr()
        assert run(predict.main, ["--checkpoint", tiny, "--image-size", "64", "--labels", labels,
                                  sample_images["rgb.png"]]) == 1
        assert message in capsys.readouterr().err


def _as_folder_workdir(tools_workdir, tmp_path, names, saved_names: bool):
    """A copy of the tools workdir relabelled as trained on an image folder of ``names``
    (train/<name>/0.png each, test images of the 4th and 6th class), with or without the
    dataset.json that training now writes."""
    from PIL import Image

    workdir, root = tmp_path / "folder_run", tmp_path / "folder_data"
    shutil.copytree(tools_workdir, workdir)
    for split, classes in (("train", names), ("test", [names[3], names[5]])):
        for name in classes:
            os.makedirs(root / split / name)
            Image.fromarray(np.full((20, 20, 3), 40, np.uint8)).save(root / split / name / "0.png")
    config = json.load(open(workdir / "config.json"))
    config.update(dataset="folder", data_dir=str(root))
    json.dump(config, open(workdir / "config.json", "w"))
    info = {"task": "multi-class", "label_names": names, "n_channels": 3, "num_classes": len(names),
            "multi_label": False}
    if saved_names:
        json.dump(info, open(workdir / "dataset.json", "w"))
    else:
        os.remove(workdir / "dataset.json")
    return str(workdir), root


def test_a_folder_workdir_names_classes_as_trained_when_the_folder_changes(tools_workdir, sample_images, tmp_path,
                                                                           capsys):
    names = [f"tissue{i}" for i in range(PATHMNIST_CLASSES)]
    assert json.load(open(os.path.join(tools_workdir, "dataset.json")))["num_classes"] == PATHMNIST_CLASSES
    workdir, root = _as_folder_workdir(tools_workdir, tmp_path, names, saved_names=True)
    os.makedirs(root / "train" / "aaa_new")  # sorts first: read from the folder, every index would shift
    assert run(predict.main, ["--workdir", workdir, "--top-k", "9", sample_images["rgb.png"]]) == 0
    top = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["top_k"]
    assert all(entry["class"] == names[entry["index"]] for entry in top)
    moved = tmp_path / "moved_data"
    shutil.move(root, moved)
    out = tmp_path / "eval"
    assert run(evaluate.main, ["--workdir", workdir, "--out", str(out), "--data-dir", str(moved)]) == 0
    metrics = json.load(open(out / "metrics.json"))
    assert metrics["label_names"] == names and metrics["support"] == [0, 0, 0, 1, 0, 1, 0, 0, 0]


def test_a_workdir_without_saved_classes_refuses_a_changed_folder(tools_workdir, sample_images, tmp_path, capsys):
    names = [f"tissue{i}" for i in range(PATHMNIST_CLASSES)]
    workdir, root = _as_folder_workdir(tools_workdir, tmp_path, names, saved_names=False)
    assert run(predict.main, ["--workdir", workdir, sample_images["rgb.png"]]) == 0  # the folder still fits
    capsys.readouterr()
    os.makedirs(root / "train" / "aaa_new")
    assert run(predict.main, ["--workdir", workdir, sample_images["rgb.png"]]) == 1
    assert "the dataset has 10 classes but the model outputs 9" in capsys.readouterr().err
