"""Selective scan on CPUs: numba kernels (``cpu_kernels``) called by XLA as custom calls.

Public functions:

* :func:`selective_scan_cpu` — same contract as ``selective_scan_reference``.
* :func:`cross_selective_scan_cpu` — SS2D's four directions, same contract as
  ``medmamba_jax.ops.cross_selective_scan``; the reversed directions walk the sequence
  from the end inside the kernel instead of reading flipped copies.

The kernels take dt already biased and softplus'ed and leave out the skip term D*u:
both are cheap elementwise XLA work, differentiated by JAX. The scan proper is a
``jax.custom_vjp``: the forward saves its inputs and the state before every chunk of
``chunk`` positions; the backward recomputes each chunk's states from there and runs
the adjoint as a reverse scan, so memory stays O(inputs + L*N*D / chunk).

The kernels are reached through two numba ``cfunc`` entry points registered with XLA as
CPU custom calls (XLA's original API: ``void f(void **outputs, const void **inputs)``),
so they read and write XLA's own buffers. A ``jax.pure_callback`` would copy every
operand into a fresh JAX array and every result back: at batch 8 those copies (page
faults on fresh memory, mostly) cost as much as the scan itself. The shapes travel as a
small int32 operand. Under ``vmap`` the call runs once per mapped element
(``vmap_method="sequential"``); under a sharded ``jit`` XLA gathers the operands to one
device for it, which is fine on a CPU host (the kernel uses every core anyway).

XLA may run two custom calls at once from different threads (two devices of a
data-parallel step, or independent ops), so numba's threading layer must allow
concurrent parallel launches: this module asks for a thread-safe layer (OpenMP or TBB)
unless ``NUMBA_THREADING_LAYER`` says otherwise, and refuses to load on the
'workqueue' layer, which aborts the process on such launches ('auto' then picks
'associative').
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numba
import numpy as np
from numba import carray, cfunc, njit, types
from numba.extending import intrinsic
from numba.np.ufunc.parallel import _launch_threads

if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "threadsafe"
# A cfunc loaded from numba's cache links against the parallel runtime's symbols
# (allocate_sched, ...) without starting it ("LLVM ERROR: Symbol not found"): start it first.
_launch_threads()

from medmamba_jax.ops.cpu_kernels import backward_kernel, forward_kernel  # noqa: E402
from medmamba_jax.ops.selective_scan import add_skip, check_cross_shapes, prepare_inputs  # noqa: E402

DEFAULT_CHUNK = 32  # positions between saved states: hs is 16/32 of dt's size at N = 16
DEFAULT_TILE = 32  # channels per unit: four AVX2 vectors, a (16, 32) state of 2 KiB

# The int32 operand each custom call gets first: the shapes and settings of the call.
_META_FIELDS = ("batch", "n_dirs", "groups_u", "length", "dim", "n_state", "n_chunks", "n_tiles",
                "rev_from", "chunk", "tile", "save_states")  # fmt: skip
_META = len(_META_FIELDS)
_F32 = np.float32

# XLA's typed FFI (xla/ffi/api/c_api.h, API 0.x), read as 8-byte words on a 64-bit host:
# XLA_FFI_CallFrame: [1] extension_start, [4] stage, [9] args' buffer pointers, [14] results'.
# XLA_FFI_Buffer: [3] data. XLA_FFI_Metadata_Extension: [1] type, [3] the XLA_FFI_Metadata,
# whose api_version's major and minor are its int32 words 6 and 7.
_FRAME_EXTENSION, _FRAME_STAGE, _FRAME_ARGS, _FRAME_RETS, _BUFFER_DATA = 1, 4, 9, 14, 3
_STAGE_EXECUTE, _EXTENSION_METADATA = 3, 1
_FFI_API_VERSION = (0, 1)  # the typed-FFI ABI these offsets were written for; later 0.x keep them


@intrinsic
def _int64_pointer(typingctx, address):
    """The int64* at an integer address."""

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(signature.return_type))

    return types.CPointer(types.int64)(types.int64), codegen


@intrinsic
def _float32_pointer(typingctx, address):
    """The float32* at an integer address."""

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(signature.return_type))

    return types.CPointer(types.float32)(types.int64), codegen


@njit(inline="always")
def _word(address, index):
    return carray(_int64_pointer(address), (index + 1,))[index]


@njit(inline="always")
def _answered_metadata(frame):
    """True when XLA only asks the handler which FFI version it speaks (at registration)."""
    extension = _word(frame, _FRAME_EXTENSION)
    if extension == 0 or (_word(extension, 1) & 0xFFFFFFFF) != _EXTENSION_METADATA:
        return False
    version = carray(_int64_pointer(_word(extension, 3)), (5,)).view(np.int32)
    version[6], version[7] = _FFI_API_VERSION
    version[8] = 0  # no handler traits
    return True


@njit(inline="always")
def _buffer(frame, table, index, shape):
    """The float32 array of argument (table=_FRAME_ARGS) or result (_FRAME_RETS) ``index``."""
    data = _word(_word(_word(frame, table), index), _BUFFER_DATA)
    return carray(_float32_pointer(data), shape)


@njit(inline="always")
def _meta_of(frame):
    data = _word(_word(_word(frame, _FRAME_ARGS), 0), _BUFFER_DATA)
    return carray(_int64_pointer(data), (-(-_META // 2),)).view(np.int32)


_HANDLER = types.int64(types.int64)  # XLA_FFI_Error* handler(XLA_FFI_CallFrame*); 0 = success


@njit(inline="always")
def _scan_inputs(frame):
    """meta and the (u, dt, A, B, C) arguments 1 to 5 both handlers take."""
    m = _meta_of(frame)
    batch, n_dirs, groups_u, length, dim, n_state = m[0], m[1], m[2], m[3], m[4], m[5]
    u = _buffer(frame, _FRAME_ARGS, 1, (batch, groups_u, length, dim))
    dt = _buffer(frame, _FRAME_ARGS, 2, (batch, n_dirs, length, dim))
    A = _buffer(frame, _FRAME_ARGS, 3, (n_dirs, n_state, dim))
    B = _buffer(frame, _FRAME_ARGS, 4, (batch, n_dirs, length, n_state))
    C = _buffer(frame, _FRAME_ARGS, 5, (batch, n_dirs, length, n_state))
    return m, u, dt, A, B, C


@njit(inline="always")
def _is_execution(frame):
    """False for XLA's metadata query (answered here) and the stages before execution."""
    return not _answered_metadata(frame) and (_word(frame, _FRAME_STAGE) & 0xFFFFFFFF) == _STAGE_EXECUTE


@cfunc(_HANDLER, cache=True)
def _forward_handler(frame):
    """args: meta, u, dt, A, B, C; results: y, hs (layouts in ``cpu_kernels``)."""
    if _is_execution(frame):
        m, u, dt, A, B, C = _scan_inputs(frame)
        batch, n_dirs, length, dim = dt.shape
        y = _buffer(frame, _FRAME_RETS, 0, dt.shape)
        hs = _buffer(frame, _FRAME_RETS, 1, (batch, n_dirs, m[6], A.shape[1], dim))
        forward_kernel(u, dt, A, B, C, m[8], m[9], m[10], y, hs, m[11] != 0)
    return 0


@cfunc(_HANDLER, cache=True)
def _backward_handler(frame):
    """args: meta, u, dt, A, B, C, hs, dy; results: du, ddt, dA, dB, dC."""
    if _is_execution(frame):
        m, u, dt, A, B, C = _scan_inputs(frame)
        batch, n_dirs, length, dim = dt.shape
        n_state, n_tiles = A.shape[1], m[7]
        hs = _buffer(frame, _FRAME_ARGS, 6, (batch, n_dirs, m[6], n_state, dim))
        dy = _buffer(frame, _FRAME_ARGS, 7, dt.shape)
        du = _buffer(frame, _FRAME_RETS, 0, dt.shape)
        ddt = _buffer(frame, _FRAME_RETS, 1, dt.shape)
        dA = _buffer(frame, _FRAME_RETS, 2, (batch, n_dirs, n_state, dim))
        dB = _buffer(frame, _FRAME_RETS, 3, (batch, n_dirs, n_tiles, length, n_state))
        dC = _buffer(frame, _FRAME_RETS, 4, (batch, n_dirs, n_tiles, length, n_state))
        backward_kernel(u, dt, A, B, C, hs, dy, m[8], m[9], m[10], du, ddt, dA, dB, dC)
    return 0


if numba.threading_layer() == "workqueue":
    raise ImportError("numba's 'workqueue' threading layer is not safe for XLA's concurrent calls")

_FORWARD_TARGET, _BACKWARD_TARGET = "medmamba_cpu_scan_forward", "medmamba_cpu_scan_backward"
for _name, _handler in ((_FORWARD_TARGET, _forward_handler), (_BACKWARD_TARGET, _backward_handler)):
    jax.ffi.register_ffi_target(_name, jax.ffi.pycapsule(_handler.address), platform="cpu")


def _like(shape, dtype=jnp.float32) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, dtype)


def _meta(u, dt, A, rev_from, chunk, tile, n_chunks, save_states) -> jax.Array:
    batch, n_dirs, length, dim = dt.shape
    values = (batch, n_dirs, u.shape[1], length, dim, A.shape[1], n_chunks, -(-dim // tile),
              rev_from, chunk, tile, int(save_states))  # fmt: skip
    return jnp.asarray(np.asarray(values, np.int32))


def _n_chunks(length: int, chunk: int) -> int:
    return -(-length // chunk)


def _custom_call(target: str, results, *operands):
    return jax.ffi.ffi_call(target, results, vmap_method="sequential")(*operands)


def _forward(u, dt, A, B, C, rev_from, chunk, tile, save_states):
    batch, n_dirs, length, dim = dt.shape
    n_chunks = _n_chunks(length, chunk) if save_states else 0
    meta = _meta(u, dt, A, rev_from, chunk, tile, n_chunks, save_states)
    out = (_like(dt.shape), _like((batch, n_dirs, n_chunks, A.shape[1], dim)))
    f32 = functools.partial(jnp.asarray, dtype=jnp.float32)
    y, hs = _custom_call(_FORWARD_TARGET, out, meta, *map(f32, (u, dt, A, B, C)))
    return (y, hs) if save_states else y


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _scan(u, dt, A, B, C, rev_from: int, chunk: int, tile: int):
    """Channels-minor scan (layouts in ``cpu_kernels``), float32 in and out; y (b, K, L, D)."""
    return _forward(u, dt, A, B, C, rev_from, chunk, tile, save_states=False)


def _scan_fwd(u, dt, A, B, C, rev_from, chunk, tile):
    y, hs = _forward(u, dt, A, B, C, rev_from, chunk, tile, save_states=True)
    return y, (u, dt, A, B, C, hs)


def _scan_bwd(rev_from, chunk, tile, residuals, dy):
    u, dt, A, B, C, hs = residuals
    batch, n_dirs, length, dim = dt.shape
    n_tiles = -(-dim // tile)
    out = (
        _like(dt.shape),
        _like(dt.shape),
        _like((batch, *A.shape)),
        _like((batch, n_dirs, n_tiles, length, A.shape[1])),
        _like((batch, n_dirs, n_tiles, length, A.shape[1])),
    )
    meta = _meta(u, dt, A, rev_from, chunk, tile, _n_chunks(length, chunk), save_states=True)
    du, ddt, dA, dB, dC = _custom_call(_BACKWARD_TARGET, out, meta, u, dt, A, B, C, hs, dy.astype(jnp.float32))
    groups_u = u.shape[1]
    if groups_u != n_dirs:  # directions k and k + Gu read the same sequence
        du = du.reshape(batch, n_dirs // groups_u, groups_u, length, dim).sum(axis=1)
    return du, ddt, dA.sum(axis=0), dB.sum(axis=2), dC.sum(axis=2)


_scan.defvjp(_scan_fwd, _scan_bwd)


def _checked_settings(chunk: int, tile: int) -> tuple[int, int]:
    if chunk < 1 or tile < 1:
        raise ValueError(f"chunk and tile must be at least 1, got chunk={chunk}, tile={tile}")
    return int(chunk), int(tile)


def selective_scan_cpu(
    u, delta, A, B, C, D=None, delta_bias=None, delta_softplus: bool = False,
    *, chunk: int = DEFAULT_CHUNK, tile: int = DEFAULT_TILE,
) -> jax.Array:  # fmt: skip
    """Selective scan in mamba_ssm's layout. u, delta: (b, K*D, L); A: (K*D, N);
    B, C: (b, K, N, L); D, delta_bias: (K*D,) or None. Returns y (b, K*D, L) float32.
    ``chunk``: positions between the states saved for the backward; ``tile``: channels
    per kernel unit."""
    chunk, tile = _checked_settings(chunk, tile)
    x = prepare_inputs(u, delta, A, B, C, D, delta_bias, delta_softplus)
    batch, groups, dim, length = x.u.shape
    if 0 in x.u.shape or A.shape[1] == 0:
        return add_skip(jnp.zeros(x.u.shape, jnp.float32).reshape(u.shape), u, D)
    minor = lambda a: jnp.swapaxes(a, -1, -2)  # noqa: E731
    y = _scan(minor(x.u), minor(x.dt), minor(x.A), minor(x.B), minor(x.C), groups, chunk, tile)
    return add_skip(minor(y).reshape(batch, groups * dim, length), u, D)


def cross_selective_scan_cpu(
    u2, delta, A, B, C, D, delta_bias, *, chunk: int = DEFAULT_CHUNK, tile: int = DEFAULT_TILE
) -> jax.Array:
    """SS2D scan. u2: (b, 2, L, D); delta: (b, 4, L, D); A: (4D, N); B, C: (b, 4, N, L);
    D, delta_bias: (4D,) or None. Direction k reads u2[:, k % 2]; k = 2, 3 run from the end.
    All in forward order. Returns y (b, 4, L, D) float32."""
    chunk, tile = _checked_settings(chunk, tile)
    batch, length, dim = check_cross_shapes(u2, delta, A, B, C, D, delta_bias)
    f32 = jnp.float32
    per_direction = lambda v: v.astype(f32).reshape(1, 4, 1, dim)  # noqa: E731  (4D,) -> broadcastable
    u2 = u2.astype(f32)
    dt = delta.astype(f32)
    if delta_bias is not None:
        dt = dt + per_direction(delta_bias)
    dt = jax.nn.softplus(dt)
    if 0 in u2.shape or A.shape[1] == 0:
        y = jnp.zeros(delta.shape, f32)
    else:
        A = jnp.swapaxes(A.astype(f32).reshape(4, dim, -1), 1, 2)
        B, C = (jnp.swapaxes(x.astype(f32), 2, 3) for x in (B, C))
        y = _scan(u2, dt, A, B, C, 2, chunk, tile)
    if D is not None:
        y = y + per_direction(D) * jnp.concatenate([u2, u2], axis=1)
    return y
