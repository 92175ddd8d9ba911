"""Pallas kernel bodies for the selective scan (forward and adjoint).

Every kernel instance ("program") owns one batch row ``i``, one direction/group ``k``
and one tile of ``TD`` channels of that group. It walks the whole sequence with the
state ``h`` (N, TD) held in registers, so the (batch, K*D, L, N) tensors never exist in
memory. Refs seen by a program (leading grid axes squeezed away):

* ``u``, ``delta``, ``dy``, ``du``, ``ddelta``, ``y``: (L, TD), channels minor
* ``A``, ``dA``: (N, TD); ``D``, ``bias``, ``dD``, ``dbias``: (1, TD)
* ``B``, ``C``: (N, L), or (L, N) with ``bc_rows`` — the group's B/C, shared by all its
  channel tiles
* ``hs``: (n_chunks, N, TD) — the state at the start of each checkpoint chunk
* ``dB``, ``dC``: like B and C — this tile's partial sums over its channels

A position's B and C are its N values, which every thread of the program holds: from an
(N, L) ref that is N strided scalar loads, each with its own address arithmetic; from
an (L, N) ref (``bc_rows``) it is one contiguous run, which the compiler vectorises.

Every value is two-dimensional: a position's channel row (1, TD) and its state column
(N, 1) broadcast into the (N, TD) state without a change of register layout, and
reductions keep their axis. A row is TD consecutive floats, so its load is coalesced.
(The first version kept (TD, L) blocks and a (TD, N) state: every step then gathered
strided columns and moved 1-D values between layouts through shared memory.)

Positions are addressed in *scan order* ``s``; direction ``k >= rev_from`` maps it to
``t = L - 1 - s``, which serves SS2D's backward directions without flipped copies.

The sequence is cut into segments of ``seg`` steps (unrolled in Python so the loads
of a segment are issued together and their latency overlaps) and checkpoint chunks of
``seg * ckpt_segs`` steps. The L % seg leftover steps ("tail") run one at a time. With
``prefetch`` the forward issues a segment's loads one segment early, carrying the loaded
values through the loop (software pipelining by hand: the compiler schedules within a
loop body, not across its iterations).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

f32 = jnp.float32
LOG2_E = 1.4426950408889634


class Geometry(NamedTuple):
    """Static description of one scan launch."""

    length: int  # L
    seg: int  # steps per unrolled segment
    ckpt_segs: int  # segments per checkpoint chunk
    rev_from: int  # directions k >= rev_from run backwards
    softplus: bool
    bc_rows: bool = False  # B, C and their gradients are (L, N), not (N, L)
    prefetch: bool = False  # the forward loads segment i + 1 while it computes segment i

    @property
    def n_segs(self) -> int:
        """Whole segments in the sequence."""
        return self.length // self.seg

    @property
    def chunk(self) -> int:
        return self.seg * self.ckpt_segs

    @property
    def n_chunks(self) -> int:
        return -(-self.length // self.chunk)

    @property
    def tail_start(self) -> int:
        """First scan position not covered by a full segment."""
        return self.n_segs * self.seg


class StepIn(NamedTuple):
    """Inputs of one position, in float32: u, dt, sig (d dt / d delta) are (1, TD); b, c are (N, 1)."""

    u: jax.Array
    dt: jax.Array
    sig: jax.Array | float
    b: jax.Array
    c: jax.Array


class Params(NamedTuple):
    """Per-program constants: A and A*log2(e) (N, TD), skip D (1, TD), delta bias (1, TD)."""

    A: jax.Array
    A2: jax.Array
    skip: jax.Array
    bias: jax.Array


def _dt(raw: jax.Array, bias: jax.Array, softplus: bool):
    """dt = softplus(raw + bias) and its derivative, in a form stable for any sign."""
    x = raw + bias
    if not softplus:
        return x, 1.0
    tail = jnp.log1p(jnp.exp(-jnp.abs(x)))
    # sigmoid(x) = exp(x - softplus(x)) = exp(min(x, 0) - tail): no inf - inf at x = +inf
    return jnp.maximum(x, 0.0) + tail, jnp.exp(jnp.minimum(x, 0.0) - tail)


def _direction(geo: Geometry):
    """Returns s -> t, mapping scan position s to this program's memory position t.

    Called at the kernel's top level: program_id must not be read inside loop bodies
    (the interpreter only substitutes it there)."""
    rev = pl.program_id(1) >= geo.rev_from
    return lambda s: jnp.where(rev, geo.length - 1 - s, s)


def _params(a_ref, d_ref, bias_ref) -> Params:
    A = a_ref[...].astype(f32)
    # exp(dt A) = exp2(dt A log2 e): exp2 maps to the hardware's ex2 with less range reduction.
    return Params(A, A * LOG2_E, d_ref[...].astype(f32), bias_ref[...].astype(f32))


def _row(ref, t, dtype=f32) -> jax.Array:
    """Position t of an (L, TD) ref: (1, TD)."""
    return ref[pl.ds(t, 1), :].astype(dtype)


def _col(ref, t, rows: bool, dtype=f32) -> jax.Array:
    """Position t of an (N, L) ref, or of an (L, N) ref if rows: (N, 1)."""
    if rows:
        return ref[pl.ds(t, 1), :].astype(dtype).reshape(ref.shape[1], 1)
    return ref[:, pl.ds(t, 1)].astype(dtype)


def _store_row(ref, t, value: jax.Array) -> None:
    ref[pl.ds(t, 1), :] = value.astype(ref.dtype)


def _store_col(ref, t, value: jax.Array, rows: bool) -> None:
    """Writes an (N, 1) value at position t of an (N, L) ref, or of an (L, N) ref if rows."""
    if rows:
        ref[pl.ds(t, 1), :] = value.astype(ref.dtype).reshape(1, ref.shape[1])
    else:
        ref[:, pl.ds(t, 1)] = value.astype(ref.dtype)


def _fetch(refs, t, geo: Geometry) -> tuple[jax.Array, ...]:
    """The loads of position t: u and raw delta (1, TD), B and C (N, 1)."""
    u_ref, dl_ref, b_ref, c_ref = refs
    return _row(u_ref, t), _row(dl_ref, t), _col(b_ref, t, geo.bc_rows), _col(c_ref, t, geo.bc_rows)


def _prepare(loaded: tuple[jax.Array, ...], p: Params, geo: Geometry) -> StepIn:
    u, raw_delta, b, c = loaded
    dt, sig = _dt(raw_delta, p.bias, geo.softplus)
    return StepIn(u, dt, sig, b, c)


def _load(refs, t, p: Params, geo: Geometry) -> StepIn:
    """_prepare(_fetch(...)) in the order that compiles to the fewest registers without
    prefetch: delta's load and its dt first (measured with kernel_stats: 96 against 128
    registers for the forward at seg=2, bc_rows=1 on sm_90)."""
    u_ref, dl_ref, b_ref, c_ref = refs
    dt, sig = _dt(_row(dl_ref, t), p.bias, geo.softplus)
    return StepIn(_row(u_ref, t), dt, sig, _col(b_ref, t, geo.bc_rows), _col(c_ref, t, geo.bc_rows))


def _advance(h: jax.Array, x: StepIn, p: Params):
    """One recurrence step; returns (exp(dt A), new state), both (N, TD)."""
    decay = jnp.exp2(x.dt * p.A2)
    return decay, decay * h + x.b * (x.dt * x.u)


def _run_states(refs, pos, h, start, stop, p: Params, geo: Geometry):
    """State after scan positions [start, stop), one dynamic step at a time."""

    def body(s, h):
        return _advance(h, _load(refs, pos(s), p, geo), p)[1]

    return jax.lax.fori_loop(start, stop, body, h)


def _run_segments(refs, pos, h, start, n_seg, p: Params, geo: Geometry):
    """State after n_seg whole segments from scan position start, each unrolled with
    its loads issued first so that their latencies overlap."""

    def body(i, h):
        s0 = start + i * geo.seg
        xs = [_load(refs, pos(s0 + j), p, geo) for j in range(geo.seg)]
        for x in xs:
            h = _advance(h, x, p)[1]
        return h

    return jax.lax.fori_loop(0, n_seg, body, h)


# ----------------------------------------------------------------------------- forward


def _output(h: jax.Array, x: StepIn, p: Params) -> jax.Array:
    """y at one position, (1, TD). A product-and-sum rather than a dot: exact fp32 on every backend."""
    return jnp.sum(h * x.c, axis=0, keepdims=True) + p.skip * x.u


def forward_kernel(u_ref, dl_ref, a_ref, b_ref, c_ref, d_ref, bias_ref, y_ref, hs_ref=None, *, geo: Geometry):
    """y (L, TD) and, if there is an hs_ref, the chunk-start states hs (n_chunks, N, TD) that
    the backward starts from (a forward that will not be differentiated has none)."""
    p = _params(a_ref, d_ref, bias_ref)
    refs = (u_ref, dl_ref, b_ref, c_ref)
    pos = _direction(geo)

    def step(s, h):
        t = pos(s)
        x = _load(refs, t, p, geo)
        _, h = _advance(h, x, p)
        _store_row(y_ref, t, _output(h, x, p))
        return h

    def fetch_segment(i):
        return [_fetch(refs, pos(i * geo.seg + j), geo) for j in range(geo.seg)]

    def segment(i, carry):
        # Unrolled, all loads before any store: loads cannot move past stores to refs
        # that might alias, so this order lets the segment's load latencies overlap.
        # With prefetch the loads run a segment ahead, through the loop carry, so their
        # latency overlaps a whole segment of arithmetic, not only each other.
        h, loaded = carry
        ts = [pos(i * geo.seg + j) for j in range(geo.seg)]
        if geo.prefetch:
            ahead = fetch_segment(jnp.minimum(i + 1, geo.n_segs - 1))  # the last re-reads itself
            xs = [_prepare(raw, p, geo) for raw in loaded]
        else:  # each position's loads and its dt together: this order compiles to fewer registers
            xs, ahead = [_load(refs, t, p, geo) for t in ts], ()
        ys = []
        for x in xs:
            _, h = _advance(h, x, p)
            ys.append(_output(h, x, p))
        for t, y in zip(ts, ys):
            _store_row(y_ref, t, y)
        return h, ahead

    def chunk(c, carry):
        if hs_ref is not None:
            hs_ref[c] = carry[0]
        first = c * geo.ckpt_segs
        last = jnp.minimum(first + geo.ckpt_segs, geo.n_segs)
        return jax.lax.fori_loop(first, last, segment, carry)

    h = jnp.zeros(a_ref.shape, f32)
    # seg <= L (the plan clamps it), so there is always a first segment to fetch.
    h, _ = jax.lax.fori_loop(0, geo.n_chunks, chunk, (h, fetch_segment(0) if geo.prefetch else ()))
    jax.lax.fori_loop(geo.tail_start, geo.length, step, h)


# ----------------------------------------------------------------------------- adjoint


class Adj(NamedTuple):
    """Adjoint carry: q = exp(dt_{s+1} A) * dh_{s+1} (N, TD) and the per-program sums."""

    q: jax.Array
    dA: jax.Array  # (N, TD)
    dD: jax.Array  # (1, TD)
    dbias: jax.Array  # (1, TD)


def _adjoint_step(out_refs, t, x: StepIn, h_prev, decay, h, carry: Adj, g, p: Params, geo: Geometry) -> Adj:
    """Backpropagates through position t given its states; writes du, ddelta, dB, dC at t."""
    du_ref, ddl_ref, db_ref, dc_ref = out_refs
    dh = x.c * g + carry.q  # d loss / d h_t, (N, TD)
    _store_col(dc_ref, t, jnp.sum(g * h, axis=1, keepdims=True), geo.bc_rows)
    _store_col(db_ref, t, jnp.sum(dh * (x.dt * x.u), axis=1, keepdims=True), geo.bc_rows)
    dh_b = jnp.sum(dh * x.b, axis=0, keepdims=True)
    w = dh * decay * h_prev  # shared by d dt (through exp(dt A)) and dA
    ddt = x.u * dh_b + jnp.sum(w * p.A, axis=0, keepdims=True)
    ddelta = ddt * x.sig
    _store_row(du_ref, t, x.dt * dh_b + p.skip * g)
    _store_row(ddl_ref, t, ddelta)
    return Adj(decay * dh, carry.dA + x.dt * w, carry.dD + g * x.u, carry.dbias + ddelta)


def backward_kernel(
    u_ref, dl_ref, a_ref, b_ref, c_ref, d_ref, bias_ref, hs_ref, dy_ref,
    du_ref, ddl_ref, da_ref, dd_ref, dbias_ref, db_ref, dc_ref, *, geo: Geometry,
):  # fmt: skip
    """Reverse scan: recomputes states from the checkpoints, then runs the adjoint."""
    p = _params(a_ref, d_ref, bias_ref)
    refs = (u_ref, dl_ref, b_ref, c_ref)
    out_refs = (du_ref, ddl_ref, db_ref, dc_ref)
    pos = _direction(geo)

    def adjoint_at(s, h_prev, carry: Adj) -> Adj:
        t = pos(s)
        x = _load(refs, t, p, geo)
        decay, h = _advance(h_prev, x, p)
        return _adjoint_step(out_refs, t, x, h_prev, decay, h, carry, _row(dy_ref, t), p, geo)

    def segment(h0, s0, carry: Adj) -> Adj:
        # Forward through the segment keeping every state in registers, then walk back.
        # All loads come before the first store (see forward_kernel.segment).
        ts = [pos(s0 + j) for j in range(geo.seg)]
        xs = [_load(refs, t, p, geo) for t in ts]
        gs = [_row(dy_ref, t) for t in ts]
        decays, states = [], [h0]
        for x in xs:
            decay, h = _advance(states[-1], x, p)
            decays.append(decay)
            states.append(h)
        for j in reversed(range(geo.seg)):
            carry = _adjoint_step(out_refs, ts[j], xs[j], states[j], decays[j], states[j + 1], carry, gs[j], p, geo)
        return carry

    def chunk(i, carry: Adj) -> Adj:
        c = geo.n_chunks - 1 - i
        start = c * geo.chunk
        n_seg = jnp.minimum(geo.ckpt_segs, (geo.length - start) // geo.seg)

        def one_segment(m_rev, carry):
            m = n_seg - 1 - m_rev
            # Re-derive the segment's start state from the chunk checkpoint (free when ckpt_segs == 1).
            h_m = _run_segments(refs, pos, hs_ref[c], start, m, p, geo)
            return segment(h_m, start + m * geo.seg, carry)

        return jax.lax.fori_loop(0, n_seg, one_segment, carry)

    zeros = jnp.zeros(a_ref.shape, f32)
    row_zeros = jnp.zeros(d_ref.shape, f32)
    carry = Adj(zeros, zeros, row_zeros, row_zeros)
    carry = _tail_adjoint(refs, pos, hs_ref, carry, adjoint_at, p, geo)
    carry = jax.lax.fori_loop(0, geo.n_chunks, chunk, carry)
    da_ref[...] = carry.dA
    dd_ref[...] = carry.dD
    dbias_ref[...] = carry.dbias


def _tail_adjoint(refs, pos, hs_ref, carry: Adj, adjoint_at, p: Params, geo: Geometry) -> Adj:
    """Adjoint of the last L % seg positions; each state is recomputed (fewer than seg steps)."""
    n_tail = geo.length - geo.tail_start
    if n_tail == 0:
        return carry
    last_chunk_start = (geo.n_chunks - 1) * geo.chunk
    n_seg = (geo.tail_start - last_chunk_start) // geo.seg
    h_tail = _run_segments(refs, pos, hs_ref[geo.n_chunks - 1], last_chunk_start, n_seg, p, geo)

    def body(i, carry):
        s = geo.length - 1 - i
        h_prev = _run_states(refs, pos, h_tail, geo.tail_start, s, p, geo)
        return adjoint_at(s, h_prev, carry)

    return jax.lax.fori_loop(0, n_tail, body, carry)
