"""Stopping a run on a scheduler's notice (SIGTERM) with every finished step saved.

SLURM, Kubernetes and cloud preemption send SIGTERM and kill the job some seconds later.
Python's default is to die at once, losing the steps since the last checkpoint (a whole
epoch with the default ``checkpoint_every_steps=0``). While a ``StopNotice`` is open, the
run instead finishes the step it is in, saves, and raises ``Preempted``.

One process handles SIGTERM itself. Several processes must all stop after the same step, or
the ones still training wait forever in a collective: JAX's preemption service (started by
``jax.distributed.initialize``, which also catches SIGTERM) tells every process the step to
stop at, whichever of them got the notice.
"""

from __future__ import annotations

import signal
import sys
import threading
import types

import jax
from jax.experimental import multihost_utils

SIGNAL = signal.SIGTERM
EXIT_STATUS = 128 + SIGNAL  # what a shell reports for a process that SIGTERM stopped


class Preempted(Exception):
    """The run stopped on SIGTERM after saving its latest checkpoint at ``step``."""

    def __init__(self, step: int):
        super().__init__(f"stopped by SIGTERM after step {step}, which is saved: run the same command to resume")
        self.step = step


class StopNow(Exception):
    """A notice to a single process, raised by ``StopNotice.check``."""


def announce_start(step: int) -> None:
    """Tells JAX's preemption service, on each of several processes, the step they resume after.

    The service stops the processes one step after the highest step any of them last passed
    to ``reached``, counting from 0. A notice that came before a resumed run's first ``reached``
    would name step 1, which that run never reaches again: call this as soon as the processes
    have started, before loading data.
    """
    if jax.process_count() > 1:
        try:
            multihost_utils.reached_preemption_sync_point(step)
        except RuntimeError:  # jax_enable_preemption_service is off
            pass


class StopNotice:
    """A context in which SIGTERM asks the run to stop; ``reached(step)`` says when.

    Call ``reached`` after every micro-step with the steps done, on every process.
    """

    def __init__(self):
        self._shared = jax.process_count() > 1
        self._received = False
        self._installed = False
        self._previous = None

    def __enter__(self) -> StopNotice:
        # Only the main thread can set a handler; JAX's service already holds SIGTERM when shared;
        # and a process told to ignore SIGTERM goes on ignoring it.
        if (not self._shared and threading.current_thread() is threading.main_thread()
                and signal.getsignal(SIGNAL) is not signal.SIG_IGN):
            self._previous, self._installed = signal.signal(SIGNAL, self._receive), True
        return self

    def __exit__(self, *exc_info) -> None:
        if self._installed:  # a handler set outside Python (None here) cannot be put back
            signal.signal(SIGNAL, signal.SIG_DFL if self._previous is None else self._previous)
            self._installed = False

    def _receive(self, signum: int, frame: types.FrameType | None) -> None:
        if not self._received:
            print("\nSIGTERM: saving and stopping", file=sys.stderr, flush=True)
        self._received = True

    def check(self) -> None:
        """Raises ``StopNow`` if a single process got a notice: called between the parts of work
        that a resumed run redoes (a validation's batches), so that a scheduler's grace period
        need not cover the rest of it. The processes of a shared run learn of a notice only
        together, at a step: they finish such work."""
        if self._received and not self._shared:
            raise StopNow

    def reached(self, step: int) -> bool:
        """Whether to save and stop now, ``step`` micro-steps being done."""
        if self._shared and not self._received:
            try:
                self._received = multihost_utils.reached_preemption_sync_point(step)
            except RuntimeError:  # jax_enable_preemption_service is off: SIGTERM kills as before
                self._shared = False
        return self._received

    @property
    def received(self) -> bool:
        """Whether a stop was asked for. Between steps, only a single process can learn of one:
        the processes of a shared run learn it together, from ``reached``."""
        return self._received
