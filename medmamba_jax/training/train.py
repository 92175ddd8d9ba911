"""``train_and_evaluate(config, workdir)``: train, validate every epoch, test the best checkpoint.

Everything that can be wrong with the inputs (config, data, init_from) is checked before
the workdir is touched. A run finds its latest checkpoint in the workdir and resumes from
it; since batches and augmentation keys are functions of (seed, step) and the model's
RNG state is checkpointed, a resumed run ends with the same weights and results.json as
an uninterrupted one. ``prepare`` resolves the inputs into a ``Run``; ``trainer.Trainer`` runs
its epochs. The workdir layout is described in ``checkpointing``.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from medmamba_jax import data as data_lib
from medmamba_jax import sharding
from medmamba_jax.models import MedMamba
from medmamba_jax.training import (checkpointing, class_weights, ema, memory, model_init, optim, preemption,
                                   steps)
from medmamba_jax.training import config as config_lib
from medmamba_jax.training.errors import ConfigError, TrainingError
from medmamba_jax.training.lifecycle import Lifecycle
from medmamba_jax.training.trainer import Run, Trainer


def _check_channels(config, channels: int, what: str) -> None:
    if not data_lib.channels_fit(channels, int(config.in_chans)):
        raise ConfigError(f"{config.dataset} has {channels}-channel {what}; in_chans={config.in_chans} cannot take them")


def prepare(config, workdir: str | None = None) -> Run:
    """Validates the config, loads the data, builds (and maybe initialises) the model, and
    compiles the train step for a batch that fits the device (``memory``). With a ``workdir``
    that holds a run, the run's settings are checked against it before anything compiles."""
    config_lib.validate(config)
    info = data_lib.dataset_info(config)
    _check_channels(config, info["n_channels"], "images")  # as published, before any data loads
    splits = {split: data_lib.load_split(config, split) for split in data_lib.SPLITS}
    for split, (images, _) in splits.items():  # as stored: a file may differ from the published set
        _check_channels(config, images.shape[-1], f"{split} images in its files")
    # Steps map to epochs (and the schedule's milestones) through the train split's size.
    info["split_sizes"] = {split: len(labels) for split, (_, labels) in splits.items()}
    weights = class_weights.resolve(config.class_weights, splits["train"][1], info)
    if workdir is not None:
        config = _with_accumulation(config, _saved_accumulation(config, workdir))
        check_same_run(config, workdir, info)
    mesh = sharding.make_mesh()
    if int(config.batch_size) % mesh.devices.size:
        raise ConfigError(f"batch_size {config.batch_size} must be a multiple of the {mesh.devices.size} devices")
    model = MedMamba(config_lib.model_config(config, info["num_classes"]), rngs=model_init.init_rngs(config))
    if config.init_from:
        model_init.initialise_from(model, config.init_from)
    return _plan(config, info, splits, mesh, model, weights)


def _saved_accumulation(config, workdir: str) -> int:
    """An automatic ``grad_accum_steps`` (0) resumes with the count its workdir trained with."""
    k = int(config.grad_accum_steps)
    if k == 0 and checkpointing.has_checkpoint(workdir):
        try:
            return int(checkpointing.read_config(workdir).grad_accum_steps)
        except checkpointing.NoCheckpointError:
            pass  # check_same_run refuses such a workdir
    return k


def _with_accumulation(config, k: int):
    """A copy of ``config`` with ``grad_accum_steps`` set to ``k``."""
    if k == int(config.grad_accum_steps):
        return config
    resolved = config.copy_and_resolve_references()
    resolved.grad_accum_steps = k
    return resolved


def _plan(config, info: dict, splits: dict, mesh, model, weights: np.ndarray | None) -> Run:
    """The Run, with as many micro-batches per update as the config sets, or (0) the fewest
    whose compiled step fits the device."""
    images, labels = splits["train"]
    is_main = jax.process_index() == 0

    def build(k: int) -> Run:
        micro = int(config.batch_size) // k
        if micro % mesh.devices.size:
            raise ConfigError(f"batch_size / grad_accum_steps = {micro} must be a multiple of the "
                              f"{mesh.devices.size} devices")
        stream = data_lib.TrainStream(
            images, labels, micro, int(config.seed), steps_multiple=k, autoaugment=bool(config.autoaugment),
            process_index=jax.process_index(), process_count=jax.process_count(),
        )
        resolved = _with_accumulation(config, k)
        tx, schedule = optim.make_tx(resolved, stream.steps_per_epoch // k)
        optimizer = ema.make_optimizer(model, tx, float(config.ema_decay), k)
        return Run(resolved, info, splits, stream, mesh, model, optimizer, schedule, weights)

    runs: dict[int, Run] = {}

    def compile_step(k: int):
        runs[k] = run = build(k)
        micro = run.stream.micro_batch
        if is_main:
            print(f"compiling the train step (micro-batch {micro})...", end=" ", flush=True)
        began = time.perf_counter()
        run.train_step = steps.compile_train_step(run.model, run.optimizer, run.stream, data_lib.train_transform(config),
                                                  info["multi_label"], int(config.seed), mesh, weights)
        if is_main:
            print(f"done in {time.perf_counter() - began:.0f}s", flush=True)
        return run.train_step

    # This process's own device: another host's cannot be asked for its memory.
    budget = memory.device_budget(jax.local_devices()[0], float(config.device_memory_gb))
    asked = int(config.grad_accum_steps)
    if asked:
        compile_step(asked)
        need = memory.step_bytes(runs[asked].train_step)
        if need is not None and need > budget.bytes and is_main:
            print(f"warning: a micro-batch of {runs[asked].stream.micro_batch} needs {need / memory.GB:.1f} GB and "
                  f"{budget.source}; expect it to run out of memory (--config.grad_accum_steps=0 picks a count "
                  "that fits)", file=sys.stderr)
        return runs[asked]
    try:
        plan = memory.fit_batch(int(config.batch_size), mesh.devices.size, compile_step, budget)
    except MemoryError as err:
        raise TrainingError(str(err)) from None
    k = _agreed(plan.grad_accum_steps)
    if k != plan.grad_accum_steps:  # several hosts train with process 0's choice
        compile_step(k)
    elif plan.message and is_main:
        print(plan.message, flush=True)
    return runs[k]


def _agreed(k: int) -> int:
    """Process 0's ``k`` on every process: hosts with other free memory must still take the same steps."""
    if jax.process_count() == 1:
        return k
    return int(multihost_utils.broadcast_one_to_all(np.int32(k)))


def check_same_run(config, workdir: str, info: dict[str, Any]) -> None:
    """A workdir that holds checkpoints (latest or best) is only continued with the settings,
    dataset classes and split sizes that made them (``config_lib.RESUMABLE_KEYS`` may change);
    anything else is refused before it is touched."""
    if not checkpointing.has_checkpoint(workdir):
        return
    saved_info = checkpointing.read_dataset_info(workdir) or {}
    for key, what in (("label_names", "classes"), ("split_sizes", "split sizes")):
        if key in saved_info and saved_info[key] != info[key]:  # a workdir from before dataset.json has neither
            raise ConfigError(f"the dataset's {what} changed since {workdir} was trained: "
                              f"{saved_info[key]} -> {info[key]}; restore the data, or train in another --workdir")
    try:
        saved = checkpointing.read_config(workdir)
    except checkpointing.NoCheckpointError:
        raise ConfigError(f"{workdir} holds checkpoints but no config.json, so resuming it cannot be checked; "
                          "use another --workdir") from None
    changes = config_lib.run_changes(saved, config)
    if changes:
        listed = ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in changes.items())
        raise ConfigError(f"{workdir} holds a run with other settings ({listed}); resume it with the settings "
                          "in its config.json, or train in another --workdir")


def train_and_evaluate(config, workdir: str, lifecycle: Lifecycle | None = None) -> dict[str, Any]:
    """Trains per ``config`` in ``workdir`` (resuming if it holds a checkpoint); returns test metrics.
    ``lifecycle`` (a fresh ``Lifecycle`` if None) sees the run's phases and saves, and stops it."""
    workdir = os.path.abspath(os.path.expanduser(workdir))
    if config.distributed:
        explicit = int(config.num_processes) > 0
        jax.distributed.initialize(config.coordinator_address or None,
                                   int(config.num_processes) if explicit else None,
                                   int(config.process_id) if explicit else None)
        preemption.announce_start(max(checkpointing.steps_on_disk(workdir, "latest"), default=0))
    run = prepare(config, workdir)
    with checkpointing.workdir_lock(workdir):
        trainer = Trainer(run, workdir)  # restores a checkpoint only once its model is checked
        try:
            if jax.process_index() == 0:  # with the micro-batch count chosen, which a resume keeps
                checkpointing.write_json(os.path.join(workdir, "config.json"), run.config.to_dict())
                checkpointing.write_json(os.path.join(workdir, checkpointing.DATASET_FILE), run.info)
                if run.class_weights is not None:
                    print(class_weights.record(workdir, run.config.class_weights, run.class_weights,
                                               run.splits["train"][1], run.info), flush=True)
            with lifecycle or Lifecycle() as opened:
                trainer.fit(opened)
            return trainer.test()
        finally:
            trainer.close()
