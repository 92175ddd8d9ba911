"""The life of a training run: where it is (its ``Progress`` and ``Phase``) and how it stops.

A run goes through each epoch's phases in order: training its micro-steps, awaiting the
validation of the epoch just trained (saved as such, so that a resumed run validates it
without training it again), validated. It stops in one of three ways, each keeping every
finished step:

- a scheduler's notice (SIGTERM, ``preemption.StopNotice``): the run finishes the step in
  flight, saves unless that step is saved, and raises ``Preempted`` (``Lifecycle.stop``);
- a Ctrl-C: held while a checkpoint is written (``interrupts_deferred``), then delivered
  as KeyboardInterrupt; the run resumes from the checkpoint it held back for;
- an error: raised as it is, after the saves that came before it.

``Lifecycle`` is handed to the ``Trainer``: tests give it a fake that stops, fails or
records where they need, instead of patching the trainer's module.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import math
import signal
import sys
import threading
from typing import Any, Callable, Iterator, NoReturn

from medmamba_jax.training import preemption


class Phase(enum.Enum):
    """Where a run is within an epoch."""

    TRAINING = "training"
    AWAITING_VALIDATION = "awaiting validation"  # trained, its train scalars kept for the validation
    VALIDATED = "validated"


@dataclasses.dataclass
class Progress:
    """What a checkpoint's meta records besides the weights: where the run is and its best so far."""

    step: int = 0  # micro-steps done
    best_value: float | None = None
    best_step: int = -1
    best_epoch: int = -1
    bad_epochs: int = 0  # epochs since the best one, for early stopping
    loss_sum: float = 0.0  # running sum and count of this epoch's losses
    loss_count: int = 0
    window_sum: float = 0.0  # and of those since the last logged one, which a save may split
    window_count: int = 0
    # The train scalars of an epoch whose training is saved and whose validation is not yet:
    # a run resumed there validates it without training it again.
    awaiting_validation: dict | None = None

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> Progress:
        """The progress a checkpoint's meta records (its other keys ignored)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in meta.items() if k in fields})

    @property
    def phase(self) -> Phase:
        """TRAINING or AWAITING_VALIDATION: an epoch validated is one whose training starts."""
        return Phase.TRAINING if self.awaiting_validation is None else Phase.AWAITING_VALIDATION

    def add_losses(self, total: float, count: int) -> None:
        """Adds ``count`` finite losses summing to ``total`` to the epoch's and the window's sums."""
        self.loss_sum, self.loss_count = self.loss_sum + total, self.loss_count + count
        self.window_sum, self.window_count = self.window_sum + total, self.window_count + count

    def take_window(self) -> float:
        """The mean loss since the last call (or the epoch's start), starting a new window."""
        window, self.window_sum, self.window_count = self.window_sum / self.window_count, 0.0, 0
        return window

    def trained(self, scalars: dict[str, float]) -> None:
        """The epoch's training ended with ``scalars`` besides its mean loss: it awaits validation."""
        self.awaiting_validation = {"loss": self.loss_sum / max(self.loss_count, 1), **scalars}

    def validated(self, value: float, epoch: int) -> tuple[dict, bool]:
        """Records the validation ``value`` of ``epoch``; returns the epoch's train scalars and
        whether ``value`` is the best so far (NaN never is)."""
        train, self.awaiting_validation = self.awaiting_validation, None
        improved = not math.isnan(value) and (self.best_value is None or value > self.best_value)
        if improved:
            self.best_value, self.best_step, self.best_epoch, self.bad_epochs = value, self.step, epoch, 0
        else:
            self.bad_epochs += 1
        self.loss_sum, self.loss_count, self.window_sum, self.window_count = 0.0, 0, 0.0, 0
        return train, improved


class Lifecycle:
    """How a run stops, in one place: the SIGTERM notice (``preemption.StopNotice``) and its
    multi-host sync point, and the rule "save, then stop". Also knows the phase the run is
    in and which step its latest checkpoint holds.

    Use it as a context (the notice's handler is installed while it is open) and pass it to
    ``Trainer.fit``. The trainer calls ``enter`` as each phase begins and ``saved`` after
    each checkpoint: a fake overrides them to fail, signal or record at those points.
    """

    def __init__(self, notice: preemption.StopNotice | None = None):
        self.notice = notice if notice is not None else preemption.StopNotice()
        self.phase: Phase | None = None
        self.validated_here = False  # whether this process has validated an epoch yet
        self.saved_step: int | None = None  # the step of the latest checkpoint this run restored or saved

    def __enter__(self) -> Lifecycle:
        self.notice.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        self.notice.__exit__(*exc_info)

    def enter(self, phase: Phase, epoch: int) -> None:
        """``epoch`` enters ``phase``: TRAINING as its micro-steps start, AWAITING_VALIDATION
        as its validation starts, VALIDATED once its validation is recorded."""
        self.phase = phase
        if phase is Phase.VALIDATED:
            self.validated_here = True

    def saved(self, kind: str, step: int, meta: dict) -> None:
        """A checkpoint of ``kind`` ("latest" or "best") at ``step``, with ``meta``, is written."""
        if kind == "latest":
            self.saved_step = step

    def reached(self, step: int) -> bool:
        """Whether to save and stop now, ``step`` micro-steps being done; on several processes the
        sync point that makes them all stop after the same step. Call it after every micro-step."""
        return self.notice.reached(step)

    def between_batches(self) -> None:
        """Raises ``preemption.StopNow`` on a single process's notice: for work a resumed run
        redoes (a validation's batches), which need not finish before the stop."""
        self.notice.check()

    @property
    def stop_asked(self) -> bool:
        """Whether a stop was asked for (see ``StopNotice.received``)."""
        return self.notice.received

    def stop(self, step: int, save: Callable[[], None]) -> NoReturn:
        """The one way a run stops on a notice: ``save()`` unless the latest checkpoint holds
        ``step``, then raise ``Preempted``."""
        if self.saved_step != step:
            save()
        raise preemption.Preempted(step)


INTERRUPTED = 130  # the shell's status for a command stopped by Ctrl-C (SIGINT)


def report_stop(stop: preemption.Preempted | KeyboardInterrupt, then: str = "") -> int:
    """Prints the one line a command ends with when stopped, and returns the exit status a shell
    shows for that stop: ``Preempted``'s message and 143, or for a Ctrl-C "interrupted" (with
    ``then``, what to do next, after it) and 130."""
    if isinstance(stop, preemption.Preempted):
        print(stop, file=sys.stderr)
        return preemption.EXIT_STATUS
    print("\ninterrupted" + (f": {then}" if then else ""), file=sys.stderr)
    return INTERRUPTED


@contextlib.contextmanager
def interrupts_deferred(doing: str) -> Iterator[None]:
    """Holds a Ctrl-C (SIGINT) until the block ends, then delivers it; a second Ctrl-C is
    delivered at once. A save cut off midway leaves a temporary directory behind and Orbax's
    worker threads printing tracebacks over the one-line "interrupted" message."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # Only the main thread can set signal handlers, and only it receives signals; a process
        # started in the background by a script (``cmd &``) ignores Ctrl-C, and should go on doing so.
        yield
        return
    caught: list[int] = []

    def hold(signum, frame):
        if caught:
            signal.signal(signal.SIGINT, previous)
            signal.raise_signal(signum)
            return
        caught.append(signum)
        print(f"\ninterrupt: {doing} (Ctrl-C again to stop at once)", file=sys.stderr, flush=True)

    previous = signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGINT) is hold:
            signal.signal(signal.SIGINT, previous)
    if caught:
        signal.raise_signal(signal.SIGINT)
