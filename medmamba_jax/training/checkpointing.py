"""Workdir layout and Orbax checkpoints of a training run.

The workdir contract, relied on by the evaluation tools::

    W/config.json           the full training config (``config.from_dict`` reads it back)
    W/dataset.json          what the model was trained to output: task, label_names (index
                            order), n_channels, num_classes, multi_label; the tools name
                            classes from it, not from the data folder as it is now
    W/checkpoints/latest/   Orbax CheckpointManager, the 2 newest training states, one
                            directory per micro-step, items ``model`` (nnx.state of the
                            MedMamba: Params, BatchStats, RNG state), ``opt`` (optimizer
                            state; with ``ema_decay``, also the weights' EMA) and ``meta``
                            (JSON: step, epoch, best-so-far, model_config, and an epoch's
                            train scalars while it awaits validation, and
                            ``checksums``: the SHA-256 of each array item, checked on restore)
    W/checkpoints/best/     Orbax CheckpointManager, the one state with the best validation
                            ``config.best_metric``; items ``model`` (with ``eval_ema``, the
                            EMA weights, validated as such) and ``meta``
    W/class_weights.json    with ``class_weights`` set: the weights and the training counts they came from
    W/results.json          test metrics of the best checkpoint: accuracy, auc, precision,
                            sensitivity, specificity, f1, per-class lists, step, epoch
    W/metrics.jsonl         one JSON object per log event: {"step", "epoch", "split", ...}
    W/tensorboard/          TensorBoard event files (train/*, val/*; test/* in the run W/tensorboard/test)
    W/curves.png            loss, validation metrics and learning rate per epoch, redrawn after each
                            validated epoch and the test (medmamba_jax.analysis.curves)
    W/train.lock            while a run goes on: flock-ed by its process (process 0), naming its pid and host

``load_trained(W, which="best" | "latest")`` returns ``(model in eval mode, config)``.
Each JSON file is written to a temporary name and renamed, and Orbax finalises a
checkpoint only once it is complete, so a killed run never leaves a half-written file.
A checkpoint whose arrays differ from their checksum (a flipped bit loads as other
weights) counts as unreadable; one whose meta names another step than its directory stops
the run or tool; one whose weights hold NaN or inf is never written.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import sys
from typing import Any, Callable, Iterator, NamedTuple

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging as absl_logging
from flax import nnx

from medmamba_jax.model_files import (check_finite, describe_nonfinite, digest, host_arrays, nonfinite_names,
                                      restore_targets)
# write_json is re-exported: training.train and tests call checkpointing.write_json.
from medmamba_jax.files import write_json  # noqa: F401
from medmamba_jax.models import MedMamba, MedMambaConfig
from medmamba_jax.training import config as config_lib
from medmamba_jax.training.errors import ConfigError, TrainingError
from medmamba_jax.training.lifecycle import interrupts_deferred

KINDS = ("latest", "best")
DATASET_FILE = "dataset.json"
# Besides the arrays, Orbax writes metadata files (tens of kilobytes per item) and a manifest.
METADATA_BYTES = 1 << 20
RESULTS_FILE = "results.json"
LOCK_FILE = "train.lock"


class NoCheckpointError(FileNotFoundError):
    """The workdir holds no (readable) checkpoint of the requested kind."""


@contextlib.contextmanager
def workdir_lock(workdir: str) -> Iterator[None]:
    """Holds ``workdir`` (made by process 0 if needed) for one run: two runs in one workdir overwrite each other's
    checkpoints and records. Process 0 takes an exclusive flock on W/train.lock, which the
    kernel releases when the process ends however it ends, so a killed run's lock never
    blocks a restart; the other processes of a multi-host run learn its outcome before any
    writes. TrainingError, naming the holder's pid and host, when another run holds it."""
    fd, holder = _try_lock(workdir) if jax.process_index() == 0 else (None, None)
    if jax.process_count() > 1:  # every process must reach this broadcast, the one that failed too
        from jax.experimental import multihost_utils

        if not int(multihost_utils.broadcast_one_to_all(np.int32(holder is None))):
            holder = holder or "see process 0's error"
    if holder is not None:
        raise TrainingError(f"{workdir} is in use by another train.py ({holder}); wait for it to end, "
                            "or train in another --workdir")
    try:
        yield
    finally:
        if fd is not None:  # removed while still held, so no process can lock the removed file
            os.unlink(os.path.join(workdir, LOCK_FILE))
            os.close(fd)


def _try_lock(workdir: str) -> tuple[int | None, str | None]:
    """(open locked descriptor, None), or (None, what the holder wrote) if another process holds it."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, LOCK_FILE)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip()
            os.close(fd)
            return None, holder or "a process that has not yet named itself"
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        os.close(fd)  # locked a file that its holder removed as it ended: lock the one there now
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
    return fd, None


def managers(workdir: str) -> dict[str, ocp.CheckpointManager]:
    """The 'latest' (keeps 2, so a corrupt newest one has a fallback) and 'best' managers."""
    def manager(kind: str, keep: int) -> ocp.CheckpointManager:
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False)
        return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints", kind), options=options)

    with orbax_quiet():  # a damaged checkpoint's metadata is reported when it is restored
        return {"latest": manager("latest", 2), "best": manager("best", 1)}


def free_disk_bytes(path: str) -> int:
    """Bytes free to this user on the filesystem holding ``path``."""
    return shutil.disk_usage(path).free


def last_good(manager: ocp.CheckpointManager) -> str:
    """The newest checkpoint of ``manager`` as a path, or "none"; ``save`` writes only finite weights."""
    step = manager.latest_step()
    return "none" if step is None else os.path.join(str(manager.directory), str(step))


def save(manager: ocp.CheckpointManager, step: int, model_state, meta: dict, opt_state=None,
         free_bytes: Callable[[str], int] = free_disk_bytes) -> None:
    """Saves a checkpoint at ``step``, replacing one already there (a resumed run redoes steps),
    with the checksum of each array item in its meta. Weights (or optimizer state) holding NaN
    or inf are not saved: TrainingError names them and the last good checkpoint. A disk without
    room for it is a one-line TrainingError naming the bytes needed, raised before writing when
    ``free_bytes(directory)`` shows too little room, and after a write that ran out."""
    directory = str(manager.directory)
    states = {"model": model_state} if opt_state is None else {"model": model_state, "opt": opt_state}
    arrays = {item: host_arrays(state) for item, state in states.items()}
    bad = [f"{item}.{name}" for item, listed in arrays.items() for name in nonfinite_names(listed)]
    if bad:
        raise TrainingError(f"the state at step {step} is not saved: {describe_nonfinite(bad)}; "
                            f"last good checkpoint: {last_good(manager)}")
    needed = sum(array.nbytes for listed in arrays.values() for _, array in listed) + METADATA_BYTES
    if (free := free_bytes(directory)) < needed:
        raise TrainingError(_no_space(directory, step, needed, free))
    meta = {**meta, "checksums": {item: digest(listed) for item, listed in arrays.items()}}
    items = {item: ocp.args.StandardSave(state) for item, state in states.items()}
    items["meta"] = ocp.args.JsonSave(meta)
    with interrupts_deferred("finishing the checkpoint being written"), orbax_quiet():
        if step in manager.all_steps():
            manager.delete(step)
        try:
            saved = manager.save(step, args=ocp.args.Composite(**items))
            manager.wait_until_finished()
        except Exception as err:  # noqa: BLE001 - Orbax wraps the OSError in its own types
            if not _is_disk_full(err):
                raise
            raise TrainingError(_no_space(directory, step, needed, free_bytes(directory))) from None
    if not saved:  # Orbax skips, without an error, a step older than its newest one
        raise TrainingError(f"checkpoint step {step} was not written: {manager.directory} already holds "
                            f"step {manager.latest_step()}")


def _no_space(directory: str, step: int, needed: int, free: int) -> str:
    return (f"no space left on the disk of {directory} for checkpoint step {step}: it needs about {needed:,} bytes "
            f"and {free:,} are free; free some space and run the same command to resume")


def _is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` (an OSError, or TensorStore's ValueError quoting one) is a full disk or quota."""
    codes = (errno.ENOSPC, errno.EDQUOT)
    if isinstance(err, OSError):
        return err.errno in codes
    return any(f"os_error_code='{code}'" in str(err) for code in codes)


@contextlib.contextmanager
def orbax_quiet() -> Iterator[None]:
    """Keeps Orbax from logging a traceback per array for a checkpoint operation that fails, which
    the caller reports in one line instead. Such a failure abandons TensorStore reads or writes
    whose completions, arriving later, find their event loop closed; those are dropped too."""
    _drop_closed_loop_echoes()
    logger = absl_logging.get_absl_logger()
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _drop_closed_loop_echoes() -> None:
    """Installs (once) a ``sys.unraisablehook`` that drops the "Event loop is closed" errors of the
    TensorStore completions an abandoned Orbax operation leaves behind, and passes on the rest."""
    previous = sys.unraisablehook
    if getattr(previous, "drops_closed_loop_echoes", False):
        return

    def hook(unraisable) -> None:
        value = unraisable.exc_value
        if not (isinstance(value, RuntimeError) and str(value) == "Event loop is closed"):
            previous(unraisable)

    hook.drops_closed_loop_echoes = True
    sys.unraisablehook = hook


def has_checkpoint(workdir: str, kind: str | None = None) -> bool:
    """Whether ``workdir`` holds a finalised checkpoint of ``kind`` (any kind if None). A plain
    directory listing: making a CheckpointManager here would add a cross-process barrier that
    the processes reach at different points of their start-up."""
    if kind is None:
        return any(has_checkpoint(workdir, k) for k in KINDS)
    return bool(steps_on_disk(workdir, kind))


def steps_on_disk(workdir: str, kind: str) -> list[int]:
    """The finalised steps of ``kind`` in ``workdir``, by a plain listing as in ``has_checkpoint``."""
    directory = os.path.join(os.path.abspath(workdir), "checkpoints", kind)
    return sorted(ocp.utils.checkpoint_steps(directory)) if os.path.isdir(directory) else []


def restore(manager: ocp.CheckpointManager, templates: Callable[[dict], tuple[Any, Any]]):
    """(model_state, opt_state, meta) of the newest readable checkpoint, or None if there is none.

    ``templates(meta)`` gives the (model_state, opt_state or None) structures to restore
    into, or raise ConfigError for a checkpoint of something else. An unreadable checkpoint,
    or one whose arrays differ from their checksum, is reported on stderr and the previous
    one is tried. One whose meta names another step than its directory is a ConfigError: a
    run resumed there would cut its records and drop its later checkpoints.
    """
    with orbax_quiet():
        steps = sorted(manager.all_steps(), reverse=True)
    for i, step in enumerate(steps):
        try:
            with orbax_quiet():
                meta = dict(manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])
                if meta.get("step", step) != step:
                    raise ConfigError(f"checkpoint {manager.directory}/{step} records step {meta['step']}: it was "
                                      "edited or damaged; restore it, or move it out of the way to use the one before")
                model_state, opt_state = templates(meta)
                items = {"model": ocp.args.StandardRestore(restore_targets(model_state))}
                if opt_state is not None:
                    items["opt"] = ocp.args.StandardRestore(restore_targets(opt_state))
                restored = manager.restore(step, args=ocp.args.Composite(**items))
                _verify_checksums(restored, list(items), meta)
        except ConfigError:
            raise
        except Exception as err:  # noqa: BLE001 - any failure means: this checkpoint is unusable
            fallback = f"falling back to step {steps[i + 1]}" if i + 1 < len(steps) else "no older checkpoint"
            message = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            print(f"warning: checkpoint {manager.directory}/{step} is unreadable ({message}); {fallback}",
                  file=sys.stderr)
            continue
        return restored["model"], restored["opt"] if opt_state is not None else None, meta
    return None


def _verify_checksums(restored, items: list[str], meta: dict) -> None:
    """ValueError if an item's arrays differ from the checksum saved with them (a checkpoint
    saved before checksums has none)."""
    for item in items:
        expected = meta.get("checksums", {}).get(item)
        if expected is not None and digest(host_arrays(restored[item])) != expected:
            raise ValueError(f"its {item} arrays differ from the checksum recorded when saved: damaged or altered")


def _read_json(path: str) -> Any:
    """The parsed contents of a JSON file the run wrote; ConfigError for a damaged one."""
    with open(path) as f:
        try:
            return json.load(f)
        except ValueError as err:
            raise ConfigError(f"{path} is not valid JSON ({err}); restore it from a backup, or train again "
                              "in another --workdir") from None


def _read_json_if_there(path: str) -> Any:
    return _read_json(path) if os.path.exists(path) else None


def read_dataset_info(workdir: str) -> dict[str, Any] | None:
    """The workdir's dataset.json; None for a workdir trained before it was written."""
    return _read_json_if_there(os.path.join(workdir, DATASET_FILE))


def read_results(workdir: str) -> dict[str, Any] | None:
    """The workdir's results.json; None if the run has not written one."""
    return _read_json_if_there(os.path.join(workdir, RESULTS_FILE))


def read_config(workdir: str) -> ml_collections.ConfigDict:
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise NoCheckpointError(f"{path} not found: {workdir} is not a training workdir")
    return config_lib.from_dict(_read_json(path))


class Trained(NamedTuple):
    """A workdir's trained model (in eval mode), its config, and the checkpoint it came from."""

    model: MedMamba
    config: ml_collections.ConfigDict
    kind: str  # "best" or "latest": the one loaded, which may be the fallback
    step: int


def load_trained(workdir: str, which: str = "best",
                 allow_nonfinite: bool = False) -> tuple[MedMamba, ml_collections.ConfigDict]:
    """The trained model (in eval mode) and config of a workdir written by train.py.

    ``which="best"`` is the best checkpoint by validation ``config.best_metric``; a run
    that never produced a readable one (e.g. killed during its first epoch) falls back to
    'latest', with a warning. Raises NoCheckpointError (a FileNotFoundError) when there is
    nothing to load, and NonFiniteWeightsError for weights holding NaN or inf unless
    ``allow_nonfinite``. ``load_trained_checkpoint`` also says which checkpoint was loaded.
    """
    trained = load_trained_checkpoint(workdir, which, allow_nonfinite)
    return trained.model, trained.config


def load_trained_checkpoint(workdir: str, which: str = "best", allow_nonfinite: bool = False) -> Trained:
    """``load_trained``'s model and config, with the kind and step of the checkpoint loaded."""
    if which not in KINDS:
        raise ValueError(f"which must be one of {KINDS}, got {which!r}")
    config = read_config(workdir)
    kinds = (which, "latest") if which == "best" else (which,)
    for kind in kinds:
        directory = os.path.join(workdir, "checkpoints", kind)
        if not os.path.isdir(directory):
            continue
        models: list[MedMamba] = []

        def templates(meta: dict):
            models.append(MedMamba.abstract(MedMambaConfig.from_dict(meta["model_config"])))
            return nnx.state(models[-1]), None

        with orbax_quiet():
            manager = ocp.CheckpointManager(os.path.abspath(directory))
        restored = restore(manager, templates)
        if restored is None:
            continue
        model, step = models[-1], int(restored[2]["step"])
        if not allow_nonfinite:
            check_finite(host_arrays(restored[0]), os.path.join(directory, str(step)))
        nnx.update(model, restored[0])
        model.eval()
        if kind != which:
            print(f"warning: {os.path.join(workdir, 'checkpoints', which)} holds no readable checkpoint; "
                  f"using the latest one (step {step})", file=sys.stderr)
        return Trained(model, config, kind, step)
    checkpoints = os.path.join(workdir, "checkpoints")
    if any(steps_on_disk(workdir, kind) for kind in kinds):
        raise NoCheckpointError(f"no checkpoint in {checkpoints} can be read (see the warnings above): they are "
                                "damaged; restore them from a backup, or train again in another --workdir")
    raise NoCheckpointError(f"no checkpoint in {checkpoints}; train first with train.py")
