"""An exponential moving average (EMA) of the model's weights, kept in the optimizer's state.

As timm's ``ModelEmaV2``/``ModelEmaV3`` (``--model-ema``), the average covers the model's
whole float state: the parameters and the BatchNorm running statistics, which are averaged
like parameters rather than recomputed or copied from the live model. After each optimizer
update (once per ``grad_accum_steps`` micro-steps, as timm updates after ``optimizer.step()``)::

    ema = decay * ema + (1 - decay) * weights

starting from the weights the run starts with (fresh or ``init_from``). The RNG state (stochastic
depth) is not averaged: an evaluated model draws no random numbers.

Keeping the average inside ``nnx.Optimizer``'s state means the jitted train step updates it with
the weights, the memory fit counts it, and the 'latest' checkpoint's ``opt`` item saves and
restores it bit for bit, with no new item: a run without EMA keeps today's optimizer state.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

AVERAGED = (nnx.Param, nnx.BatchStat)  # the float state a model is evaluated with


class EmaWeight(nnx.Variable):
    """The moving average of one model weight."""


class EmaOptimizer(nnx.Optimizer):
    """``nnx.Optimizer`` that also averages the model's ``AVERAGED`` state after each ``every``-th update call
    (one per optimizer step when ``tx`` is an ``optax.MultiSteps`` of ``every`` micro-steps)."""

    def __init__(self, model: nnx.Module, tx: optax.GradientTransformation, *, wrt, decay: float, every: int = 1):
        super().__init__(model, tx, wrt=wrt)
        self.decay, self.every = float(decay), int(every)
        self.ema = nnx.data(jax.tree.map(lambda w: EmaWeight(jnp.array(w)), _weights(model)))

    def update(self, model: nnx.Module, grads, /, **kwargs) -> optax.Updates:
        updates = super().update(model, grads, **kwargs)
        due = self.step[...] % self.every == 0  # step counts update calls, this one included

        def average(ema: EmaWeight, weight: jax.Array) -> None:
            ema[...] = jnp.where(due, self.decay * ema[...] + (1.0 - self.decay) * weight, ema[...])

        jax.tree.map(average, self.ema, _weights(model), is_leaf=lambda x: isinstance(x, EmaWeight))
        return updates


def _weights(model: nnx.Module) -> dict:
    """The model's ``AVERAGED`` state as a nested dict of arrays."""
    return nnx.to_pure_dict(nnx.state(model, AVERAGED))


def make_optimizer(model: nnx.Module, tx: optax.GradientTransformation, decay: float, every: int) -> nnx.Optimizer:
    """The optimizer of ``model``'s Params: with an EMA of ``decay`` if it is > 0, else a plain ``nnx.Optimizer``."""
    if decay > 0:
        return EmaOptimizer(model, tx, wrt=nnx.Param, decay=decay, every=every)
    return nnx.Optimizer(model, tx, wrt=nnx.Param)


def averaged_state(model_state: nnx.State, opt_state: nnx.State) -> nnx.State:
    """A copy of ``model_state`` whose Params and BatchStats are the EMA in ``opt_state`` (an
    ``EmaOptimizer``'s state): what validation, the best checkpoint and the test use with ``eval_ema``.
    ``model_state`` itself, which training goes on from, is left as it is."""
    averaged = nnx.from_flat_state(nnx.to_flat_state(model_state))  # a new container of the same Variables
    nnx.replace_by_pure_dict(averaged, nnx.to_pure_dict(opt_state["ema"]))  # new Variables in it, not updated ones
    return averaged
