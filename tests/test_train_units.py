"""Fast pieces of training: the schedule's boundaries, gradient accumulation, config checks, CLI errors,
TensorBoard records."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from helpers import DATA, run_train, write_fake_medmnist
from medmamba_jax.models import MedMamba
from medmamba_jax.training import checkpointing, model_init, optim, reporting, steps, train
from medmamba_jax.training.config import default_config, model_config, validate
from medmamba_jax.training.errors import ConfigError, TrainingError
from medmamba_jax.training.lifecycle import Lifecycle


def test_lr_drops_exactly_at_the_milestone_epochs():
    config = default_config()
    config.learning_rate, config.lr_milestones, config.lr_gamma = 1e-3, (50, 75), 0.1
    schedule = optim.lr_schedule(config, steps_per_epoch=10)
    expected = {0: 1e-3, 499: 1e-3, 500: 1e-4, 749: 1e-4, 750: 1e-5, 10_000: 1e-5}
    for step, lr in expected.items():
        assert float(schedule(step)) == pytest.approx(lr, rel=1e-6), step


def test_losses_are_the_mean_cross_entropies():
    logits = np.array([[2.0, -1.0, 0.5], [-3.0, 0.0, 4.0]], np.float32)
    multi_hot = np.array([[1, 0, 1], [0, 1, 1]])
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    bce = -(multi_hot * np.log(p) + (1 - multi_hot) * np.log(1 - p)).mean()  # over images and labels
    assert float(steps.loss_fn(jnp.asarray(logits), jnp.asarray(multi_hot), True)) == pytest.approx(bce, rel=1e-6)
    log_softmax = logits - np.log(np.exp(logits.astype(np.float64)).sum(axis=1, keepdims=True))
    ce = -log_softmax[[0, 1], [0, 2]].mean()
    assert float(steps.loss_fn(jnp.asarray(logits), jnp.array([0, 2]), False)) == pytest.approx(ce, rel=1e-6)


def test_early_stopping_after_patience_epochs_without_a_better_val(tiny_config, tmp_path, capsys):
    from medmamba_jax.evaluation import compute_metrics

    tiny_config.num_epochs, tiny_config.early_stopping_patience = 8, 2
    metrics = compute_metrics(np.array([0, 1]), np.eye(9)[[0, 1]], "multi-class")
    aucs = iter([0.6, 0.7, 0.65, 0.7, 0.9, 0.9, 0.9, 0.9])  # epoch 2 is the best; 3 and 4 are no better

    class ScriptedTrainer(train.Trainer):
        """Epochs that take no steps, validated with the AUCs above."""

        def train_epoch(self, epoch):
            self.progress.step = (epoch + 1) * self.run.steps_per_epoch
            self.progress.awaiting_validation = {"loss": 1.0, "lr": 1e-3, "seconds": 1.0, "images_per_sec": 1.0}

        def validate(self, model_state):
            return {**metrics, "auc": next(aucs)}

    trainer = ScriptedTrainer(train.prepare(tiny_config), str(tmp_path))
    try:
        trainer.fit(Lifecycle())
    finally:
        trainer.close()
    spe = trainer.run.steps_per_epoch
    assert (trainer.progress.step, trainer.progress.best_step) == (4 * spe, 2 * spe)
    assert "stopped early: no better val auc for 2 epochs" in capsys.readouterr().out


def test_grad_accumulation_updates_every_k_micro_steps_with_the_mean_gradient():
    config = default_config()
    config.grad_accum_steps, config.lr_milestones, config.weight_decay = 2, (1,), 0.0
    tx, _ = optim.make_tx(config, steps_per_epoch=1)
    params = {"w": jnp.zeros(3)}
    state = tx.init(params)
    grads = [{"w": jnp.full(3, 1.0)}, {"w": jnp.full(3, 3.0)}]
    updates, state = tx.update(grads[0], state, params)
    np.testing.assert_array_equal(updates["w"], 0.0)  # accumulating, no update yet
    updates, state = tx.update(grads[1], state, params)
    reference = optax.adamw(1e-3, weight_decay=0.0)
    want, _ = reference.update({"w": jnp.full(3, 2.0)}, reference.init(params), params)
    np.testing.assert_allclose(updates["w"], want["w"], rtol=1e-6)


@pytest.mark.parametrize("key, value, message", [
    ("model", "medmamba_xl", "model must be one of"),
    ("best_metric", "loss", "best_metric must be one of"),
    ("grad_accum_steps", 3, "not a multiple of grad_accum_steps"),
    ("lr_milestones", (75, 50), "lr_milestones must be increasing"),
    ("lr_milestones", (0,), r"lr_milestones must be increasing whole epochs >= 1"),
    ("lr_milestones", (1.7,), r"lr_milestones must be increasing whole epochs >= 1"),
    ("grad_accum_steps", -1, r"grad_accum_steps must be >= 0 \(0 = automatic\), got -1"),
    ("device_memory_gb", -1.0, r"device_memory_gb must be >= 0 \(0 = ask the device\), got -1.0"),
    ("seed", -1, r"seed must be in \[0, 2\*\*32\)"),
    ("seed", 12345678901234567890, r"seed must be in \[0, 2\*\*32\) .*got 12345678901234567890"),
    ("learning_rate", -1e-3, r"learning_rate and lr_gamma must be > 0 and weight_decay >= 0"),
    ("lr_gamma", 0.0, r"learning_rate and lr_gamma must be > 0"),
    ("weight_decay", -0.05, r"weight_decay >= 0, got 0.001, 0.1 and -0.05"),
    ("batch_size", 0, r"batch_size and eval_batch_size must be >= 1, got 0 and 256"),
    ("eval_batch_size", 0, r"batch_size and eval_batch_size must be >= 1, got 128 and 0"),
    ("log_every_steps", 0, r"log_every_steps must be >= 1, got 0"),
    ("checkpoint_every_steps", -1, r"checkpoint_every_steps, early_stopping_patience and prefetch must be >= 0"),
    # MedMamba-T's 4 stages: 28 -> 7 -> 3 -> 1 -> 0 pixels; 32 is the smallest side that keeps one.
    ("image_size", 28, r"image_size 28 is too small for 4 stages: .* \(at least 32\)"),
    # Model settings: checked here, before any data loads, rather than when the model is built after it.
    ("dims", (8, 16), r"medmamba_t: depths \(2, 2, 4, 2\) and dims \(8, 16\) must have the same length"),
    ("dims", (96, 192, 384, 770.5), r"dims must be a non-empty sequence of integers >= 2, got \(96, 192, 384, 770.5\)"),
    ("dims", (96, 192, 384, 767), r"dims must be even .*got \(96, 192, 384, 767\)"),
    ("dims", (96, 192, 384, 766), r"each of dims must be twice the one before .*got \(96, 192, 384, 766\)"),
    ("depths", (2, 2, -4, 2), r"depths must be a non-empty sequence of integers >= 0"),
    ("depths", (), r"depths must be a non-empty sequence"),
    ("dtype", "bf16", r"dtype must be one of \['bfloat16', 'float16', 'float32'\], got 'bf16'"),
    ("dtype", "float64", r"dtype must be one of \['bfloat16', 'float16', 'float32'\], got 'float64'"),
    ("in_chans", 0, r"in_chans must be an integer >= 1, got 0"),
    ("drop_path_rate", 1.0, r"drop_path_rate must be in \[0, 1\), got 1.0"),
    # Weight EMA and class weights (tests/test_ema_class_weights.py has the rest).
    ("ema_decay", 1.0, r"ema_decay must be in \[0, 1\) \(0 = no EMA\), got 1.0"),
    ("ema_decay", -0.1, r"ema_decay must be in \[0, 1\) \(0 = no EMA\), got -0.1"),
    ("ema_decay", float("nan"), r"ema_decay must be in \[0, 1\)"),
    ("eval_ema", True, r"eval_ema needs an EMA: set ema_decay"),
    ("class_weights", "inverse", r"class_weights must be 'balanced' or a list of numbers > 0, got 'inverse'"),
    ("class_weights", (1.0, 0.0), r"class_weights must be 'balanced' or a list of numbers > 0, got \(1.0, 0.0\)"),
    ("class_weights", (), r"class_weights must be"),
])
def test_bad_config_values(key, value, message):
    config = default_config()
    config[key] = value
    with pytest.raises(ConfigError, match=message):
        validate(config)


def test_model_settings_that_validate_build_that_model():
    config = default_config()
    config.depths, config.dims, config.dtype, config.in_chans = (1, 1), (8, 16), "bfloat16", 1
    validate(config)
    model = MedMamba(model_config(config, num_classes=2), rngs=model_init.init_rngs(config))
    assert (model.config.depths, model.config.dims, model.config.dtype, model.config.in_chans) == (
        (1, 1), (8, 16), "bfloat16", 1)


def test_colour_dataset_into_a_one_channel_model_fails_before_the_data_loads(tmp_path):
    config = default_config()
    config.dataset, config.in_chans, config.data_dir = "pathmnist", 1, str(tmp_path / "no-data-here")
    with pytest.raises(ConfigError, match="pathmnist has 3-channel images; in_chans=1 cannot take them"):
        train.prepare(config)


def test_stored_channels_that_differ_from_the_published_set_are_checked_too(tmp_path):
    rgb = np.zeros((4, 28, 28, 3), np.uint8)  # breastmnist is published grayscale; this file is RGB
    np.savez(tmp_path / "breastmnist.npz", **{f"{split}_{kind}": rgb if kind == "images" else np.zeros((4, 1), np.uint8)
                                               for split in ("train", "val", "test") for kind in ("images", "labels")})
    config = default_config()
    config.dataset, config.in_chans, config.data_dir = "breastmnist", 1, str(tmp_path)
    with pytest.raises(ConfigError, match="breastmnist has 3-channel train images in its files; in_chans=1"):
        train.prepare(config)


def test_unknown_config_key():
    config = default_config()
    config.learning_rat = 1.0
    with pytest.raises(ConfigError, match="unknown config key"):
        validate(config)


def test_cli_missing_dataset_is_one_line_and_writes_nothing(tmp_path):
    workdir = tmp_path / "run"
    result = run_train(workdir, f"--config.data_dir={tmp_path / 'empty'}")
    assert result.returncode == 1
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "pathmnist.npz" in error[0] and "--config.download=True" in error[0]
    assert "Traceback" not in result.stderr and not workdir.exists()


def test_cli_unknown_config_override_fails(tmp_path):
    workdir = tmp_path / "run"
    result = run_train(workdir, "--config.learning_rat=0.1")
    assert result.returncode == 1 and not workdir.exists() and "Traceback" not in result.stderr
    assert 'error: bad --config override: learning_rat Did you mean "learning_rate"' in result.stderr


def test_cli_repeated_config_override_is_refused_not_concatenated(tmp_path):
    workdir = tmp_path / "run"
    result = run_train(workdir, "--config.depths=(1,1)", "--config.dims=(8,16)", "--config.depths", "(1,1)")
    assert result.returncode == 1 and not workdir.exists() and "Traceback" not in result.stderr
    assert result.stderr.strip() == "error: --config.depths given more than once; give each key once"


def _tensorboard_points(workdir) -> list[tuple[str, int, float]]:
    """(tag, step, value) of every scalar that TensorBoard shows, read with TensorFlow. As in
    TensorBoard's loader, each run directory's event files are read in name order, and a
    restart (a SessionLog START at step S after the run's first one; purge_step writes them)
    hides the points read before it at step S or later."""
    import collections
    import glob

    import tensorflow as tf

    runs = collections.defaultdict(list)
    for path in sorted(glob.glob(os.path.join(workdir, "tensorboard", "**", "events.*"), recursive=True)):
        runs[os.path.dirname(path)].append(path)
    shown = []
    for paths in runs.values():
        points, started = [], False
        for event in (e for path in paths for e in tf.compat.v1.train.summary_iterator(path)):
            if event.HasField("session_log") and event.session_log.status == event.session_log.START:
                points = [p for p in points if p[1] < event.step] if started else points
                started = True
            points += [(value.tag, event.step, round(value.simple_value, 6)) for value in event.summary.value]
        shown += points
    return sorted(shown)


def test_rerunning_a_finished_run_leaves_one_test_result_in_tensorboard(tmp_path):
    workdir = str(tmp_path)
    first = reporting.Reporter(workdir)
    first.write("train", 6, 0, {"loss": 1.0})
    first.write("test", 4, 0, {"accuracy": 0.5})
    first.close()
    rerun = reporting.Reporter(workdir, start_step=6)  # nothing left to train: only the test again
    rerun.write("test", 4, 0, {"accuracy": 0.5})
    rerun.close()
    assert _tensorboard_points(workdir) == [("test/accuracy", 4, 0.5), ("train/loss", 6, 1.0)]
    assert [r["split"] for r in map(json.loads, open(os.path.join(workdir, "metrics.jsonl")))] == ["train", "test"]


def test_a_run_resumed_before_validation_records_that_validation_once(tmp_path):
    workdir = str(tmp_path)
    failed = reporting.Reporter(workdir)  # an attempt that saved step 6 for validation...
    failed.write("train", 5, 0, {"loss": 1.0})
    failed.write("train", 6, 0, {"loss": 2.0})
    failed.write("val", 6, 0, {"auc": 0.5})  # ...and failed after writing this record, before saving again
    failed.close()
    resumed = reporting.Reporter(workdir, start_step=6, revalidate=True)
    resumed.write("val", 6, 0, {"auc": 0.75})
    resumed.close()
    assert _tensorboard_points(workdir) == [("train/loss", 5, 1.0), ("train/loss", 6, 2.0), ("val/auc", 6, 0.75)]
    records = [(r["split"], r["step"]) for r in map(json.loads, open(os.path.join(workdir, "metrics.jsonl")))]
    assert records == [("train", 5), ("train", 6), ("val", 6)]


def test_a_fresh_start_drops_an_earlier_attempts_records(tmp_path):
    workdir = str(tmp_path)
    killed = reporting.Reporter(workdir)  # an attempt killed before its first checkpoint...
    killed.write("train", 1, 0, {"loss": 1.0})
    killed.write("test", 1, 0, {"accuracy": 0.5})
    killed.close()
    again = reporting.Reporter(workdir)  # ...is started again from step 0
    again.write("train", 1, 0, {"loss": 2.0})
    again.close()
    assert [r["loss"] for r in map(json.loads, open(os.path.join(workdir, "metrics.jsonl")))] == [2.0]
    assert not os.path.exists(os.path.join(workdir, "tensorboard", "test"))


def test_a_checkpoint_older_than_the_newest_is_an_error_not_skipped(tmp_path):
    manager = checkpointing.managers(str(tmp_path))["best"]
    checkpointing.save(manager, 12, {"w": jnp.ones((4,))}, {"step": 12})
    with pytest.raises(TrainingError, match="checkpoint step 6 was not written: .* already holds step 12"):
        checkpointing.save(manager, 6, {"w": jnp.ones((4,))}, {"step": 6})


def test_weights_holding_nan_or_inf_are_never_saved_so_the_last_good_checkpoint_is_finite(tmp_path):
    manager = checkpointing.managers(str(tmp_path))["latest"]
    checkpointing.save(manager, 2, {"w": jnp.ones((4,))}, {"step": 2}, {"mu": jnp.zeros((4,))})
    broken = {"w": jnp.array([1.0, jnp.nan, 0.0, 0.0])}
    with pytest.raises(TrainingError, match=r"the state at step 3 is not saved: NaN or inf in 2 tensors: model.w, opt.mu; "
                                            rf"last good checkpoint: {tmp_path}/checkpoints/latest/2$"):
        checkpointing.save(manager, 3, broken, {"step": 3}, {"mu": jnp.array([jnp.inf] * 4)})
    assert manager.all_steps() == [2]


@pytest.mark.parametrize("ignored", [False, True], ids=["ctrl_c", "ignored_ctrl_c"])
def test_ctrl_c_during_a_save_is_held_until_the_checkpoint_is_complete(ignored, tmp_path, capsys):
    """A process started in the background (``cmd &``) ignores Ctrl-C, during a save too."""
    manager = checkpointing.managers(str(tmp_path))["latest"]
    write = manager.save

    def interrupted_save(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C arrives as Orbax starts writing
        return write(*args, **kwargs)

    manager.save = interrupted_save
    disposition = signal.SIG_IGN if ignored else signal.default_int_handler
    previous = signal.signal(signal.SIGINT, disposition)
    try:
        with pytest.raises(KeyboardInterrupt) if not ignored else contextlib.nullcontext():
            checkpointing.save(manager, 3, {"w": jnp.ones((4,))}, {"step": 3})
        assert signal.getsignal(signal.SIGINT) is disposition
    finally:
        signal.signal(signal.SIGINT, previous)
    assert checkpointing.has_checkpoint(str(tmp_path)) and os.listdir(manager.directory) == ["3"]
    assert ("finishing the checkpoint being written" in capsys.readouterr().err) is not ignored


def test_resuming_with_other_dataset_classes_is_refused(tools_workdir):
    config = checkpointing.read_config(tools_workdir)
    info = checkpointing.read_dataset_info(tools_workdir)
    train.check_same_run(config, tools_workdir, info)  # the classes it was trained on
    renamed = {**info, "label_names": info["label_names"][::-1]}  # e.g. an image folder's class folders changed
    with pytest.raises(ConfigError, match="the dataset's classes changed since .* was trained"):
        train.check_same_run(config, tools_workdir, renamed)
    resized = {**info, "split_sizes": {**info["split_sizes"], "train": info["split_sizes"]["train"] * 2}}
    with pytest.raises(ConfigError, match=r"the dataset's split sizes changed .*'train': 32.* -> .*'train': 64"):
        train.check_same_run(config, tools_workdir, resized)


def test_a_failed_json_write_keeps_the_old_file_and_leaves_no_temporary_one(tmp_path):
    path = str(tmp_path / "results.json")
    checkpointing.write_json(path, {"auc": 0.5})
    with pytest.raises(TypeError):
        checkpointing.write_json(path, {"auc": object()})  # as a Ctrl-C midway would stop it
    assert os.listdir(tmp_path) == ["results.json"] and json.load(open(path)) == {"auc": 0.5}


_HOLD_LOCK = """
import fcntl, os, socket, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
print("locked", flush=True)
time.sleep(120)
"""


def test_a_workdir_in_use_is_refused_and_a_killed_holders_lock_is_not(tiny_config, tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(workdir / "train.lock")], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(TrainingError, match=rf"{workdir} is in use by another train.py \(pid {holder.pid} on "):
            train.train_and_evaluate(tiny_config, str(workdir))
        assert os.listdir(workdir) == ["train.lock"]
    finally:
        holder.kill()
        holder.wait()
    with checkpointing.workdir_lock(str(workdir)):  # the kernel released the killed process's lock
        assert (workdir / "train.lock").read_text().startswith(f"pid {os.getpid()} on ")
        with pytest.raises(TrainingError, match=rf"in use by another train.py \(pid {os.getpid()} on "):
            with checkpointing.workdir_lock(str(workdir)):
                pass
    assert not (workdir / "train.lock").exists()


def test_a_workdir_written_before_the_restructuring_resumes_and_trains_on(tmp_path, capsys):
    """tests/data/workdir_v0 holds one finished epoch (step 2) of configs/smoke.py on fake pathmnist
    (16/8/8 images), written by train.py before issue 22's restructuring. Today's recipe, given
    a second epoch, resumes it at step 2 and checkpoints step 4."""
    from configs import smoke

    workdir = shutil.copytree(DATA / "workdir_v0", tmp_path / "run")
    config = smoke.get_config()
    config.data_dir = str(tmp_path / "data")
    write_fake_medmnist(config.data_dir, "pathmnist", split_sizes={"train": 16, "val": 8, "test": 8})
    config.num_epochs = 2
    metrics = train.train_and_evaluate(config, str(workdir))
    assert "resuming from step 2: 1 of 2 epochs trained" in capsys.readouterr().out
    assert max(int(step) for step in os.listdir(workdir / "checkpoints" / "latest")) == 4
    assert np.isfinite(metrics["accuracy"])
