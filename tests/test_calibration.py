"""Calibration (ECE, temperature scaling, reliability.png) and test-time augmentation."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from flax import nnx
from scipy import special

from helpers import assert_png_not_blank

from medmamba_jax.cli import evaluate, predict
from medmamba_jax.cli import common as cli
from medmamba_jax.evaluation.calibration import (calibration_error, fit_temperature, negative_log_likelihood,
                                                 reliability)
from medmamba_jax.evaluation.predict import PassLogits, batched_apply, predict_scores, probabilities


def test_top_label_ece_matches_a_hand_computed_example():
    scores = np.array([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.5, 0.3, 0.2], [0.3, 0.25, 0.45], [0.025, 0.95, 0.025]])
    labels = np.array([0, 2, 0, 1, 1])  # right, wrong, right, wrong, right
    # Bins of width 1/15: 0.9 and 0.9 share bin 13 (one of two right), 0.95 is in 14, 0.5 in 7, 0.45 in 6.
    by_hand = 2 / 5 * abs(0.5 - 0.9) + 1 / 5 * abs(1 - 0.95) + 1 / 5 * abs(1 - 0.5) + 1 / 5 * abs(0 - 0.45)
    assert calibration_error(labels, scores, multi_label=False) == {"ece": pytest.approx(by_hand)}
    assert calibration_error(labels.reshape(-1, 1), scores, multi_label=False)["ece"] == pytest.approx(0.36)
    ends = reliability(np.array([0.0, 1.0]), np.array([False, True]))  # 0 and 1 fall in the first and last bins
    assert ends.counts[0] == ends.counts[-1] == 1 and ends.ece == 0.0


def test_multi_label_ece_is_the_mean_of_the_per_label_ones():
    scores = np.array([[0.1, 0.3], [0.1, 0.3], [0.8, 0.3], [0.8, 0.3]])
    labels = np.array([[0, 0], [1, 0], [1, 0], [1, 1]])
    # Label 0: bin of 0.1 half true (gap 0.4), bin of 0.8 all true (gap 0.2); label 1: 0.3 stated, 0.25 true.
    first, second = 2 / 4 * 0.4 + 2 / 4 * 0.2, 0.05
    got = calibration_error(labels, scores, multi_label=True)
    np.testing.assert_allclose(got["per_label_ece"], [first, second])
    assert got["ece"] == pytest.approx((first + second) / 2)
    assert np.isnan(calibration_error(labels, np.full((4, 2), np.nan), multi_label=True)["ece"])


def _overconfident(multi_label: bool, n: int = 4000, classes: int = 5, scale: float = 3.0):
    """Logits (n, 1, classes) that are ``scale`` times the ones the labels were drawn from."""
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 1.5, (n, classes))
    if multi_label:
        labels = (rng.random((n, classes)) < special.expit(true_logits)).astype(np.int64)
    else:
        cumulative = np.cumsum(special.softmax(true_logits, axis=1), axis=1)
        labels = np.minimum((rng.random((n, 1)) > cumulative).sum(axis=1), classes - 1)
    return scale * true_logits[:, None, :], labels


@pytest.mark.parametrize("multi_label", [False, True])
def test_a_fitted_temperature_undoes_overconfidence(multi_label):
    logits, labels = _overconfident(multi_label)
    fit = fit_temperature(logits, labels, multi_label)
    assert fit.temperature == pytest.approx(3.0, rel=0.1)
    assert fit.nll_after < fit.nll_before
    before = calibration_error(labels, np.asarray(probabilities(logits, 1.0, multi_label)), multi_label)["ece"]
    after = calibration_error(labels, np.asarray(probabilities(logits, fit.temperature, multi_label)), multi_label)
    assert after["ece"] < before / 2, (before, after)


def test_a_split_the_model_gets_all_right_drives_the_temperature_to_its_bound():
    logits = np.array([[[4.0, 0.0]], [[0.0, 3.0]], [[5.0, 1.0]]])
    fit = fit_temperature(logits, np.array([0, 1, 0]), multi_label=False)
    assert fit.unbounded and fit.temperature < 0.1 and fit.nll_after < 1e-6
    assert not fit_temperature(*_overconfident(False, n=500), multi_label=False).unbounded


@pytest.mark.parametrize("multi_label", [False, True])
def test_the_fitted_likelihood_is_that_of_the_averaged_probabilities(multi_label):
    """The NLL that picks the temperature scores what predict outputs: two passes' probabilities, averaged."""
    logits, labels = _overconfident(multi_label, n=50)
    logits = np.concatenate([logits, logits[..., ::-1]], axis=1)  # two passes that disagree
    probs = np.asarray(probabilities(logits, 1.7, multi_label), np.float64)
    if multi_label:
        expected = -np.mean(np.where(labels == 1, np.log(probs), np.log1p(-probs)))
    else:
        expected = -np.mean(np.log(probs[np.arange(len(labels)), labels]))
    assert negative_log_likelihood(logits, labels, 1.7, multi_label) == pytest.approx(expected, rel=1e-5)


class FirstRow(nnx.Module):
    """A fake model: its logits are the first row of each image's first channel, so mirroring changes them."""

    def __call__(self, x):
        return x[:, 0, :, 0]


@pytest.mark.parametrize("multi_label", [False, True])
def test_tta_probabilities_are_the_mean_of_the_two_passes(multi_label):
    images = np.random.default_rng(1).normal(0, 2, (5, 3, 4, 2)).astype(np.float32)
    logits, mirrored = images[:, 0, :, 0], images[:, 0, ::-1, 0]

    def probs(z, temperature):
        return special.expit(z / temperature) if multi_label else special.softmax(z / temperature, axis=1)

    np.testing.assert_allclose(batched_apply(PassLogits("flip"), FirstRow(), images, 2),
                               np.stack([logits, mirrored], axis=1))
    for temperature in (1.0, 2.5):  # the temperature scales each pass's logits before its softmax
        tta = predict_scores(FirstRow(), images, 2, multi_label=multi_label, temperature=temperature, tta="flip")
        expected = (probs(logits, temperature) + probs(mirrored, temperature)) / 2
        np.testing.assert_allclose(tta, expected, rtol=1e-5, atol=1e-7)
        plain = predict_scores(FirstRow(), images, 2, multi_label=multi_label, temperature=temperature)
        np.testing.assert_allclose(plain, probs(logits, temperature), rtol=1e-5, atol=1e-7)
        assert np.abs(tta - plain).max() > 1e-2


def _checkpoint_dir(workdir: str) -> str:
    best = os.path.join(workdir, "checkpoints", "best")
    (step,) = [name for name in os.listdir(best) if name.isdigit()]
    return os.path.join(best, step)


def _predicted(capsys) -> tuple[dict, str]:
    captured = capsys.readouterr()
    (line,) = captured.out.strip().splitlines()
    return json.loads(line), captured.err


def test_evaluate_calibrates_with_tta_and_predict_applies_the_temperature(workdir_copy, sample_images, tmp_path,
                                                                           capsys):
    image = sample_images["rgb.png"]
    assert cli.run(predict.main, ["--workdir", workdir_copy, "--top-k", "9", image]) == 0
    before, err = _predicted(capsys)
    assert "temperature" not in before and "applying temperature" not in err

    out = str(tmp_path / "eval")
    argv = ["--workdir", workdir_copy, "--out", out, "--batch-size", "8", "--tta", "flip"]
    assert cli.run(evaluate.main, [*argv, "--calibrate"]) == 0
    captured = capsys.readouterr()
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    saved_path = os.path.join(_checkpoint_dir(workdir_copy), "temperature.json")
    saved = json.load(open(saved_path))
    fitted = saved["temperature"]
    assert metrics["tta"] == saved["tta"] == "flip" and metrics["temperature"] == fitted != 1.0
    assert metrics["calibration"]["num_images"] == 16 and saved["fitted_on"] == "val"
    assert saved["nll_after"] <= saved["nll_before"]
    assert 0 <= metrics["ece"] <= 1 and 0 <= metrics["ece_uncalibrated"] <= 1
    assert (f"test ECE {metrics['ece_uncalibrated']:.4f} -> {metrics['ece']:.4f}; saved to {saved_path}"
            in captured.out)
    assert f"ECE {metrics['ece']:.4f} (top-label, 15 bins; at temperature {fitted:.4f}" in captured.out
    assert_png_not_blank(os.path.join(out, "reliability.png"))

    # predict applies it: each log-probability is divided by T, up to one shift per image.
    assert cli.run(predict.main, ["--workdir", workdir_copy, "--top-k", "9", image]) == 0
    after, err = _predicted(capsys)
    assert after["temperature"] == fitted and f"applying temperature {fitted:.4f} ({saved_path}" in err
    log_before, log_after = ({e["index"]: np.log(e["probability"]) for e in line["top_k"]} for line in (before, after))
    shift = np.array([log_after[k] - log_before[k] / fitted for k in range(9)])
    np.testing.assert_allclose(shift, shift.mean(), atol=1e-3)

    saved["weights_sha256"] = "0" * 64  # as if copied beside other weights
    json.dump(saved, open(saved_path, "w"))
    assert cli.run(predict.main, ["--workdir", workdir_copy, image]) == 1
    assert f"error: {saved_path} was fitted for other weights" in capsys.readouterr().err


def test_calibrate_without_a_validation_split_is_one_line(workdir_copy, tmp_path, capsys):
    data_dir = json.load(open(os.path.join(workdir_copy, "config.json")))["data_dir"]
    moved = tmp_path / "no_val"
    moved.mkdir()
    with np.load(os.path.join(data_dir, "pathmnist.npz")) as arrays:
        np.savez(moved / "pathmnist.npz", **{k: arrays[k] for k in arrays.files if not k.startswith("val_")})
    assert cli.run(evaluate.main, ["--workdir", workdir_copy, "--data-dir", str(moved), "--calibrate"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --calibrate fits the temperature on the validation split, "
                                               "and this workdir's dataset gives none: ")
    assert not os.path.exists(os.path.join(_checkpoint_dir(workdir_copy), "temperature.json"))
