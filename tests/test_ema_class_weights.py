"""Weight EMA and class weights: the EMA update and the weighted losses against hand computations,
the balanced weights, both as settings of the run, and one tiny run with both that resumes bit for
bit. Bad values of the keys are in test_train_units.test_bad_config_values."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from medmamba_jax.models import MedMamba
from medmamba_jax.training import class_weights, ema, model_init, steps
from medmamba_jax.training.config import default_config, model_config, run_changes, validate
from medmamba_jax.training.errors import ConfigError


class LinearBatchNorm(nnx.Module):
    def __init__(self):
        rngs = nnx.Rngs(0)
        self.linear = nnx.Linear(2, 3, rngs=rngs)
        self.norm = nnx.BatchNorm(3, rngs=rngs)

    def __call__(self, x):
        return self.norm(self.linear(x))


def _averaged(model) -> list[np.ndarray]:
    """The Params and BatchStats, in a fixed order."""
    return [np.array(x) for x in jax.tree.leaves(nnx.to_pure_dict(nnx.state(model, ema.AVERAGED)))]


def test_ema_averages_params_and_batch_stats_once_per_optimizer_update():
    """With 2 micro-steps per update, the average moves on every second update call only, by
    ema = d * ema + (1 - d) * weights, BatchNorm's running statistics included."""
    model, decay, x = LinearBatchNorm(), 0.75, jnp.arange(8.0).reshape(4, 2)
    optimizer = ema.make_optimizer(model, optax.MultiSteps(optax.sgd(0.1), every_k_schedule=2), decay, every=2)
    expected = _averaged(model)
    for call in range(1, 7):
        grads = nnx.grad(lambda m: (m(x) ** 2).mean())(model)  # a train-mode call: the BatchStats move too
        optimizer.update(model, grads)
        if call % 2 == 0:
            expected = [decay * e + (1 - decay) * w for e, w in zip(expected, _averaged(model))]
        got = [np.array(x) for x in jax.tree.leaves(nnx.to_pure_dict(nnx.state(optimizer)["ema"]))]
        for e, g in zip(expected, got, strict=True):
            np.testing.assert_allclose(g, e, rtol=1e-6, atol=1e-7)
    assert not np.allclose(expected[0], _averaged(model)[0])  # the average lags the weights


def test_the_evaluated_state_is_the_average_and_leaves_the_training_state_alone():
    model = LinearBatchNorm()
    optimizer = ema.make_optimizer(model, optax.sgd(0.5), 0.5, every=1)
    x = jnp.ones((4, 2))
    optimizer.update(model, nnx.grad(lambda m: (m(x) ** 2).mean())(model))
    model_def, model_state = nnx.split(model)
    opt_state = nnx.state(optimizer)
    trained = _averaged(model)
    averaged = ema.averaged_state(model_state, opt_state)
    want = jax.tree.leaves(nnx.to_pure_dict(opt_state["ema"]))
    for got, w in zip(jax.tree.leaves(nnx.to_pure_dict(nnx.state(averaged, ema.AVERAGED))), want, strict=True):
        np.testing.assert_array_equal(got, w)
    for a, b in zip(_averaged(nnx.merge(model_def, model_state)), trained, strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(w, t) for w, t in zip(want, trained))  # so the checks above tell them apart


def test_no_ema_keeps_the_optimizer_state_of_before():
    """ema_decay 0: a plain nnx.Optimizer, so an existing workdir's 'opt' item restores unchanged."""
    optimizer = ema.make_optimizer(LinearBatchNorm(), optax.adamw(1e-3), 0.0, every=1)
    assert type(optimizer) is nnx.Optimizer and "ema" not in nnx.state(optimizer)


def test_weighted_cross_entropy_is_the_weight_normalised_mean():
    logits = np.array([[2.0, -1.0, 0.5], [-3.0, 0.0, 4.0], [0.1, 0.2, 0.3]], np.float64)
    labels, weights = np.array([0, 2, 2]), np.array([3.0, 1.0, 0.5])
    log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    ce = -log_softmax[np.arange(3), labels]
    want = (weights[labels] * ce).sum() / weights[labels].sum()  # (3 ce0 + 0.5 ce1 + 0.5 ce2) / 4
    got = steps.loss_fn(jnp.asarray(logits, jnp.float32), jnp.asarray(labels), False, jnp.asarray(weights))
    assert float(got) == pytest.approx(want, rel=1e-6)
    equal = steps.loss_fn(jnp.asarray(logits, jnp.float32), jnp.asarray(labels), False, jnp.full(3, 2.0))
    assert float(equal) == pytest.approx(ce.mean(), rel=1e-6)


def test_weighted_bce_weights_each_labels_positives():
    logits = np.array([[2.0, -1.0], [-3.0, 0.5]], np.float64)
    targets, pos_weight = np.array([[1, 0], [1, 1]]), np.array([4.0, 0.5])
    p = 1 / (1 + np.exp(-logits))
    want = -(pos_weight * targets * np.log(p) + (1 - targets) * np.log(1 - p)).mean()
    got = steps.loss_fn(jnp.asarray(logits, jnp.float32), jnp.asarray(targets), True, jnp.asarray(pos_weight))
    assert float(got) == pytest.approx(want, rel=1e-6)


PATH_INFO = {"label_names": ["a", "b", "c"], "multi_label": False}
CHEST_INFO = {"label_names": ["x", "y"], "multi_label": True}


def test_balanced_weights_are_sklearns_and_negatives_over_positives_per_label():
    from sklearn.utils.class_weight import compute_class_weight

    labels = np.array([0] * 6 + [1] * 3 + [2] * 1)
    got = class_weights.resolve("balanced", labels, PATH_INFO)
    np.testing.assert_allclose(got, compute_class_weight("balanced", classes=np.arange(3), y=labels))
    np.testing.assert_allclose(got, [10 / 18, 10 / 9, 10 / 3])
    multi_hot = np.array([[1, 0], [1, 1], [0, 0], [0, 0], [1, 0]])  # x: 3 of 5 positive, y: 1 of 5
    np.testing.assert_allclose(class_weights.resolve("balanced", multi_hot, CHEST_INFO), [2 / 3, 4 / 1])
    np.testing.assert_array_equal(class_weights.resolve((1, 2.5, 3), labels, PATH_INFO), [1, 2.5, 3])
    assert class_weights.resolve(None, labels, PATH_INFO) is None


@pytest.mark.parametrize("setting, labels, info, message", [
    ((1.0, 2.0), np.array([0, 1, 2]), PATH_INFO, r"^class_weights has 2 weights, but the dataset has 3 classes: a, b, c$"),
    ("balanced", np.array([0, 0, 2]), PATH_INFO, r"cannot weigh b: each has none of the 3 training images; give"),
    ("balanced", np.array([[1, 0], [1, 1]]), CHEST_INFO, r"cannot weigh x: each is positive in none or all of the 2"),
])
def test_class_weights_that_cannot_apply_are_one_line_errors(setting, labels, info, message):
    with pytest.raises(ConfigError, match=message):
        class_weights.resolve(setting, labels, info)


def test_ema_and_class_weights_are_settings_of_the_run():
    saved, config = default_config(), default_config()
    config.ema_decay, config.eval_ema, config.class_weights = 0.999, True, "balanced"
    validate(config)
    assert run_changes(saved, config) == {"class_weights": (None, "balanced"), "ema_decay": (0.0, 0.999),
                                          "eval_ema": (False, True)}


def _item_arrays(workdir: str, kind: str, step: int, item: str) -> dict[str, np.ndarray]:
    """The arrays of item ``item`` ("model" or "opt", whose "ema" holds the EMA) of a checkpoint, by path."""
    import orbax.checkpoint as ocp

    with ocp.PyTreeCheckpointer() as checkpointer:
        tree = checkpointer.restore(os.path.join(workdir, "checkpoints", kind, str(step), item))
    def plain(x):  # the model's RNG keys as their bits
        return np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x)

    return {jax.tree_util.keystr(path): plain(x) for path, x in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.mark.filterwarnings("ignore:Sharding info not provided")  # read back on the devices that wrote it
def test_a_run_with_ema_and_class_weights_resumes_bit_for_bit(tiny_config, tmp_path, capsys):
    """Two micro-steps per update, the EMA validated and kept as best, balanced class weights. The
    run resumed from its checkpoint in the middle of the epoch ends with the EMA, optimizer state and
    results of the uninterrupted one; the best checkpoint holds the EMA weights."""
    from medmamba_jax.training.train import train_and_evaluate

    tiny_config.update(grad_accum_steps=2, ema_decay=0.6, eval_ema=True, class_weights="balanced",
                       checkpoint_every_steps=6,  # 12 micro-steps: saved at 6 and at 12
                       depths=(1,), dims=(8,), image_size=16)  # compiles in half the time of the smoke model
    whole, resumed = str(tmp_path / "whole"), str(tmp_path / "resumed")
    train_and_evaluate(tiny_config, whole)
    assert "class weights (balanced from 48 training images; for the images of each class): adipose 0.889," in (
        capsys.readouterr().out)
    stored = json.load(open(os.path.join(whole, class_weights.FILE)))
    assert stored["train_counts"] == [6, 6, 6, 5, 5, 5, 5, 5, 5] and stored["weights"][3] == pytest.approx(48 / 45)

    averages = {path: x for path, x in _item_arrays(whole, "latest", 12, "opt").items() if path.startswith("['ema']")}
    best = _item_arrays(whole, "best", 12, "model")
    shell = MedMamba(model_config(tiny_config, num_classes=9), rngs=model_init.init_rngs(tiny_config))
    assert len(averages) == len(jax.tree.leaves(nnx.state(shell, ema.AVERAGED))) > 0  # Params and BatchNorm statistics
    for path, average in averages.items():
        np.testing.assert_array_equal(best[path.removeprefix("['ema']")], average, err_msg=path)
    model = _item_arrays(whole, "latest", 12, "model")
    assert any(not np.array_equal(model[path.removeprefix("['ema']")], x) for path, x in averages.items())

    shutil.copytree(whole, resumed)  # as if killed after the save at step 6
    for kind in ("latest", "best"):
        shutil.rmtree(os.path.join(resumed, "checkpoints", kind, "12"))
    os.remove(os.path.join(resumed, "results.json"))
    train_and_evaluate(tiny_config, resumed)
    assert "resuming from step 6" in capsys.readouterr().out
    for item in ("opt", "model"):
        ours, theirs = _item_arrays(resumed, "latest", 12, item), _item_arrays(whole, "latest", 12, item)
        assert sorted(ours) == sorted(theirs)
        for path in theirs:
            np.testing.assert_array_equal(ours[path], theirs[path], err_msg=path)
    assert json.load(open(os.path.join(resumed, "results.json"))) == json.load(open(os.path.join(whole, "results.json")))
