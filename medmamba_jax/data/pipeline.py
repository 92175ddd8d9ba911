"""The training stream: micro-batch ``step`` is a pure function of (seed, step).

The sample order of epoch e is ``default_rng((seed, e)).permutation(N)`` and micro-step s
takes the s-th slice of it; the last incomplete batch of an epoch is dropped so every
step has the same shape. A run restarted at step s therefore sees exactly the batches
the uninterrupted run would have seen. Every host computes the same global indices and
reads only its own contiguous share of them.
"""

from __future__ import annotations

import collections
import concurrent.futures
from typing import Callable, Iterator, TypeVar

import numpy as np

from medmamba_jax.data.autoaugment import autoaugment_batch
from medmamba_jax.data.errors import DataError

T = TypeVar("T")


class TrainStream:
    """Host-side micro-batches of uint8 images and labels for this process.

    Args:
      images: (N, H, W, C) uint8, in memory (every data source loads its split whole).
      labels: (N,) or (N, L) int.
      micro_batch: global images per micro-step, over all processes.
      steps_multiple: epochs are cut to a multiple of this many micro-steps (grad_accum_steps).
    """

    def __init__(self, images, labels, micro_batch: int, seed: int, *, steps_multiple: int = 1,
                 autoaugment: bool = False, process_index: int = 0, process_count: int = 1):
        if micro_batch % process_count:
            raise DataError(f"micro-batch {micro_batch} does not split over {process_count} processes")
        # An epoch is a whole number of optimizer updates of steps_multiple micro-steps each.
        self.steps_per_epoch = len(images) // micro_batch // steps_multiple * steps_multiple
        if self.steps_per_epoch == 0:
            raise DataError(f"the training split has {len(images)} images, fewer than one batch of {micro_batch * steps_multiple}")
        self.images, self.labels = images, labels
        self.micro_batch, self.seed, self.autoaugment = micro_batch, seed, autoaugment
        local = micro_batch // process_count
        self._share = slice(process_index * local, (process_index + 1) * local)
        self._last_order: tuple[int, np.ndarray | None] = (-1, None)

    def _order(self, epoch: int) -> np.ndarray:
        # The last epoch's order is kept on the stream itself: a cache on the method would be
        # shared by every stream and keep finished ones, with their images, alive. Prefetch
        # threads may ask for two epochs at once, so each works on its own (epoch, order) pair.
        cached = self._last_order
        if cached[0] != epoch:
            cached = (epoch, np.random.default_rng((self.seed, epoch)).permutation(len(self.images)))
            self._last_order = cached
        return cached[1]

    def indices(self, step: int) -> np.ndarray:
        """Global sample indices (micro_batch,) of micro-step ``step``."""
        epoch, i = divmod(step, self.steps_per_epoch)
        return self._order(epoch)[i * self.micro_batch : (i + 1) * self.micro_batch]

    def __call__(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """This process's (images uint8 (b, H, W, C), labels) of micro-step ``step``."""
        positions = np.arange(self.micro_batch)[self._share]
        idx = self.indices(step)[self._share]
        images, labels = self.images[idx], self.labels[idx]
        if self.autoaugment:
            images = autoaugment_batch(images, self.seed, step, positions)
        return images, labels


def prefetch(make: Callable[[int], T], steps: range, depth: int, workers: int = 2) -> Iterator[T]:
    """Yields ``make(step)`` for each step in order, computing up to ``depth`` steps ahead in threads."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        pending: collections.deque = collections.deque()
        steps_iter = iter(steps)
        for step in steps_iter:
            pending.append(pool.submit(make, step))
            if len(pending) > depth:
                break
        while pending:
            yield pending.popleft().result()
            step = next(steps_iter, None)
            if step is not None:
                pending.append(pool.submit(make, step))
