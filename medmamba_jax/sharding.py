"""Data parallelism with jax.sharding: a 1-D Mesh over every device with a 'data' axis.

Batches are sharded along their first axis; parameters, optimizer state and BatchNorm
statistics are replicated. Under plain ``jax.jit`` the program is the single-device one,
so BatchNorm statistics and the loss are over the global batch whatever the device count.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh() -> Mesh:
    """A mesh over all devices of all processes, in jax.devices() order."""
    return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def shard_batch(mesh: Mesh, local: np.ndarray) -> jax.Array:
    """A global batch array from this process's share (its rows, in process order)."""
    return jax.make_array_from_process_local_data(batch_sharding(mesh), np.ascontiguousarray(local))


def replicate(mesh: Mesh, tree):
    """Places every leaf of ``tree`` on all devices of ``mesh``, which may span processes.

    A typed PRNG key (the model's drop-path RNG state) cannot be put on another process's
    devices, so its raw key data is placed and wrapped again.
    """
    target = replicated(mesh)

    def put(leaf):
        if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            data = jax.device_put(np.asarray(jax.random.key_data(leaf)), target)
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
        return jax.device_put(leaf, target)

    return jax.tree.map(put, tree)


def local_share(global_batch: int) -> slice:
    """The rows of a global batch that this process loads."""
    count, index = jax.process_count(), jax.process_index()
    local = global_batch // count
    return slice(index * local, (index + 1) * local)
