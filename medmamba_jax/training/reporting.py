"""Feedback of a run: metrics.jsonl, TensorBoard events, curves.png, a progress bar, one line per epoch.

Only process 0 writes; other processes get a Reporter that does nothing.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import threading
import time
from typing import Any

import tqdm

from medmamba_jax import files
from medmamba_jax.analysis import curves
from medmamba_jax.analysis.curves import METRICS_FILE
CURVES_FILE = "curves.png"


class Reporter:
    """Appends ``{"step", "epoch", "split", **scalars}`` lines to W/metrics.jsonl and to TensorBoard.

    A run that starts at ``start_step`` (0 for a fresh start) writes again what came after that
    step, and its test results: those records of an earlier attempt are dropped from
    metrics.jsonl and hidden from TensorBoard. ``revalidate`` also drops the val and epoch
    records at ``start_step`` itself, for a run resumed between an epoch's training and its
    validation. Test scalars go to their own TensorBoard run, W/tensorboard/test, which each
    test replaces, so re-running a finished run (or one given more epochs) shows one test
    result, not two. W/curves.png is drawn from metrics.jsonl (``best_metric`` starred) after
    the first validated epoch, then after an epoch at most every ``curves_every_s`` seconds
    (a draw takes about 0.5 s, the first 2.5 s, benchmarks/RESULTS.md: short epochs must not
    wait for it), and after the test.
    """

    def __init__(self, workdir: str, enabled: bool = True, start_step: int = 0, revalidate: bool = False,
                 best_metric: str = "auc", curves_every_s: float = 60.0):
        self.enabled = enabled
        if not enabled:
            return
        self._workdir, self._best_metric = workdir, best_metric
        self._curves_every_s, self._next_curves = curves_every_s, -math.inf
        from tensorboardX import SummaryWriter

        def kept(record: dict) -> bool:
            if record["split"] == "test" or record["step"] > start_step:
                return False
            return not (revalidate and record["step"] == start_step and record["split"] in ("val", "epoch"))

        path = os.path.join(workdir, METRICS_FILE)
        at_start = _keep_records(path, kept) if os.path.exists(path) else []
        self._jsonl = open(path, "a")
        self._tb_dir = os.path.join(workdir, "tensorboard")
        if start_step == 0:  # an earlier attempt's test result, which _replace_test_run would not reach
            shutil.rmtree(os.path.join(self._tb_dir, "test"), ignore_errors=True)
        # tensorboardX names event files by the second and opens them with "wb": a run restarted
        # within the same second would otherwise erase the previous run's events.
        self._tb = SummaryWriter(self._tb_dir, purge_step=start_step, filename_suffix=f".{time.time_ns()}")
        # The purge hides start_step itself, where only some records may be stale: the kept ones
        # are written again.
        for record in at_start:
            if record["step"] == start_step:
                self._add_scalars(record)
        self._tb.flush()

    def write(self, split: str, step: int, epoch: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": step, "epoch": epoch, "split": split, **scalars}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if split == "test":
            self._replace_test_run(step, scalars)
        else:
            self._add_scalars(record)
            self._tb.flush()
        if split == "test" or (split == "epoch" and time.monotonic() >= self._next_curves):
            self._draw_curves()
            self._next_curves = time.monotonic() + self._curves_every_s

    def _draw_curves(self) -> None:
        """A figure is a convenience: failing to draw one warns and lets training go on."""
        path = os.path.join(self._workdir, CURVES_FILE)
        try:
            curves.draw([curves.read_history(self._workdir, os.path.basename(self._workdir))], self._best_metric,
                        path)
        except Exception as err:  # noqa: BLE001
            print(f"warning: could not draw {path}: {type(err).__name__}: {err}", file=sys.stderr)

    def _add_scalars(self, record: dict) -> None:
        for name, value in record.items():
            if name not in ("step", "epoch", "split"):
                self._tb.add_scalar(f"{record['split']}/{name}", value, record["step"])

    def _replace_test_run(self, step: int, scalars: dict[str, float]) -> None:
        from tensorboardX import SummaryWriter

        test_dir = os.path.join(self._tb_dir, "test")
        shutil.rmtree(test_dir, ignore_errors=True)
        with SummaryWriter(test_dir) as writer:
            for name, value in scalars.items():
                writer.add_scalar(f"test/{name}", value, step)

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()


def _keep_records(path: str, keep) -> list[dict]:
    """Rewrites a JSON-lines file atomically with the records ``keep`` accepts, and returns them."""
    records = [r for r in files.read_json_lines(path) if keep(r)]
    files.write_json_lines(path, records)
    return records


class Progress:
    """A tqdm bar over an epoch's micro-steps showing loss, learning rate and images/s.

    Its clock is redrawn every ``tick_s`` (every ``heartbeat_s`` where stderr is no terminal)
    while it is open: a step that takes minutes, as one of the paper's batches does on a
    CPU, still shows time passing. ``close`` it on every path, or the redrawing goes on.
    """

    def __init__(self, epoch: int, num_epochs: int, total: int, initial: int, enabled: bool,
                 tick_s: float = 1.0, heartbeat_s: float = 10.0):
        self._bar = tqdm.tqdm(total=total, initial=initial, desc=f"epoch {epoch + 1}/{num_epochs}",
                              disable=not enabled, dynamic_ncols=True, leave=False)
        self._last_time, self._last_n = time.perf_counter(), initial
        self._closed = threading.Event()
        if enabled:
            every = tick_s if sys.stderr.isatty() else heartbeat_s
            threading.Thread(target=self._redraw, args=(every,), daemon=True).start()

    def _redraw(self, every: float) -> None:
        while not self._closed.wait(every):
            self._bar.refresh()  # tqdm holds its own lock around each draw

    def update(self, n: int = 1) -> None:
        self._bar.update(n)

    def rate(self, images_per_step: int, steps_done: int) -> float:
        """Images/s since the previous call; ``steps_done`` is the bar position now."""
        now = time.perf_counter()
        rate = (steps_done - self._last_n) * images_per_step / max(now - self._last_time, 1e-9)
        self._last_time, self._last_n = now, steps_done
        return rate

    def show(self, loss: float, lr: float, images_per_sec: float) -> None:
        self._bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", img_s=f"{images_per_sec:.1f}", refresh=False)

    def close(self) -> None:
        self._closed.set()
        self._bar.close()


def epoch_line(epoch: int, num_epochs: int, step: int, train: dict[str, float], val: dict[str, Any],
               best_metric: str, improved: bool) -> str:
    """One-line epoch summary, e.g. 'epoch 3/100 step 2109 loss 0.4123 lr 1.00e-03 | val acc ...'."""
    def fmt(value: float) -> str:
        return "nan" if math.isnan(value) else f"{value:.4f}"

    parts = [f"epoch {epoch + 1}/{num_epochs}", f"step {step}", f"loss {fmt(train['loss'])}",
             f"lr {train['lr']:.2e}", f"{train['images_per_sec']:.1f} img/s", f"{train['seconds']:.0f}s |",
             "val " + " ".join(f"{k} {fmt(val[k])}" for k in ("accuracy", "auc", "f1"))]
    if improved:
        parts.append(f"(best {best_metric})")
    return " ".join(parts)
