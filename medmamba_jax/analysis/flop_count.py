"""FLOPs of a compiled MedMamba forward pass, with loop bodies counted as many times as they run.

XLA's cost analysis (``compiled.cost_analysis()["flops"]``) counts every operation of the
optimised program, a multiply-add as 2 FLOPs, but it counts the body of a while loop
once whatever its trip count. The selective scan is a ``lax.scan`` (over chunks, or over
every position), so the raw number leaves most of the scan out. ``counted_flops`` adds
the missing ``(length - 1)`` runs of each scan body, costed by XLA on its own.

``macs`` counts the multiply-accumulates of convolutions and matrix products from the
jaxpr: the quantity fvcore, thop and most papers report as "FLOPs". It keeps apart the
products with batch dimensions ("batched": SS2D's per-direction x_proj and dt_proj, which
upstream computes with ``torch.einsum``) from those without ("linear": nn.Linear layers),
because counters differ on them: thop's module hooks see only nn.Conv2d and nn.Linear, while
fvcore traces einsums too. ``scan_macs`` is VMamba's cost of a selective scan (its fvcore
handle, ``flops_selective_scan_fn``): 9 L D N + L D per scan of D channels, N states and
length L. ``forward_costs`` gives all of these for a model's forward pass.
"""

from __future__ import annotations

import math
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
from flax import nnx
from jax.extend import core as jcore

from medmamba_jax.models import MedMamba


def forward_fn(model: MedMamba) -> tuple[Callable, nnx.State]:
    """(fn(state, x) -> logits, abstract state) for tracing and lowering the forward pass."""
    graphdef, state = nnx.split(model)
    return (lambda s, x: nnx.merge(graphdef, s)(x)), state


def _input(model: MedMamba, image_size: int, batch: int) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((batch, image_size, image_size, model.config.in_chans), jnp.float32)


def _xla_flops(traced: jax.stages.Traced) -> float:
    analysis = traced.lower().compile().cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older jax returned one dict per device program
        analysis = analysis[0]
    return float(analysis.get("flops", 0.0))


def _sub_jaxprs(eqn) -> Iterator[jcore.Jaxpr]:
    for value in eqn.params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(item, jcore.ClosedJaxpr):
                yield item.jaxpr
            elif isinstance(item, jcore.Jaxpr):
                yield item


class _LoopCorrection:
    """FLOPs that XLA's once-per-loop counting misses: (length - 1) x body for every scan.

    Each distinct scan body is compiled and costed once: the blocks of a stage run the same
    body, so MedMamba-T's 10 scans need 4 compilations.
    """

    def __init__(self):
        self._body_flops: dict[str, float] = {}  # printed body jaxpr -> FLOPs of one run

    def __call__(self, jaxpr: jcore.Jaxpr) -> float:
        extra = 0.0
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "scan":
                extra += (eqn.params["length"] - 1) * self.body_flops(eqn.params["jaxpr"])
            else:
                extra += sum(self(sub) for sub in _sub_jaxprs(eqn))
        return extra

    def body_flops(self, body: jcore.ClosedJaxpr) -> float:
        """XLA's FLOPs of one run of a scan body, with its own inner scans fully counted."""
        key = str(body)  # the printed program: shapes and operations, not constant values
        if key not in self._body_flops:
            args = [jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype) for v in body.jaxpr.invars]
            traced = jax.jit(jcore.jaxpr_as_fun(body)).trace(*args)
            self._body_flops[key] = _xla_flops(traced) + self(body.jaxpr)
        return self._body_flops[key]


def _counted(traced: jax.stages.Traced) -> dict[str, float]:
    raw = _xla_flops(traced)
    return {"xla_flops_raw": raw, "xla_flops": raw + _LoopCorrection()(traced.jaxpr.jaxpr)}


def counted_flops(fn: Callable, *args) -> dict[str, float]:
    """XLA FLOPs of ``fn(*args)``: raw (loop bodies once) and with every scan iteration counted."""
    return _counted(jax.jit(fn).trace(*args))


def forward_costs(model: MedMamba, image_size: int, batch: int = 1, xla: bool = True) -> dict[str, float]:
    """``macs`` and ``scan_macs`` of one forward pass of ``batch`` images, and with ``xla`` its
    ``counted_flops`` (which compiles the model), from one trace."""
    fn, state = forward_fn(model)
    traced = jax.jit(fn).trace(state, _input(model, image_size, batch))
    counted = _counted(traced) if xla else {}
    return {**counted, **_walk_macs(traced.jaxpr.jaxpr), "scan": batch * scan_macs(model, image_size)}


def scan_macs(model: MedMamba, image_size: int) -> float:
    """VMamba's count for the selective scans of one image: 9 L D N + L D per SS2D, where L is
    the stage's pixels, D = 4 directions x d_inner channels and N = d_state (the + L D is
    the D skip term; the SiLU gate is applied outside the scan, so no z term)."""
    side, total = image_size // model.config.patch_size, 0.0
    for stage in model.layers:
        length = side * side
        for block in stage.blocks:
            channels, states = 4 * block.self_attention.d_inner, block.self_attention.d_state
            total += 9 * length * channels * states + length * channels
        side //= 2  # a patch merging halves the side, dropping an odd last row and column
    return total


def _kind(eqn) -> str:
    """ "conv", "linear" (a matrix product without batch dimensions) or "batched"."""
    if eqn.primitive.name == "conv_general_dilated":
        return "conv"
    (_, _), (lhs_batch, _) = eqn.params["dimension_numbers"]
    return "batched" if lhs_batch else "linear"


def _eqn_macs(eqn) -> float:
    """Multiply-accumulates of one dot_general or conv_general_dilated equation."""
    out = eqn.outvars[0].aval.shape
    if eqn.primitive.name == "dot_general":
        (lhs_contract, _), _ = eqn.params["dimension_numbers"]
        lhs = eqn.invars[0].aval.shape
        return math.prod(out) * math.prod(lhs[d] for d in lhs_contract)
    rhs = eqn.invars[1].aval.shape
    rhs_spec = eqn.params["dimension_numbers"].rhs_spec  # (out feature, in feature, *spatial)
    per_output = rhs[rhs_spec[1]] * math.prod(rhs[d] for d in rhs_spec[2:])  # in-feature is per group already
    return math.prod(out) * per_output


def _walk_macs(jaxpr: jcore.Jaxpr, times: int = 1) -> dict[str, float]:
    totals = {"conv": 0.0, "linear": 0.0, "batched": 0.0}
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name in ("dot_general", "conv_general_dilated"):
            totals[_kind(eqn)] += times * _eqn_macs(eqn)
            continue
        repeat = eqn.params["length"] if name == "scan" else 1
        for sub in _sub_jaxprs(eqn):
            for key, value in _walk_macs(sub, times * repeat).items():
                totals[key] += value
    return totals


def macs(fn: Callable, *args) -> dict[str, float]:
    """Multiply-accumulates of ``fn(*args)``'s convolutions ("conv") and matrix products without
    ("linear") and with ("batched") batch dimensions."""
    return _walk_macs(jax.make_jaxpr(fn)(*args).jaxpr)
