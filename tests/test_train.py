"""The training job end to end: train.py itself, resume after Ctrl-C, SIGTERM and SIGKILL, 8 devices,
two hosts, bad inputs.

One uninterrupted 2-epoch run (``reference_run``) is shared by the tests that compare
against it; the persistent compilation cache set up in conftest lets every later run of
the same program skip compilation.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time

import jax.numpy as jnp
import numpy as np
import pytest

from helpers import (ROOT, Hooked, assert_png_not_blank, assert_records_and_results_match, latest_steps, losses, records,
                     run_train, train_cmd, weights)
from medmamba_jax.training.checkpointing import load_trained

# The learning rate drops after the first epoch, so the logged rates can be checked.
# The associative scan, not the CPU kernel 'auto' picks: with the kernel a tiny model's step is
# faster than the round trip in which JAX's preemption service names the step to stop at, and
# the two-process test bounds that stop by the step in flight.
RUN_ARGS = ("--config.num_epochs=2", "--config.checkpoint_every_steps=2", "--config.lr_milestones=(1,)",
            "--config.scan_impl=associative")


def run_ok(workdir, data_dir, *overrides, env=None):
    result = run_train(workdir, f"--config.data_dir={data_dir}", *overrides, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, fake_medmnist_dir):
    workdir = str(tmp_path_factory.mktemp("reference"))
    result = run_ok(workdir, fake_medmnist_dir, *RUN_ARGS)
    return workdir, result


def _assert_losses_match_reference(workdir, reference_run, epochs=1):
    """The run's losses equal those of the reference run's first ``epochs`` epochs."""
    ours, reference = losses(workdir), losses(reference_run[0])
    assert sorted(ours) == list(range(1, 6 * epochs + 1))
    np.testing.assert_allclose([ours[s] for s in sorted(ours)], [reference[s] for s in sorted(ours)], rtol=1e-4)


def test_smoke_run_of_train_py(reference_run):
    workdir, result = reference_run
    lines = [line for line in result.stdout.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 2 and "val accuracy" in lines[0] and "img/s" in lines[0]
    results = json.load(open(os.path.join(workdir, "results.json")))
    for key in ("accuracy", "auc", "precision", "sensitivity", "specificity", "f1"):
        assert 0.0 <= results[key] <= 1.0
    # The test split is scored with the epoch of the highest validation AUC, the first one on a tie.
    best = max((r for r in records(workdir) if r["split"] == "val"), key=lambda r: (r["auc"], -r["step"]))
    assert (results["step"], results["epoch"]) == (best["step"], best["epoch"] + 1)
    assert os.listdir(os.path.join(workdir, "checkpoints", "best")) == [str(best["step"])]
    config = json.load(open(os.path.join(workdir, "config.json")))
    assert config["dims"] == [8, 16] and config["num_epochs"] == 2
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["best", "latest"]
    assert len(losses(workdir)) == 12 and os.listdir(os.path.join(workdir, "tensorboard"))
    assert_png_not_blank(os.path.join(workdir, "curves.png"))
    assert "could not draw" not in result.stderr
    # Each record carries the rate its update used: 1e-3 in epoch 1, then 1e-4 after the milestone.
    for record in records(workdir):
        if record["split"] in ("train", "epoch"):
            assert record["lr"] == pytest.approx(1e-3 if record["step"] <= 6 else 1e-4), record
    model, loaded_config = load_trained(workdir)
    assert model.config.num_classes == 9 and loaded_config.dims == (8, 16)


def _stop_after_checkpoint(workdir, data_dir, step: int, sig: int) -> subprocess.CompletedProcess:
    """Runs the reference run's command in ``workdir`` and sends ``sig`` once a checkpoint at
    ``step`` or later exists; returns the stopped process's status and stderr."""
    # A child inherits an ignored SIGINT (pytest run in the background); one handled here it does not.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(train_cmd(workdir, f"--config.data_dir={data_dir}", *RUN_ARGS), cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        steps = latest_steps(workdir)
        if steps and steps[-1] >= step:
            break
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stderr=err)


# One workdir goes through Ctrl-C, SIGTERM and SIGKILL in turn, each stop resumed by the next
# run; each fixture below is one link of that chain, each test checks one.
@pytest.fixture(scope="module")
def interrupted(fake_medmnist_dir, tmp_path_factory) -> tuple[str, subprocess.CompletedProcess]:
    """(workdir, process) of the reference run's command stopped by Ctrl-C once it saved step 2."""
    workdir = str(tmp_path_factory.mktemp("killed"))
    return workdir, _stop_after_checkpoint(workdir, fake_medmnist_dir, 2, signal.SIGINT)


@pytest.fixture(scope="module")
def terminated(interrupted, fake_medmnist_dir) -> tuple[str, subprocess.CompletedProcess, int]:
    """That workdir resumed and stopped by SIGTERM once it saved a step after Ctrl-C's: (workdir,
    process, its newest latest checkpoint then)."""
    workdir, _ = interrupted
    newer = latest_steps(workdir)[-1] + 1
    assert newer < 12, "too late for a SIGTERM while the run still trains"
    stopped = _stop_after_checkpoint(workdir, fake_medmnist_dir, newer, signal.SIGTERM)
    return workdir, stopped, latest_steps(workdir)[-1]


@pytest.fixture(scope="module")
def killed(terminated, fake_medmnist_dir) -> tuple[str, subprocess.CompletedProcess]:
    """That workdir resumed and killed (SIGKILL) once it saved step 8."""
    workdir = terminated[0]
    return workdir, _stop_after_checkpoint(workdir, fake_medmnist_dir, 8, signal.SIGKILL)


def test_ctrl_c_stops_with_status_130_and_one_line(interrupted):
    _, stopped = interrupted
    assert stopped.returncode == 130, "the run finished before it could be interrupted"
    assert stopped.stderr.strip().endswith("interrupted: run the same command to resume from the latest "
                                           "checkpoint") and "Traceback" not in stopped.stderr


def test_sigterm_saves_the_step_it_stops_after_and_exits_143(terminated):
    _, stopped, newest = terminated
    _assert_stopped_by_sigterm(newest, [stopped])


def test_a_run_stopped_by_each_signal_in_turn_resumes_to_the_uninterrupted_results(killed, reference_run,
                                                                                    fake_medmnist_dir):
    workdir, stopped = killed
    assert stopped.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not os.path.exists(os.path.join(workdir, "results.json"))
    resumed = run_ok(workdir, fake_medmnist_dir, *RUN_ARGS)
    assert "resuming from step" in resumed.stdout
    reference, _ = reference_run
    assert_records_and_results_match(workdir, reference)
    for a, b in zip(weights(workdir), weights(reference), strict=True):
        np.testing.assert_array_equal(a, b)


def test_eight_devices_give_the_losses_of_one(reference_run, fake_medmnist_dir, tmp_path):
    workdir = str(tmp_path / "eight")
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    run_ok(workdir, fake_medmnist_dir, "--config.num_epochs=1", env={"XLA_FLAGS": flags})
    _assert_losses_match_reference(workdir, reference_run)


def _assert_stopped_by_sigterm(newest: int, stopped: list[subprocess.CompletedProcess]) -> None:
    """Every process stopped after the same step, which is ``newest``, the newest latest checkpoint."""
    said = [re.search(r"stopped by SIGTERM after step (\d+), which is saved: run the same command to resume$",
                      p.stderr.strip()) for p in stopped]
    for p, match in zip(stopped, said):
        if not match:  # pytest cuts long assertion messages; captured output is shown whole
            print(f"--- stderr of {p.args[-1]}:\n{p.stderr}")
    assert all(said) and [p.returncode for p in stopped] == [143] * len(stopped), [p.stderr[-2000:] for p in stopped]
    assert len({m.group(1) for m in said}) == 1 and "Traceback" not in "".join(p.stderr for p in stopped)
    assert newest == int(said[0].group(1))


def _two_processes(workdir, data_dir, *overrides) -> list[subprocess.Popen]:
    """train.py as two hosts (jax.distributed over localhost, one CPU device each)."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    return [subprocess.Popen(
        train_cmd(workdir, f"--config.data_dir={data_dir}", *overrides, "--config.distributed=True",
                  f"--config.coordinator_address=localhost:{port}", "--config.num_processes=2",
                  f"--config.process_id={i}"),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"}) for i in range(2)]


def _read_until(stream, text: str) -> None:
    """Reads ``stream`` up to ``text``, which may sit on a line not yet ended."""
    seen = ""
    while text not in seen:
        char = stream.read(1)
        assert char, f"the process ended before printing {text!r}: {seen[-500:]!r}"
        seen += char


def _finished(procs) -> list[subprocess.CompletedProcess]:
    outputs = [p.communicate(timeout=600) for p in procs]
    return [subprocess.CompletedProcess(p.args, p.returncode, *out) for p, out in zip(procs, outputs)]


def test_two_processes_give_the_losses_of_one_and_stop_together(reference_run, fake_medmnist_dir, tmp_path):
    """A SIGTERM to one host stops both after the same step (JAX's preemption sync point), in a
    fresh run and in a resumed one that gets it before its first step finishes; the pair resumed once
    more ends with the reference run's losses."""
    workdir = str(tmp_path / "two")
    procs = _two_processes(workdir, fake_medmnist_dir, *RUN_ARGS)
    metrics, deadline = os.path.join(workdir, "metrics.jsonl"), time.time() + 300
    while time.time() < deadline and all(p.poll() is None for p in procs):
        if os.path.exists(metrics) and os.path.getsize(metrics):  # step 1's loss is logged
            break
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGTERM)
    stopped = _finished(procs)
    _assert_stopped_by_sigterm(latest_steps(workdir)[-1], stopped)
    first_stop = latest_steps(workdir)[-1]
    procs = _two_processes(workdir, fake_medmnist_dir, *RUN_ARGS)
    # The step compiles before the run restores its checkpoint and says so ("resuming from
    # step"), and a tiny step is shorter than the notice's round trip through JAX's service: a
    # notice sent at that line could name the third step. Sent as the compile starts (each
    # process told the service its step on connecting, before loading data), it names the first
    # or the second.
    _read_until(procs[0].stdout, "compiling the train step")
    procs[1].send_signal(signal.SIGTERM)
    stopped = _finished(procs)
    _assert_stopped_by_sigterm(latest_steps(workdir)[-1], stopped)
    # A notice is answered after the step in flight. Process 1 may already have dispatched its
    # first step (and told the service it passed it) when process 0 prints that it resumed:
    # JAX then names the step after that one.
    assert first_stop + 1 <= latest_steps(workdir)[-1] <= first_stop + 2
    resumed = _finished(_two_processes(workdir, fake_medmnist_dir, *RUN_ARGS))
    if [p.returncode for p in resumed] != [0, 0]:
        print(*(f"--- stderr of {p.args[-1]}:\n{p.stderr}" for p in resumed), sep="\n")
    assert [p.returncode for p in resumed] == [0, 0], resumed[0].stderr[-3000:] + resumed[1].stderr[-3000:]
    assert "test accuracy" in resumed[0].stdout and "epoch" not in resumed[1].stdout  # only process 0 reports
    _assert_losses_match_reference(workdir, reference_run, epochs=2)
    # The tools load it in one process, whose devices are not the ones the checkpoints name.
    assert all(np.isfinite(w).all() for which in ("best", "latest") for w in weights(workdir, which))


def _tree(workdir) -> dict[str, bytes]:
    """Every file under ``workdir`` by relative path, with its contents."""
    files = {}
    for root, _, names in os.walk(workdir):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, workdir)] = f.read()
    return files


def _corrupt_weights(workdir, steps) -> None:
    """Overwrites every file of the model item of these 'latest' checkpoints with garbage."""
    for step in steps:
        for root, _, names in os.walk(os.path.join(workdir, "checkpoints", "latest", str(step), "model")):
            for name in names:
                with open(os.path.join(root, name), "wb") as f:
                    f.write(b"garbage")


@pytest.fixture
def reference_copy(reference_run, tiny_config, tmp_path):
    """A copy of the reference workdir, and tiny_config set as the reference run was."""
    workdir = str(tmp_path / "copy")
    shutil.copytree(reference_run[0], workdir)
    tiny_config.num_epochs, tiny_config.checkpoint_every_steps, tiny_config.lr_milestones = 2, 2, (1,)
    return workdir, tiny_config


def test_corrupt_newest_checkpoint_falls_back(reference_copy, capsys):
    workdir, _ = reference_copy
    newest = latest_steps(workdir)[-1]
    _corrupt_weights(workdir, [newest])
    model, _ = load_trained(workdir, "latest")
    assert f"{newest} is unreadable" in capsys.readouterr().err
    assert model.config.dims == (8, 16)


def test_resuming_with_other_settings_is_refused_before_anything_is_written(reference_copy):
    from medmamba_jax.training.errors import ConfigError
    from medmamba_jax.training.train import train_and_evaluate

    workdir, config = reference_copy
    before = _tree(workdir)
    config.batch_size, config.seed, config.num_epochs = 16, 5, 3  # num_epochs may change on resume
    with pytest.raises(ConfigError, match=r"holds a run with other settings \(batch_size 8 -> 16, seed 0 -> 5\)"):
        train_and_evaluate(config, workdir)
    assert _tree(workdir) == before


def _edit_json(path: str, **changes) -> None:
    """Rewrites a JSON object file with ``changes``, as a hand edit would."""
    with open(path) as f:
        value = json.load(f)
    with open(path, "w") as f:
        json.dump({**value, **changes}, f)


def test_checkpoints_of_another_model_are_refused_not_overwritten(reference_copy):
    from medmamba_jax.training.errors import ConfigError
    from medmamba_jax.training.train import train_and_evaluate

    workdir, config = reference_copy
    _edit_json(os.path.join(workdir, "config.json"), dims=[16, 32])  # no longer describes its checkpoints
    config.dims = (16, 32)
    before = _tree(workdir)
    with pytest.raises(ConfigError, match=r"holds checkpoints of another model: dims \(8, 16\) \(config wants \(16, 32\)\)"):
        train_and_evaluate(config, workdir)
    assert _tree(workdir) == before


def test_unreadable_checkpoints_stop_the_run_instead_of_restarting_it(reference_copy, capsys):
    from medmamba_jax.training.errors import TrainingError
    from medmamba_jax.training.train import train_and_evaluate

    workdir, config = reference_copy
    results = _tree(workdir)["results.json"]
    _corrupt_weights(workdir, latest_steps(workdir))
    with pytest.raises(TrainingError, match=r"no checkpoint in .*latest can be read"):
        train_and_evaluate(config, workdir)
    assert capsys.readouterr().err.count("is unreadable") == 2
    assert _tree(workdir)["results.json"] == results


def test_a_fresh_start_replaces_an_attempt_that_saved_no_latest_checkpoint(reference_copy):
    """As if killed after saving best and before the first latest: only the same settings may
    start again, and then nothing of that attempt (its best step 12, results, records) survives."""
    from medmamba_jax.training.errors import ConfigError
    from medmamba_jax.training.train import train_and_evaluate

    workdir, config = reference_copy
    latest, best = (os.path.join(workdir, "checkpoints", kind) for kind in ("latest", "best"))
    shutil.rmtree(best)
    shutil.copytree(os.path.join(latest, "12"), os.path.join(best, "12"))
    shutil.rmtree(latest)
    config.learning_rate = 1e-2
    with pytest.raises(ConfigError, match=r"other settings \(learning_rate 0.001 -> 0.01\)"):
        train_and_evaluate(config, workdir)
    config.learning_rate, config.num_epochs = 1e-3, 1
    results = train_and_evaluate(config, workdir)
    assert results["step"] == 6 and json.load(open(os.path.join(workdir, "results.json")))["step"] == 6
    assert os.listdir(os.path.join(workdir, "checkpoints", "best")) == ["6"]
    logged = [(r["split"], r["step"]) for r in records(workdir)]
    assert len(logged) == len(set(logged)) and max(step for _, step in logged) == 6
    assert [step for split, step in logged if split == "test"] == [6]


def test_ctrl_c_in_the_end_of_epoch_save_keeps_that_epochs_records(tiny_config, tmp_path):
    from medmamba_jax.training.train import train_and_evaluate

    def ctrl_c_after_the_end_of_epoch_save(kind, step, meta):
        if kind == "latest" and meta["awaiting_validation"] is None:
            raise KeyboardInterrupt  # where interrupts_deferred delivers a Ctrl-C held during the save

    workdir = str(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        train_and_evaluate(tiny_config, workdir, Hooked(on_saved=ctrl_c_after_the_end_of_epoch_save))
    train_and_evaluate(tiny_config, workdir)  # resumes at step 6 and only tests
    logged = [(r["split"], r["step"]) for r in records(workdir)]
    assert [x for x in logged if x[0] != "train"] == [("val", 6), ("epoch", 6), ("test", 6)]


def test_a_failed_validation_resumes_without_training_the_epoch_again(reference_copy, tmp_path):
    """The first validation fails (as an eval_batch_size too large for the device would); the
    resumed run validates epoch 1 without training it again, and ends as the uninterrupted
    reference did."""
    from medmamba_jax.training import train
    from medmamba_jax.training.lifecycle import Phase

    _, config = reference_copy

    def out_of_memory(phase, epoch):
        if phase is Phase.AWAITING_VALIDATION:  # as its validation starts
            raise RuntimeError("RESOURCE_EXHAUSTED: out of memory")

    workdir = str(tmp_path / "failed")
    with pytest.raises(RuntimeError, match="out of memory"):
        train.train_and_evaluate(config, workdir, Hooked(out_of_memory))
    assert latest_steps(workdir)[-1] == 6
    recorded = Hooked()
    train.train_and_evaluate(config, workdir, recorded)
    assert recorded.trained_epochs() == [1]  # 0-based: only the second epoch
    assert_records_and_results_match(workdir, reference_copy[0])


def test_nan_loss_names_the_step_and_last_good_checkpoint(tiny_config, tmp_path):
    from medmamba_jax.model_files import NonFiniteWeightsError, save_model
    from medmamba_jax.models import MedMamba
    from medmamba_jax.training import config as config_lib
    from medmamba_jax.training import model_init
    from medmamba_jax.training.errors import TrainingError
    from medmamba_jax.training.train import train_and_evaluate

    model = MedMamba(config_lib.model_config(tiny_config, 9), rngs=model_init.init_rngs(tiny_config))
    kernel = model.patch_embed.proj.kernel.value
    model.head.bias.value = model.head.bias.value * jnp.nan
    save_model(str(tmp_path / "nan_model"), model)
    tiny_config.init_from = str(tmp_path / "nan_model")
    workdir = tmp_path / "run"
    with pytest.raises(NonFiniteWeightsError, match=r"nan_model: NaN or inf in 1 tensor: head.bias; such a model"):
        train_and_evaluate(tiny_config, str(workdir))
    model.head.bias.value = jnp.zeros_like(model.head.bias.value)
    model.patch_embed.proj.kernel.value = kernel * 1e37  # finite weights whose activations overflow
    save_model(str(tmp_path / "huge_model"), model)
    tiny_config.init_from = str(tmp_path / "huge_model")
    with pytest.raises(TrainingError, match=r"loss is nan at step 0 .*last good checkpoint: none"):
        train_and_evaluate(tiny_config, str(workdir))
    assert not (workdir / "results.json").exists()
    assert not os.listdir(workdir / "checkpoints" / "latest")


def test_init_from_another_architecture_is_refused(reference_run, tiny_config):
    from medmamba_jax.training.errors import TrainingError
    from medmamba_jax.training.train import prepare

    tiny_config.init_from = reference_run[0]
    tiny_config.dims = (16, 32)
    with pytest.raises(TrainingError, match=r"another architecture: dims \(8, 16\) \(config wants \(16, 32\)\)"):
        prepare(tiny_config)


def test_init_from_with_another_head_fine_tunes(reference_run, tiny_config, capsys):
    from medmamba_jax.training.train import prepare

    tiny_config.init_from = reference_run[0]
    tiny_config.dataset = "breastmnist"
    model = prepare(tiny_config).model
    assert "2-class head is freshly initialised" in capsys.readouterr().err
    source, _ = load_trained(reference_run[0])
    np.testing.assert_array_equal(model.patch_embed.proj.kernel.value, source.patch_embed.proj.kernel.value)
    assert model.head.kernel.value.shape == (16, 2)


def _swap_item(workdir, kind: str, step: int, source: str, item: str = "model") -> None:
    """Puts the ``item`` of checkpoint directory ``source`` in place of that of ``kind``/``step``:
    a structurally sound checkpoint that restores as other weights, as a flipped bit can."""
    target = os.path.join(workdir, "checkpoints", kind, str(step), item)
    shutil.rmtree(target)
    shutil.copytree(os.path.join(source, item), target)


def test_a_checkpoint_whose_weights_differ_from_their_checksum_falls_back(reference_copy, capsys):
    workdir, _ = reference_copy
    older, newest = latest_steps(workdir)
    _swap_item(workdir, "latest", newest, os.path.join(workdir, "checkpoints", "latest", str(older)))
    model, _ = load_trained(workdir, "latest")
    err = capsys.readouterr().err
    assert f"{newest} is unreadable (its model arrays differ from the checksum recorded when saved" in err
    assert f"falling back to step {older}" in err


def test_a_hand_edited_step_is_refused_before_anything_is_touched(reference_copy):
    """A resume at the step the meta claims would delete the later best checkpoint and cut the records."""
    from medmamba_jax.training.errors import ConfigError
    from medmamba_jax.training.train import train_and_evaluate

    workdir, config = reference_copy
    newest = latest_steps(workdir)[-1]
    _edit_json(os.path.join(workdir, "checkpoints", "latest", str(newest), "meta", "metadata"), step=3)
    before = _tree(workdir)
    with pytest.raises(ConfigError, match=rf"latest/{newest} records step 3: it was edited or damaged; restore it"):
        train_and_evaluate(config, workdir)
    assert _tree(workdir) == before


def test_a_finished_run_keeps_its_results_when_its_best_checkpoint_is_gone(reference_copy, capsys):
    from medmamba_jax.training.errors import TrainingError
    from medmamba_jax.training.train import train_and_evaluate

    workdir, config = reference_copy
    results = _tree(workdir)["results.json"]
    best = os.path.join(workdir, "checkpoints", "best")
    (step,) = os.listdir(best)
    _swap_item(workdir, "best", step, os.path.join(workdir, "checkpoints", "latest", str(latest_steps(workdir)[0])))
    train_and_evaluate(config, workdir)
    err = capsys.readouterr().err
    assert f"warning: the best checkpoint (step {step}) in {best} is missing or unreadable; keeping its test " in err
    assert "validation metric never finite" not in err
    assert _tree(workdir)["results.json"] == results
    shutil.rmtree(best)
    os.remove(os.path.join(workdir, "results.json"))
    with pytest.raises(TrainingError, match=rf"best checkpoint \(step {step}\) .* is missing or unreadable, and "
                                            r".*results.json holds no test results of it"):
        train_and_evaluate(config, workdir)
    assert not os.path.exists(os.path.join(workdir, "results.json"))
