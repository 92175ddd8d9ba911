"""train.py on the machine a user has: the batch fits by itself, progress counts finished work,
a SIGTERM is answered after the step in flight, and out-of-memory errors and hints are one line."""

import importlib.metadata
import importlib.util
import io
import json
import os
import re
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medmamba_jax.evaluation.predict import split_batch_size
from medmamba_jax.evaluation.progress import BatchProgress
from medmamba_jax.files import read_json_lines
from medmamba_jax.training import memory, preemption, reporting, train
from medmamba_jax.training.errors import TrainingError, out_of_memory_as
from medmamba_jax.training.lifecycle import Lifecycle

GB = memory.GB


class FakeCompiled:
    """What ``fit_batch`` reads of a compiled step: its memory analysis."""

    def __init__(self, need: int):
        self.need = need

    def memory_analysis(self):
        return type("Stats", (), dict(argument_size_in_bytes=self.need, output_size_in_bytes=0, alias_size_in_bytes=0,
                                      temp_size_in_bytes=0, generated_code_size_in_bytes=0))()


def _affine_compiler(fixed_gb: float, per_image_gb: float, batch: int, compiled: list):
    def compile_step(k):
        compiled.append(k)
        return FakeCompiled(int((fixed_gb + per_image_gb * (batch // k)) * GB))

    return compile_step


def test_the_fewest_micro_batches_that_fit_are_chosen_compiling_only_candidates_that_may():
    compiled = []
    plan = memory.fit_batch(128, 1, _affine_compiler(1.0, 0.25, 128, compiled), memory.Budget(int(10 * GB), "has 10 GB"))
    # 128 images need 33 GB; the line through the origin rules out 64 (16.5 GB) without compiling it.
    assert (plan.grad_accum_steps, compiled) == (4, [1, 4])
    assert plan.message.startswith("batch 128 = 4 micro-batches of 32 (a micro-batch of 128 needs 33.0 GB; has 10 GB")
    assert "BatchNorm normalises each micro-batch on its own" in plan.message


def test_micro_batches_split_evenly_over_the_devices():
    assert memory.accumulation_choices(128, 1)[:4] == [1, 2, 4, 8]
    assert memory.accumulation_choices(24, 4) == [1, 2, 3, 6]


def test_a_batch_that_fits_takes_one_step_and_nothing_fitting_is_one_line():
    plan = memory.fit_batch(8, 1, _affine_compiler(0.1, 0.1, 8, []), memory.Budget(int(2 * GB), "has 2 GB"))
    assert plan.grad_accum_steps == 1 and plan.message == "batch 8 in one step (it needs 0.9 GB; has 2 GB)"
    with pytest.raises(MemoryError, match=r"^a micro-batch of 1 image per update needs 2.1 GB and has 1 GB: lower"):
        memory.fit_batch(8, 1, _affine_compiler(2.0, 0.1, 8, []), memory.Budget(int(1 * GB), "has 1 GB"))


def test_out_of_memory_becomes_one_line_naming_what_to_lower():
    with pytest.raises(TrainingError, match=r"^out of memory evaluating \(Out of memory allocating 9 bytes\): "
                                            r"lower eval_batch_size$"):
        with out_of_memory_as("evaluating", "lower eval_batch_size"):
            raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 9 bytes\nlong XLA detail")
    with pytest.raises(ValueError):  # anything else passes unchanged
        with out_of_memory_as("evaluating", "lower eval_batch_size"):
            raise ValueError("other")


def _train_losses(workdir: str) -> list[float]:
    return [r["loss"] for r in read_json_lines(os.path.join(workdir, reporting.METRICS_FILE))
            if r["split"] == "train"]


def test_a_small_device_trains_the_explicit_accumulations_trajectory(tiny_config, tmp_path, capsys):
    """A device that holds a micro-batch of 2 (of 8) trains as grad_accum_steps=4 given by hand."""
    tiny_config.grad_accum_steps = 4
    explicit = str(tmp_path / "explicit")
    run = train.prepare(tiny_config)
    fits_two = memory.step_bytes(run.train_step)
    train.train_and_evaluate(tiny_config, explicit)

    tiny_config.grad_accum_steps, tiny_config.device_memory_gb = 0, fits_two / GB
    auto = str(tmp_path / "auto")
    capsys.readouterr()
    train.train_and_evaluate(tiny_config, auto)
    out = capsys.readouterr().out
    assert re.search(r"batch 8 = 4 micro-batches of 2 \(a micro-batch of [48] needs [0-9.]+ GB; device_memory_gb", out)
    with open(os.path.join(auto, "config.json")) as f:
        assert json.load(f)["grad_accum_steps"] == 4  # so a resume keeps it
    assert _train_losses(auto) == _train_losses(explicit) and len(_train_losses(auto)) == 24


class SlowSteps:
    """A train step that the device takes ``seconds`` to finish (the host's dispatch returns at
    once, as JAX's does), sending a SIGTERM to this process as step ``signal_at`` finishes."""

    def __init__(self, step, seconds: float, signal_at: int):
        self.step, self.finished, self.signalled_after = step, 0, None
        self.seconds, self.signal_at = seconds, signal_at
        self._wait = jax.jit(lambda x: jax.pure_callback(self._finish, jax.ShapeDtypeStruct(x.shape, x.dtype), x))

    def _finish(self, loss):
        time.sleep(self.seconds)
        self.finished += 1
        if self.finished == self.signal_at:
            self.signalled_after = self.finished
            os.kill(os.getpid(), signal.SIGTERM)
        return np.asarray(loss)

    def __call__(self, model_state, opt_state, images, labels, step):
        model_state, opt_state, loss = self.step(model_state, opt_state, images, labels, step)
        loss = self._wait(loss)
        return model_state, opt_state, jnp.asarray(loss)


def test_sigterm_during_slow_steps_stops_within_two_steps(tiny_config, tmp_path):
    tiny_config.grad_accum_steps = 4  # 24 micro-steps in the epoch
    tiny_config.log_every_steps = 100  # logging reads the losses, which would wait for each step anyway
    run = train.prepare(tiny_config)
    run.train_step = slow = SlowSteps(run.train_step, 0.05, signal_at=3)
    trainer = train.Trainer(run, str(tmp_path))
    try:
        with Lifecycle() as lifecycle, pytest.raises(preemption.Preempted) as stopped:
            trainer.fit(lifecycle)
    finally:
        trainer.close()
    assert slow.signalled_after == 3
    assert 3 <= stopped.value.step <= 3 + 2, f"stopped after step {stopped.value.step}, signalled after 3"


def test_evaluation_batches_are_not_padded_far_beyond_the_split():
    assert split_batch_size(32, 256) == 32
    assert split_batch_size(33, 256) == 64
    assert split_batch_size(1000, 256) == 256


def test_progress_without_a_terminal_is_a_line_per_batch_and_a_heartbeat():
    out = io.StringIO()
    with BatchProgress("val", 2, stream=out, heartbeat_s=0.05) as shown:
        time.sleep(0.3)  # a first batch that compiles: never silent
        shown.advance()
        shown.advance()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("val: 2 batches (")
    assert any(line.startswith("val: batch 1/2 running (") for line in lines)
    assert lines[-2:][0].startswith("val: batch 1/2 done") and lines[-1].startswith("val: batch 2/2 done")


def test_the_training_bar_redraws_its_clock_during_a_long_step_and_stops_when_closed(capsys):
    bar = reporting.Progress(0, 100, 2812, 0, enabled=True, heartbeat_s=0.05)  # stderr is no terminal here
    time.sleep(0.5)  # one long step, no update
    bar.close()
    drawn = capsys.readouterr().err
    time.sleep(0.2)
    assert capsys.readouterr().err == "", "the bar was drawn after it was closed"
    clocks = re.findall(r"0/2812 \[(\d\d:\d\d)<", drawn)
    assert len(clocks) >= 3 and "00:00" in clocks, drawn  # redrawn with the time, not only when created
    quiet = reporting.Progress(0, 100, 2812, 0, enabled=False, heartbeat_s=0.05)
    time.sleep(0.2)
    quiet.close()
    assert capsys.readouterr().err == ""


PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "medmamba_jax")


def _hints() -> list[tuple[str, str]]:
    """Every ``python -m X`` and ``pip install X`` the package's messages suggest, with its file."""
    found = []
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(folder, name)) as f:
                    text = f.read()
                found += [(name, m) for m in re.findall(r"(python -m [a-z_][a-z0-9_.]*|pip install [^`'\n)&]+)", text)]
    return found


def _installed(requirement: str) -> bool:
    name = re.split(r"[\[<>=! ]", requirement.strip(), maxsplit=1)[0]
    if name.replace("_", "-") == "medmamba-jax":  # the project itself (with an extra)
        return True
    try:
        importlib.metadata.version(name)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def test_every_suggested_command_works_in_the_readme_environment():
    hints = _hints()
    assert hints, "the scan found no hints at all: the pattern is broken"
    for where, hint in hints:
        if hint.startswith("python -m "):
            module = hint.split()[2].rstrip(".")  # a sentence may end right after it
            assert importlib.util.find_spec(module) is not None, f"{where} suggests {hint!r}: no module {module}"
        else:
            requirements = [word.strip('"') for word in hint.split()[2:] if not word.startswith("-")]
            assert requirements, f"{where} suggests {hint!r}: no package named"
            for requirement in requirements:
                assert _installed(requirement), f"{where} suggests {hint!r}, not installed here"
