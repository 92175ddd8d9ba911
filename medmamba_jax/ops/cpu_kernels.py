"""Numba kernels of the selective scan on CPUs (forward and adjoint).

Every kernel instance ("unit") owns one batch row ``i``, one direction/group ``k`` and
one tile of at most ``tile`` channels of that group; units run in parallel (``prange``).
A unit walks the whole sequence with the state ``h`` (N, tile) in a small local array,
so the (batch, K*D, L, N) tensors never exist in memory. The innermost loops run over
the tile's channels, which are contiguous in every array (channels-minor layout), so
LLVM turns them into vector instructions; :func:`exp_nonpositive` is written with
plain arithmetic and a bit cast so that the exponential vectorises too (numba has no
vector math library by default, and a scalar ``exp`` call per state element would cost
more than the rest of the step).

Arrays, all float32 and C-contiguous:

* ``u``: (b, Gu, L, D) — direction k reads group ``k % Gu``
* ``dt``: (b, K, L, D), already biased and softplus'ed; ``y``, ``dy``, ``du``, ``ddt`` alike
* ``A``, ``dA``: (K, N, D) and (b, K, N, D)
* ``B``, ``C``: (b, K, L, N), position-major so a position's N values are contiguous
* ``dB``, ``dC``: (b, K, n_tiles, L, N) — each tile's partial sums over its channels
* ``hs``: (b, K, n_chunks, N, D) — the state before each chunk of ``chunk`` steps

Positions are walked in scan order ``s``; directions ``k >= rev_from`` read position
``L - 1 - s``, which serves SS2D's reversed directions without flipped copies.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

F32 = np.float32
_LOG2E = F32(1.4426950408889634)
_LN2_HI = F32(0.693359375)  # ln 2 split so that n * _LN2_HI is exact for |n| < 2^11
_LN2_LO = F32(-2.12194440e-4)
_EXP_FLOOR = F32(-87.0)  # keeps 2^n a normal float; exp(-87) ~ 1.6e-38 stands in for less
_HALF = F32(0.5)
# Taylor coefficients of e^r on |r| <= ln2 / 2: truncation error < 2e-7 relative.
_C6, _C5, _C4, _C3, _C2 = F32(1 / 720), F32(1 / 120), F32(1 / 24), F32(1 / 6), F32(0.5)
_ONE = F32(1.0)
_ZERO = F32(0.0)

# 'contract' lets LLVM fuse multiply-adds; 'reassoc' lets it vectorise the channel sums
# of dB and dC. No 'nnan'/'ninf': non-finite inputs must propagate, not be assumed away.
_MATH = {"contract", "reassoc", "nsz", "arcp"}


@njit(inline="always", fastmath=_MATH)
def exp_nonpositive(x):
    """e^x in float32 for x <= 0 (relative error ~2e-7); values below -87 give e^-87."""
    x = max(x, _EXP_FLOOR)
    n = np.floor(x * _LOG2E + _HALF)
    r = x - n * _LN2_HI - n * _LN2_LO
    p = ((((((_C6 * r + _C5) * r + _C4) * r + _C3) * r + _C2) * r + _ONE) * r + _ONE)
    scale = np.int32((np.int32(n) + np.int32(127)) << np.int32(23)).view(np.float32)  # 2^n
    return p * scale


@njit(inline="always")
def _unit(unit, n_dirs, n_tiles, tile, dim):
    """(i, k, tile index, first channel, width) of a unit."""
    i = unit // (n_dirs * n_tiles)
    k = (unit // n_tiles) % n_dirs
    j = unit % n_tiles
    return i, k, j, j * tile, min(tile, dim - j * tile)


@njit(inline="always")
def _position(s, length, reverse):
    return length - 1 - s if reverse else s


# The per-unit loops are separate, serial functions called from the prange loop, and
# their inner loops index 1-D row views: compiled inside numba's parallel region, or
# indexing 2-D arrays at an offset d0 + d, the same loops came out 8 to 10 times slower
# (not vectorised).


@njit(fastmath=_MATH)
def _step(h, A, dt, u, B, C, t, d0, width, dtu, out):
    """h = exp(dt A) h + dt u B at position t, in place; out = <h, C> per channel.
    h (N, w), dtu and out (w,) cover the tile's channels d0 ... d0 + w - 1 of the (L, D)
    dt and u and the (N, D) A; B and C are (L, N)."""
    dt_t, u_t = dt[t, d0 : d0 + width], u[t, d0 : d0 + width]
    for d in range(width):
        dtu[d] = dt_t[d] * u_t[d]
        out[d] = _ZERO
    for n in range(A.shape[0]):
        bn, cn = B[t, n], C[t, n]
        a_n, h_n = A[n, d0 : d0 + width], h[n]
        for d in range(width):
            hv = exp_nonpositive(dt_t[d] * a_n[d]) * h_n[d] + dtu[d] * bn
            h_n[d] = hv
            out[d] += hv * cn


@njit(fastmath=_MATH)
def _forward_unit(u, dt, A, B, C, y, hs, d0, width, reverse, chunk, save_states):
    """One unit's forward over the (L, D) u, dt, y; (N, D) A; (L, N) B, C; (n_chunks, N, D) hs."""
    length = dt.shape[0]
    h = np.zeros((A.shape[0], width), F32)
    dtu = np.empty(width, F32)
    out = np.empty(width, F32)
    for s in range(length):
        t = _position(s, length, reverse)
        if save_states and s % chunk == 0:
            hs[s // chunk, :, d0 : d0 + width] = h
        _step(h, A, dt, u, B, C, t, d0, width, dtu, out)
        y[t, d0 : d0 + width] = out


@njit(parallel=True, fastmath=_MATH, cache=True)
def forward_kernel(u, dt, A, B, C, rev_from, chunk, tile, y, hs, save_states):
    """Writes y, and hs when ``save_states`` (hs is ignored otherwise)."""
    batch, n_dirs, length, dim = dt.shape
    groups_u = u.shape[1]
    n_tiles = -(-dim // tile)
    for unit in prange(batch * n_dirs * n_tiles):
        i, k, _, d0, width = _unit(unit, n_dirs, n_tiles, tile, dim)
        states = hs[i, k] if save_states else hs[0, 0]
        _forward_unit(
            u[i, k % groups_u], dt[i, k], A[k], B[i, k], C[i, k], y[i, k], states, d0, width,
            k >= rev_from, chunk, save_states,
        )  # fmt: skip


@njit(fastmath=_MATH)
def _adjoint_step(g, h_prev, h_cur, A, dt, u, dy, B, C, t, d0, width, dtu, d_dtu, d_dt, dA, dB, dC):
    """One reverse step at position t. g (N, w): dL/dh there from later positions, updated in
    place to dL/dh at the previous position. Writes this tile's dB[t] and dC[t] (sums over its
    channels); accumulates dA (N, w); leaves d(dt*u) and dL/d(dt) through exp(dt A) in d_dtu
    and d_dt. Other arrays as in _step; dy is (L, D)."""
    dt_t, u_t, dy_t = dt[t, d0 : d0 + width], u[t, d0 : d0 + width], dy[t, d0 : d0 + width]
    for d in range(width):
        dtu[d] = dt_t[d] * u_t[d]
        d_dtu[d] = _ZERO
        d_dt[d] = _ZERO
    for n in range(A.shape[0]):
        bn, cn = B[t, n], C[t, n]
        a_n, g_n, hp, hc, da_n = A[n, d0 : d0 + width], g[n], h_prev[n], h_cur[n], dA[n]
        db, dc = _ZERO, _ZERO
        for d in range(width):
            dc += dy_t[d] * hc[d]
            gv = g_n[d] + dy_t[d] * cn
            db += gv * dtu[d]
            d_dtu[d] += gv * bn
            decay = exp_nonpositive(dt_t[d] * a_n[d])
            d_exponent = gv * hp[d] * decay  # dL / d(dt A)
            d_dt[d] += d_exponent * a_n[d]
            da_n[d] += d_exponent * dt_t[d]
            g_n[d] = gv * decay
        dB[t, n] = db
        dC[t, n] = dc


@njit(fastmath=_MATH)
def _backward_unit(u, dt, A, B, C, hs, dy, du, ddt, dA, dB, dC, d0, width, reverse, chunk):
    """One unit's adjoint; du, ddt like dt, dA (N, D), dB and dC (L, N) this tile's partials."""
    length, n_state = dt.shape[0], A.shape[0]
    g = np.zeros((n_state, width), F32)
    da = np.zeros((n_state, width), F32)
    states = np.empty((chunk + 1, n_state, width), F32)  # states[q]: before step q of a chunk
    dtu, scratch = np.empty(width, F32), np.empty(width, F32)
    d_dtu, d_dt = np.empty(width, F32), np.empty(width, F32)
    for c in range(hs.shape[0] - 1, -1, -1):
        s0 = c * chunk
        steps = min(chunk, length - s0)
        states[0] = hs[c, :, d0 : d0 + width]
        for q in range(steps):  # recompute the chunk's states from its saved start
            states[q + 1] = states[q]
            _step(states[q + 1], A, dt, u, B, C, _position(s0 + q, length, reverse), d0, width, dtu, scratch)
        for q in range(steps - 1, -1, -1):
            t = _position(s0 + q, length, reverse)
            _adjoint_step(
                g, states[q], states[q + 1], A, dt, u, dy, B, C, t, d0, width, dtu, d_dtu, d_dt, da, dB, dC
            )
            dt_t, u_t = dt[t, d0 : d0 + width], u[t, d0 : d0 + width]
            du_t, ddt_t = du[t, d0 : d0 + width], ddt[t, d0 : d0 + width]
            for d in range(width):
                du_t[d] = d_dtu[d] * dt_t[d]
                ddt_t[d] = d_dt[d] + d_dtu[d] * u_t[d]
    dA[:, d0 : d0 + width] = da


@njit(parallel=True, fastmath=_MATH, cache=True)
def backward_kernel(u, dt, A, B, C, hs, dy, rev_from, chunk, tile, du, ddt, dA, dB, dC):
    """Writes du (per direction), ddt, dA (per batch row), dB and dC (per tile)."""
    batch, n_dirs, length, dim = dt.shape
    groups_u = u.shape[1]
    n_tiles = -(-dim // tile)
    for unit in prange(batch * n_dirs * n_tiles):
        i, k, j, d0, width = _unit(unit, n_dirs, n_tiles, tile, dim)
        _backward_unit(
            u[i, k % groups_u], dt[i, k], A[k], B[i, k], C[i, k], hs[i, k], dy[i, k], du[i, k], ddt[i, k],
            dA[i, k], dB[i, k, j], dC[i, k, j], d0, width, k >= rev_from, chunk,
        )  # fmt: skip
