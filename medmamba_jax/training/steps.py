"""The jitted training step, a pure function of (states, batch, step) sharded over the mesh."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from medmamba_jax import sharding


def loss_fn(logits: jax.Array, labels: jax.Array, multi_label: bool,
            class_weights: jax.Array | None = None) -> jax.Array:
    """Mean softmax CE for labels (b,) int; mean sigmoid BCE over images and labels for (b, L) multi-label.

    ``class_weights`` (C,), as ``training.class_weights`` explains: each image's CE times its class's
    weight, summed and divided by the weights' sum; or each label's positive term in the BCE times its weight.
    """
    if multi_label:
        targets = labels.astype(jnp.float32)
        if class_weights is None:
            return optax.sigmoid_binary_cross_entropy(logits, targets).mean()
        logits = logits.astype(jnp.float32)
        return -(class_weights * targets * jax.nn.log_sigmoid(logits)
                 + (1.0 - targets) * jax.nn.log_sigmoid(-logits)).mean()
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    if class_weights is None:
        return losses.mean()
    weights = class_weights[labels]
    return (weights * losses).sum() / weights.sum()


def augment_key(seed: int, step: jax.Array) -> jax.Array:
    """The augmentation key of micro-step ``step``: a function of (seed, step) only."""
    return jax.random.fold_in(jax.random.key(seed), step)


def make_train_step(model_def, opt_def, transform: Callable, multi_label: bool, seed: int, mesh,
                    class_weights: np.ndarray | None = None) -> Callable:
    """``step_fn(model_state, opt_state, images, labels, step) -> (model_state, opt_state, loss)``.

    images: (B, H, W, C) uint8 and labels: (B,) or (B, L), sharded along B over the mesh;
    step: int32 scalar. The states are replicated and donated. Stochastic depth draws from
    the model's own RNG state, which is part of the checkpointed model state. ``class_weights``
    (C,) weights the loss (``loss_fn``); an optimizer with an EMA (``training.ema``) updates it too.
    """
    def step_fn(model_state, opt_state, images, labels, step):
        model, optimizer = nnx.merge(model_def, model_state), nnx.merge(opt_def, opt_state)
        x = transform(images, augment_key(seed, step))
        weights = None if class_weights is None else jnp.asarray(class_weights, jnp.float32)  # a constant

        def loss_of(m):
            return loss_fn(m(x), labels, multi_label, weights)

        loss, grads = nnx.value_and_grad(loss_of)(model)
        optimizer.update(model, grads)
        return nnx.state(model), nnx.state(optimizer), loss

    repl, data = sharding.replicated(mesh), sharding.batch_sharding(mesh)
    return jax.jit(
        step_fn,
        in_shardings=(repl, repl, data, data, repl),
        out_shardings=(repl, repl, repl),
        donate_argnums=(0, 1),
    )


def compile_train_step(model: nnx.Module, optimizer: nnx.Optimizer, stream, transform: Callable,
                       multi_label: bool, seed: int, mesh, class_weights: np.ndarray | None = None) -> jax.stages.Compiled:
    """``make_train_step`` compiled ahead of time for ``stream``'s micro-batches, so that its
    memory needs (``memory_analysis()``) are known before the first step runs."""
    model_def, model_state = nnx.split(model)
    opt_def, opt_state = nnx.split(optimizer)
    step_fn = make_train_step(model_def, opt_def, transform, multi_label, seed, mesh, class_weights)
    repl, data = sharding.replicated(mesh), sharding.batch_sharding(mesh)

    def spec(x, where, rows=None):
        return jax.ShapeDtypeStruct((rows, *x.shape[1:]) if rows else x.shape, x.dtype, sharding=where)

    images, labels = stream(0)  # this process's share: the global batch has micro_batch rows
    return step_fn.lower(
        jax.tree.map(lambda x: spec(x, repl), model_state), jax.tree.map(lambda x: spec(x, repl), opt_state),
        spec(images, data, stream.micro_batch), spec(labels, data, stream.micro_batch),
        jax.ShapeDtypeStruct((), jnp.int32, sharding=repl),
    ).compile()
