"""Progress over a split's batches that is never silent for long, with or without a terminal.

On a terminal it is a tqdm bar whose clock is redrawn every second, so a first batch that
waits for compilation still shows time passing. Without one (a log file, a scheduler's
output) it prints a line when it starts, after each batch, and every ``heartbeat_s`` while a
batch is still running.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

from tqdm import tqdm


class BatchProgress:
    """``with BatchProgress("val", 10) as p: ... p.advance()`` once per finished batch."""

    def __init__(self, label: str, total: int, stream: TextIO | None = None, heartbeat_s: float = 10.0):
        self.label, self.total, self.done = label, total, 0
        self._stream = stream or sys.stderr
        self._interactive = self._stream.isatty()
        self._heartbeat_s = 1.0 if self._interactive else heartbeat_s
        self._began = self._last_line = time.perf_counter()
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._bar = tqdm(total=total, desc=label, unit="batch", file=self._stream, leave=False,
                         dynamic_ncols=True) if self._interactive else None
        self._ticker = threading.Thread(target=self._tick, daemon=True)

    def __enter__(self) -> BatchProgress:
        if not self._interactive:
            self._line(f"{self.label}: {self.total} batch{'es' * (self.total != 1)}")
        self._ticker.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._ticker.join()
        if self._bar is not None:
            self._bar.close()

    def advance(self) -> None:
        with self._lock:
            self.done += 1
            if self._bar is not None:
                self._bar.update()
            else:
                self._line(f"{self.label}: batch {self.done}/{self.total} done")

    def _tick(self) -> None:
        while not self._stop.wait(self._heartbeat_s):
            with self._lock:
                if self._bar is not None:
                    self._bar.refresh()
                elif time.perf_counter() - self._last_line >= self._heartbeat_s:
                    self._line(f"{self.label}: batch {self.done + 1}/{self.total} running")

    def _line(self, text: str) -> None:
        self._last_line = now = time.perf_counter()
        print(f"{text} ({now - self._began:.0f}s)", file=self._stream, flush=True)
