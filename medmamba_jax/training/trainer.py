"""``Trainer``: the epochs of a prepared ``Run`` in a workdir, checkpointing and reporting as they go.

``fit`` reads like flax's ``train_and_evaluate`` loop: train an epoch, validate it, keep the
best checkpoint, save the latest, until the epochs are done, early stopping ends them, or the
``Lifecycle`` stops the run (``Lifecycle.stop``, the one way a stop is taken). The workdir
layout is described in ``checkpointing``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from typing import Any, NoReturn

import jax
import numpy as np
from flax import nnx

from medmamba_jax import data as data_lib
from medmamba_jax import sharding
from medmamba_jax.evaluation import compute_metrics, predict_scores, summary
from medmamba_jax.evaluation.predict import split_batch_size
from medmamba_jax.models import MedMambaConfig
from medmamba_jax.training import checkpointing, ema, preemption, reporting
from medmamba_jax.training.errors import ConfigError, TrainingError, out_of_memory_as
from medmamba_jax.training.lifecycle import Lifecycle, Phase, Progress


@dataclasses.dataclass
class Run:
    """A run's resolved inputs; building it writes nothing."""

    config: Any
    info: dict
    splits: dict  # split -> (images, labels)
    stream: data_lib.TrainStream
    mesh: jax.sharding.Mesh
    model: nnx.Module
    optimizer: nnx.Optimizer
    schedule: Any
    class_weights: np.ndarray | None = None  # (num_classes,), see training/class_weights.py
    train_step: Any = None  # the compiled step (jax.stages.Compiled), see steps.compile_train_step

    @property
    def steps_per_epoch(self) -> int:  # micro-steps
        return self.stream.steps_per_epoch


def evaluate(run: Run, model_def, model_state, split: str, between_batches=None) -> dict[str, Any]:
    """compute_metrics of the model on a whole split, with the eval-time transform;
    ``between_batches`` as in ``predict_scores``."""
    model = nnx.merge(model_def, model_state)
    model.eval()
    images, labels = run.splits[split]
    shown = bool(run.config.progress_bar) and jax.process_index() == 0
    with out_of_memory_as(f"evaluating the {split} split", "lower --config.eval_batch_size (a resume may change it)"):
        scores = predict_scores(
            model, images, split_batch_size(len(images), int(run.config.eval_batch_size)),
            multi_label=run.info["multi_label"],
            transform=data_lib.eval_transform(run.config), mesh=run.mesh, progress=split if shown else None,
            between_batches=between_batches,
        )
    return compute_metrics(labels, scores, run.info["task"])


def _meta(run: Run, progress: Progress, epoch: int) -> dict:
    return {**dataclasses.asdict(progress), "epoch": epoch, "model_config": run.model.config.to_dict()}


class Trainer:
    """Runs the epochs of a prepared Run in a workdir, checkpointing and reporting as it goes."""

    def __init__(self, run: Run, workdir: str):
        self.run, self.config, self.workdir = run, run.config, workdir
        self.is_main = jax.process_index() == 0
        self.managers = checkpointing.managers(workdir)
        self.model_def, model_state = nnx.split(run.model)
        self.opt_def, opt_state = nnx.split(run.optimizer)
        self.model_state = sharding.replicate(run.mesh, model_state)
        self.opt_state = sharding.replicate(run.mesh, opt_state)
        self.progress = Progress()
        self._resume()
        self._discard_beyond(self.progress.step)
        self.reporter = reporting.Reporter(workdir, enabled=self.is_main, start_step=self.progress.step,
                                           revalidate=self.progress.phase is Phase.AWAITING_VALIDATION,
                                           best_metric=self.config.best_metric)
        self.train_step = run.train_step
        self.lifecycle = Lifecycle()  # replaced by fit's

    def _templates(self, meta: dict):
        """What a latest checkpoint restores into, once its meta shows it is this run's model."""
        model = self.run.model.config
        saved = dataclasses.replace(MedMambaConfig.from_dict(meta["model_config"]), scan_impl=model.scan_impl)
        if saved != model:
            differ = ", ".join(f"{f.name} {getattr(saved, f.name)} (config wants {getattr(model, f.name)})"
                               for f in dataclasses.fields(model) if getattr(saved, f.name) != getattr(model, f.name))
            raise ConfigError(f"{self.managers['latest'].directory} holds checkpoints of another model: {differ}; "
                              "use another --workdir")
        return self.model_state, self.opt_state

    def _resume(self) -> None:
        """Restores the latest checkpoint, if there is one."""
        manager = self.managers["latest"]
        restored = checkpointing.restore(manager, self._templates)
        if restored is None:
            if manager.all_steps():  # starting afresh would overwrite them
                raise TrainingError(f"no checkpoint in {manager.directory} can be read (see the warnings "
                                    "above); move that directory away to train again from the start")
            return
        self.model_state, self.opt_state, meta = restored
        self.progress = Progress.from_meta(meta)
        if self.is_main:
            done = self.progress.step // self.run.steps_per_epoch
            pending = " (the last one not yet validated)" if self.progress.phase is Phase.AWAITING_VALIDATION else ""
            print(f"resuming from step {self.progress.step}: {done} of {self.config.num_epochs} epochs "
                  f"trained{pending}")

    def _discard_beyond(self, step: int) -> None:
        """Drops best checkpoints after ``step``: they belong to an attempt that this run redoes
        (killed between saving best and latest, or one that never saved a latest), and Orbax would
        not save an older step beside them. A fresh start also drops that attempt's results.json;
        check_same_run has made sure the attempt had these settings."""
        best = self.managers["best"]
        for old in best.all_steps():
            if old > step:
                best.delete(old)
        results = os.path.join(self.workdir, "results.json")
        if step == 0 and self.is_main and os.path.exists(results):
            os.remove(results)

    def lr(self) -> float:
        """The learning rate of the latest update (micro-step s belongs to update s // k)."""
        last = max(self.progress.step - 1, 0)
        return float(self.run.schedule(last // int(self.config.grad_accum_steps)))

    def _batch(self, step: int) -> tuple[jax.Array, jax.Array]:
        images, labels = self.run.stream(step)
        return sharding.shard_batch(self.run.mesh, images), sharding.shard_batch(self.run.mesh, labels)

    def _check_losses(self, pending: list) -> None:
        """Adds the pending (step, loss) pairs to the sums; a NaN or inf stops the run naming its step."""
        total = 0.0
        for step, loss in pending:
            value = float(loss)
            if not math.isfinite(value):
                raise TrainingError(
                    f"loss is {value} at step {step} (epoch {step // self.run.steps_per_epoch + 1}); "
                    f"last good checkpoint: {checkpointing.last_good(self.managers['latest'])}"
                )
            total += value
        self.progress.add_losses(total, len(pending))
        pending.clear()

    def _evaluated_state(self):
        """The model state that validation, the best checkpoint and the test use: the EMA's with ``eval_ema``."""
        if not self.config.eval_ema:
            return self.model_state
        return ema.averaged_state(self.model_state, self.opt_state)

    def _save(self, kind: str, epoch: int, model_state=None) -> None:
        """Saves the run's state at its step as a ``kind`` checkpoint: "latest" (training state)
        or "best" (``model_state``, with no optimizer state)."""
        meta, step = _meta(self.run, self.progress, epoch), self.progress.step
        if kind == "latest":
            checkpointing.save(self.managers[kind], step, self.model_state, meta, self.opt_state)
        else:
            checkpointing.save(self.managers[kind], step, model_state, meta)
        self.lifecycle.saved(kind, step, meta)

    def _stop(self, epoch: int) -> NoReturn:
        """Saves the run as it is (unless its step is saved) and raises ``Preempted``."""
        self.lifecycle.stop(self.progress.step, lambda: self._save("latest", epoch))

    def train_epoch(self, epoch: int) -> None:
        """Micro-steps from the current one to the end of ``epoch``; the epoch's train scalars
        then await its validation. Stops (``_stop``) if the lifecycle asks for it."""
        self.lifecycle.enter(Phase.TRAINING, epoch)
        spe, config, micro = self.run.steps_per_epoch, self.config, self.run.stream.micro_batch
        start, end = self.progress.step, (epoch + 1) * spe
        bar = reporting.Progress(epoch, int(config.num_epochs), spe, start - epoch * spe,
                                 bool(config.progress_bar) and self.is_main)
        began = time.perf_counter()
        try:  # the bar redraws itself until closed, which an error's last line must not precede
            stop = self._steps(epoch, start, end, bar)
        finally:
            bar.close()
        if self.progress.step == end:
            seconds = time.perf_counter() - began
            self.progress.trained({"lr": self.lr(), "seconds": seconds,
                                   "images_per_sec": (end - start) * micro / max(seconds, 1e-9)})
        if stop:  # within the epoch, or at its end (then saved as awaiting validation)
            self._stop(epoch)
        # A validation that cannot run (eval_batch_size too large for the device, say) fails the
        # first time a process validates: save before it, so that fixing it costs no training.
        # Later validations compile and run the same program, and each save costs seconds.
        if not self.lifecycle.validated_here:
            self._save("latest", epoch)

    def _steps(self, epoch: int, start: int, end: int, bar: reporting.Progress) -> bool:
        """Micro-steps ``start`` to ``end`` (excluded) of ``epoch``, or up to a step after which the
        lifecycle asks for a stop (then True is returned)."""
        config, pending, stop, in_flight = self.config, [], False, None
        every = int(config.checkpoint_every_steps)
        for step, (images, labels) in zip(range(start, end), data_lib.prefetch(self._batch, range(start, end),
                                                                               int(config.prefetch))):
            self.model_state, self.opt_state, loss = self.train_step(
                self.model_state, self.opt_state, images, labels, np.int32(step))
            # JAX dispatches steps ahead of the device. Waiting here for the previous one keeps
            # one queued behind the running step (the device never idles) and no more, so the
            # bar counts finished steps and a SIGTERM is answered after the step in flight.
            if in_flight is not None:
                jax.block_until_ready(in_flight)
                bar.update()
            in_flight = loss
            pending.append((step, loss))
            self.progress.step = step + 1
            if self.progress.step % int(config.log_every_steps) == 0:
                self._log_window(pending, epoch, bar)
            stop = self.lifecycle.reached(self.progress.step)
            if stop:
                break
            if every and self.progress.step < end and self.progress.step % every == 0:
                self._check_losses(pending)
                self._save("latest", epoch)
        self._check_losses(pending)
        if in_flight is not None:
            bar.update()
        return stop

    def _log_window(self, pending: list, epoch: int, bar: reporting.Progress) -> None:
        """Reports the mean loss of the epoch's steps since its last report."""
        self._check_losses(pending)
        p = self.progress
        window = p.take_window()
        rate, lr = bar.rate(self.run.stream.micro_batch, p.step - epoch * self.run.steps_per_epoch), self.lr()
        bar.show(window, lr, rate)
        self.reporter.write("train", p.step, epoch, {"loss": window, "lr": lr, "images_per_sec": rate})

    def end_epoch(self, epoch: int) -> None:
        """Validates the epoch just trained, keeps the best checkpoint, saves the latest, reports one line.
        A notice during the validation stops the run with the epoch saved as awaiting it."""
        self.lifecycle.enter(Phase.AWAITING_VALIDATION, epoch)
        evaluated = self._evaluated_state()
        try:
            val = self.validate(evaluated)
        except preemption.StopNow:
            self._stop(epoch)
        p = self.progress
        train, improved = p.validated(val[self.config.best_metric], epoch)
        self.lifecycle.enter(Phase.VALIDATED, epoch)
        # Reported before saving: a Ctrl-C held during a save is delivered when it ends, and a
        # run resumed from the saved step would never write this epoch's records.
        self.reporter.write("val", p.step, epoch, summary(val))
        self.reporter.write("epoch", p.step, epoch, train)
        if self.is_main:
            print(reporting.epoch_line(epoch, int(self.config.num_epochs), p.step, train, val,
                                       self.config.best_metric, improved), flush=True)
        if improved:
            self._save("best", epoch, evaluated)
        self._save("latest", epoch)

    def validate(self, model_state) -> dict[str, Any]:
        """compute_metrics of ``model_state`` on the val split; raises ``StopNow`` between its
        batches on a notice (see ``Lifecycle.between_batches``)."""
        return evaluate(self.run, self.model_def, model_state, "val", between_batches=self.lifecycle.between_batches)

    def stopped_early(self) -> bool:
        patience = int(self.config.early_stopping_patience)
        return bool(patience) and self.progress.bad_epochs >= patience

    def fit(self, lifecycle: Lifecycle) -> None:
        """Trains and validates the epochs left, as ``lifecycle`` (an open one) allows: like flax's
        ``train_and_evaluate`` loop, with each stop going through ``lifecycle.stop``."""
        # Resumed from this step's checkpoint, or at step 0 with nothing to save.
        self.lifecycle, lifecycle.saved_step = lifecycle, self.progress.step
        spe, num_epochs = self.run.steps_per_epoch, int(self.config.num_epochs)
        if self.progress.phase is Phase.AWAITING_VALIDATION:  # resumed after training an epoch
            self.end_epoch(self.progress.step // spe - 1)
        while not lifecycle.stop_asked and self.progress.step < spe * num_epochs and not self.stopped_early():
            epoch = self.progress.step // spe
            with out_of_memory_as("in a train step", "lower batch_size or image_size, or set grad_accum_steps "
                                  "higher (0 chooses the fewest micro-batches that fit)"):
                self.train_epoch(epoch)
            self.end_epoch(epoch)
        if lifecycle.stop_asked:  # as a validation ended, whose result end_epoch has saved
            self._stop(self.progress.step // spe - 1)
        if self.stopped_early() and self.is_main:
            print(f"stopped early: no better val {self.config.best_metric} for {self.progress.bad_epochs} epochs")

    def test(self) -> dict[str, Any]:
        """Test metrics of the best checkpoint, written to results.json."""
        restored = checkpointing.restore(self.managers["best"], lambda meta: (self.model_state, None))
        if restored is None and self.progress.best_step >= 0:
            return self._kept_results()
        if restored is None:
            print("warning: no best checkpoint (validation metric never finite); testing the latest state")
            last_epoch = self.progress.step // self.run.steps_per_epoch - 1
            model_state, meta = self._evaluated_state(), _meta(self.run, self.progress, last_epoch)
        else:
            model_state, _, meta = restored
        metrics = evaluate(self.run, self.model_def, model_state, "test")
        results = {**metrics, "split": "test", "step": meta["step"], "epoch": meta["epoch"] + 1}
        self.reporter.write("test", meta["step"], meta["epoch"], summary(metrics))
        if self.is_main:
            checkpointing.write_json(os.path.join(self.workdir, "results.json"), results)
            print("test " + " ".join(f"{k} {v:.4f}" for k, v in summary(metrics).items()), flush=True)
        return results

    def _kept_results(self) -> dict[str, Any]:
        """The results.json of the best checkpoint, which is gone (deleted, or damaged: see the
        warning above): testing another model in its place would pass that model off as the best."""
        path, step = os.path.join(self.workdir, checkpointing.RESULTS_FILE), self.progress.best_step
        gone = f"the best checkpoint (step {step}) in {self.managers['best'].directory} is missing or unreadable"
        results = checkpointing.read_results(self.workdir)
        if results is None or results.get("step") != step:
            raise TrainingError(f"{gone}, and {path} holds no test results of it; restore that checkpoint, "
                                "or train again in another --workdir")
        if self.is_main:
            print(f"warning: {gone}; keeping its test results in {path}", file=sys.stderr)
        return results

    def close(self) -> None:
        self.reporter.close()
        for manager in self.managers.values():
            manager.close()
