"""AdamW with the MedMNIST multi-step schedule, and gradient accumulation via optax.MultiSteps.

Steps here are optimizer updates. With ``grad_accum_steps = k`` every update averages the
gradients of k micro-batches of ``batch_size / k`` images, so one epoch has
``steps_per_epoch = N // batch_size`` updates and ``k`` times as many micro-steps.
"""

from __future__ import annotations

import optax


def lr_schedule(config, steps_per_epoch: int) -> optax.Schedule:
    """learning_rate, times lr_gamma from each milestone epoch on (counted in updates)."""
    boundaries = {int(m) * steps_per_epoch: float(config.lr_gamma) for m in config.lr_milestones}
    return optax.piecewise_constant_schedule(float(config.learning_rate), boundaries)


def make_tx(config, steps_per_epoch: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optimizer and its schedule (the schedule is a function of the update count)."""
    schedule = lr_schedule(config, steps_per_epoch)
    tx = optax.adamw(schedule, weight_decay=float(config.weight_decay))
    if int(config.grad_accum_steps) > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=int(config.grad_accum_steps))
    return tx, schedule
