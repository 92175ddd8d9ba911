"""A SIGTERM (a scheduler's preemption notice) saves the run and stops it; resuming loses nothing.

train.py's exit status and a SIGTERM to one of two processes are tested in test_train.py.
"""

import os
import signal
import threading

import numpy as np
import pytest

from helpers import Hooked, StopAfter, assert_records_and_results_match, latest_steps, records, weights
from medmamba_jax.training import preemption, train
from medmamba_jax.training.lifecycle import Lifecycle, Phase


@pytest.fixture
def config(tiny_config):
    """Two 6-step epochs logged every 3 steps and saved every 4, so saves split logging windows."""
    tiny_config.num_epochs, tiny_config.lr_milestones = 2, (1,)
    tiny_config.log_every_steps, tiny_config.checkpoint_every_steps = 3, 4
    return tiny_config


def _stopped(config, workdir, notice) -> int:
    with pytest.raises(preemption.Preempted) as stopped:
        train.train_and_evaluate(config, workdir, Lifecycle(notice))
    assert latest_steps(workdir)[-1] == stopped.value.step, "the step it stopped after is not saved"
    return stopped.value.step


def test_stops_inside_an_epoch_at_its_end_and_in_validation_lose_nothing(config, tmp_path):
    reference = str(tmp_path / "reference")
    train.train_and_evaluate(config, reference)
    windows, epochs = ([r for r in records(reference) if r["split"] == split] for split in ("train", "epoch"))
    for epoch in epochs:  # each epoch's two windows are whole, though the saves at steps 4 and 8 split them
        halves = [w["loss"] for w in windows if w["epoch"] == epoch["epoch"]]
        assert len(halves) == 2 and sum(halves) / 2 == pytest.approx(epoch["loss"], rel=1e-6)
    workdir = str(tmp_path / "stopped")
    assert _stopped(config, workdir, StopAfter(5)) == 5  # within the window of steps 4-6
    assert _stopped(config, workdir, StopAfter(6)) == 6  # the epoch's last step, not validated
    assert not [r for r in records(workdir) if r["split"] == "val"]

    signals, trained = iter([1, 0, 1]), []

    def sigterm_in_some_validations(phase, epoch):
        trained.extend([epoch] if phase is Phase.TRAINING else [])
        if phase is Phase.AWAITING_VALIDATION and next(signals, 0):  # a real signal, to the notice's handler
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None), "SIGTERM would kill pytest"
            signal.raise_signal(signal.SIGTERM)  # the validation stops before its first batch

    for step, validated in ((6, []), (12, [6])):  # epoch 1's validation; epoch 2's, never saved before it
        with pytest.raises(preemption.Preempted, match=f"stopped by SIGTERM after step {step}, which is saved"):
            train.train_and_evaluate(config, workdir, Hooked(sigterm_in_some_validations))
        assert [r["step"] for r in records(workdir) if r["split"] == "val"] == validated
        assert latest_steps(workdir)[-1] == step
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, "the handler outlived the run"
    train.train_and_evaluate(config, workdir, Hooked(sigterm_in_some_validations))
    assert trained == [1]
    assert_records_and_results_match(workdir, reference)
    for ours, theirs in zip(weights(workdir), weights(reference), strict=True):
        np.testing.assert_array_equal(ours, theirs)


def test_the_handler_is_installed_only_in_the_main_thread_and_put_back():
    before = signal.getsignal(signal.SIGTERM)
    with preemption.StopNotice():
        assert signal.getsignal(signal.SIGTERM) is not before
        inside = []
        thread = threading.Thread(target=lambda: inside.append(preemption.StopNotice().__enter__()._installed))
        thread.start()
        thread.join()
        assert inside == [False]
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_notice_stops_a_validation_between_its_batches(tiny_config):
    from flax import nnx

    from medmamba_jax.evaluation import predict_scores
    from medmamba_jax.models import MedMamba
    from medmamba_jax.training import config as config_lib
    from medmamba_jax.training import model_init

    model, batches = MedMamba(config_lib.model_config(tiny_config, 9), rngs=model_init.init_rngs(tiny_config)), []
    model.eval()
    images = np.zeros((12, 32, 32, 3), np.float32)
    with preemption.StopNotice() as notice:
        notice.check()  # no notice yet

        def third_batch_gets_a_notice():
            batches.append(len(batches))
            if len(batches) == 3:
                os.kill(os.getpid(), signal.SIGTERM)
                notice.check()

        with pytest.raises(preemption.StopNow):
            predict_scores(model, images, 4, between_batches=third_batch_gets_a_notice)
        assert batches == [0, 1, 2] and notice.received
    assert isinstance(model, nnx.Module) and predict_scores(model, images, 4).shape == (12, 9)


def test_an_ignored_sigterm_stays_ignored():
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with preemption.StopNotice() as notice:
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGTERM)
            assert not notice.reached(1)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_sigterm_sets_the_notice_and_prints_one_line(capsys):
    with preemption.StopNotice() as notice:
        assert not notice.reached(1)
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
        assert notice.reached(2) and notice.received
    assert capsys.readouterr().err.count("SIGTERM: saving and stopping") == 1
