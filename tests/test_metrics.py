"""compute_metrics against scikit-learn and medmnist.Evaluator on random scores."""

import numpy as np
import pytest
from sklearn import metrics as skm

from medmamba_jax.evaluation import compute_metrics, metrics_and_outcomes
from helpers import fresh_rng


def _softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _evaluator(root, flag, split, scores):
    from medmnist import Evaluator

    return Evaluator(flag, split, root=root).evaluate(scores)


def _npz_labels(root, flag, split):
    return np.load(f"{root}/{flag}.npz")[f"{split}_labels"]


@pytest.mark.parametrize("flag", ["pathmnist", "breastmnist", "chestmnist"])
def test_acc_and_auc_equal_medmnist_evaluator(fake_medmnist_dir, flag):
    labels = _npz_labels(fake_medmnist_dir, flag, "test")
    rng = np.random.default_rng(1)
    if flag == "chestmnist":
        task, scores = "multi-label, binary-class", rng.random(labels.shape)
    else:
        task = "binary-class" if flag == "breastmnist" else "multi-class"
        scores = _softmax(rng.normal(size=(len(labels), int(labels.max()) + 1)) + 2 * np.eye(int(labels.max()) + 1)[labels[:, 0]])
    ours = compute_metrics(labels, scores, task)
    theirs = _evaluator(fake_medmnist_dir, flag, "test", scores)
    assert ours["accuracy"] == pytest.approx(theirs.ACC, abs=1e-12)
    assert ours["auc"] == pytest.approx(theirs.AUC, abs=1e-12)


def test_multiclass_macro_metrics_equal_sklearn():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 200)
    scores = _softmax(rng.normal(size=(200, 5)) + 1.5 * np.eye(5)[labels])
    pred = scores.argmax(1)
    got = compute_metrics(labels, scores, "multi-class")
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(labels, pred))
    assert got["precision"] == pytest.approx(skm.precision_score(labels, pred, average="macro", zero_division=0))
    assert got["sensitivity"] == pytest.approx(skm.recall_score(labels, pred, average="macro"))
    assert got["f1"] == pytest.approx(skm.f1_score(labels, pred, average="macro"))
    assert got["auc"] == pytest.approx(skm.roc_auc_score(labels, scores, multi_class="ovr", average="macro"))
    cm = skm.confusion_matrix(labels, pred)
    specificity = [(cm.sum() - cm[k].sum() - cm[:, k].sum() + cm[k, k]) / (cm.sum() - cm[k].sum()) for k in range(5)]
    assert got["specificity"] == pytest.approx(np.mean(specificity))
    assert got["confusion_matrix"] == cm.tolist()
    assert len(got["per_class_f1"]) == 5


def test_binary_sensitivity_equals_specificity():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 100)
    scores = _softmax(rng.normal(size=(100, 2)))
    got = compute_metrics(labels, scores, "binary-class")
    assert got["sensitivity"] == pytest.approx(got["specificity"])
    assert got["auc"] == pytest.approx(skm.roc_auc_score(labels, scores[:, 1]))


def test_multilabel_per_label_metrics_equal_sklearn():
    rng = np.random.default_rng(3)
    labels = (rng.random((150, 4)) < 0.4).astype(int)
    scores = np.clip(labels * 0.4 + rng.random((150, 4)) * 0.6, 0, 1)
    got = compute_metrics(labels, scores, "multi-label, binary-class")
    pred = (scores > 0.5).astype(int)
    assert got["precision"] == pytest.approx(skm.precision_score(labels, pred, average="macro", zero_division=0))
    assert got["sensitivity"] == pytest.approx(skm.recall_score(labels, pred, average="macro"))
    assert got["auc"] == pytest.approx(skm.roc_auc_score(labels, scores, average="macro"))


@pytest.mark.parametrize("task", ["multi-class", "multi-label, binary-class"])
def test_outcome_counts_equal_sklearn(task):
    rng = np.random.default_rng(5)
    if task == "multi-class":
        labels, scores = rng.integers(0, 5, 120), _softmax(rng.normal(size=(120, 5)))
        truth, pred = np.eye(5, dtype=bool)[labels], np.eye(5, dtype=bool)[scores.argmax(axis=1)]
    else:
        labels, scores = (rng.random((120, 4)) < 0.4).astype(int), rng.random((120, 4))
        truth, pred = labels.astype(bool), scores > 0.5
    metrics, got_truth, counts = metrics_and_outcomes(labels, scores, task)
    (tn, fp), (fn, tp) = np.moveaxis(skm.multilabel_confusion_matrix(truth, pred), 0, -1)
    np.testing.assert_array_equal(counts, np.stack([tp, fn, fp, tn], axis=1))  # metrics.OUTCOMES order
    np.testing.assert_array_equal(got_truth, truth)
    assert metrics == compute_metrics(labels, scores, task)


def test_absent_class_gets_nan_auc_and_is_left_out():
    labels = np.array([0, 1, 0, 1])
    scores = _softmax(np.random.default_rng(4).normal(size=(4, 3)))
    got = compute_metrics(labels, scores, "multi-class")
    assert np.isnan(got["per_class_auc"][2]) and np.isfinite(got["auc"])


@pytest.mark.parametrize("task", ["multi-class", "ordinal-regression"])
def test_a_class_neither_true_nor_predicted_is_left_out_of_the_macros(task):
    rng = fresh_rng()
    labels = rng.integers(0, 3, 60)  # classes 3 and 4 of 5 never occur ...
    logits = rng.normal(size=(60, 5)) + 2.0 * np.eye(5)[labels]
    logits[:, 4] -= 100.0  # ... class 4 is never predicted either ...
    logits[0, 3] += 100.0  # ... and class 3 is, falsely, so it stays in the macros
    pred = logits.argmax(1)
    got = compute_metrics(labels, _softmax(logits), task)
    assert got["precision"] == pytest.approx(skm.precision_score(labels, pred, average="macro", zero_division=0))
    assert got["sensitivity"] == pytest.approx(skm.recall_score(labels, pred, average="macro", zero_division=0))
    assert got["f1"] == pytest.approx(skm.f1_score(labels, pred, average="macro", zero_division=0))
    for name in ("precision", "sensitivity", "specificity", "f1"):
        assert np.isnan(got[f"per_class_{name}"][4]) and np.isfinite(got[f"per_class_{name}"][:3]).all(), name
    perfect = compute_metrics(labels, np.eye(5)[labels], task)  # right on every image it saw
    assert [perfect[k] for k in ("precision", "sensitivity", "specificity", "f1")] == [1.0, 1.0, 1.0, 1.0]


def test_multi_label_scores_are_per_label_sigmoids():
    import jax
    from flax import nnx

    from medmamba_jax.evaluation import predict_scores

    class FirstPixels(nnx.Module):  # logits: the first three values of each image
        def __call__(self, x):
            return x.reshape(x.shape[0], -1)[:, :3]

    images = np.random.default_rng(0).normal(size=(5, 2, 2, 1)).astype(np.float32) * 3
    logits = images.reshape(5, -1)[:, :3]
    multi = predict_scores(FirstPixels(), images, 2, multi_label=True)
    np.testing.assert_allclose(multi, 1 / (1 + np.exp(-logits)), rtol=1e-6)
    np.testing.assert_allclose(predict_scores(FirstPixels(), images, 2), jax.nn.softmax(logits), rtol=1e-6)


def test_bad_task_and_shapes_are_rejected():
    with pytest.raises(ValueError, match="unknown task"):
        compute_metrics(np.zeros(3), np.zeros((3, 2)), "regression")
    with pytest.raises(ValueError, match="scores must be"):
        compute_metrics(np.zeros(3), np.zeros((4, 2)), "multi-class")


def test_bootstrap_interval_of_accuracy_is_the_binomial_one():
    """For accuracy (a mean of n hits) the bootstrap interval must match p ± 1.96·sqrt(p(1-p)/n);
    it would be far off if labels and scores were drawn apart, or the images not replaced."""
    from medmamba_jax.evaluation.bootstrap import bootstrap_intervals

    rng = fresh_rng()
    n = 1000
    labels = rng.integers(0, 2, n)
    scores = _softmax(rng.normal(size=(n, 2)) + 1.2 * np.eye(2)[labels])
    intervals = bootstrap_intervals(labels, scores, "binary-class", resamples=400, seed=3)
    p = compute_metrics(labels, scores, "binary-class")["accuracy"]
    half = 1.96 * np.sqrt(p * (1 - p) / n)  # 0.028 at p = 0.7; resampling noise in the ends is ~0.003
    np.testing.assert_allclose(intervals["accuracy"], (p - half, p + half), atol=0.008)
    for key, (low, high) in intervals.items():
        assert 0.0 <= low < high <= 1.0, key
    assert bootstrap_intervals(labels, scores, "binary-class", resamples=400, seed=3) == intervals
    assert bootstrap_intervals(labels, scores, "binary-class", resamples=400, seed=4) != intervals


def test_bootstrap_interval_of_an_undefined_auc_is_nan():
    from medmamba_jax.evaluation.bootstrap import bootstrap_intervals

    labels = np.array([0, 0, 0, 0, 1])  # many draws hold no positive: their AUC is undefined
    scores = _softmax(np.eye(2)[labels] * 2.0)
    intervals = bootstrap_intervals(labels, scores, "binary-class", resamples=50)
    assert np.isnan(intervals["auc"]).all() and intervals["accuracy"] == (1.0, 1.0)
    with pytest.raises(ValueError, match="resamples must be at least 2"):
        bootstrap_intervals(labels, scores, "binary-class", resamples=1)
