"""The optimizer and learning-rate schedule of a config (optax).

Official recipe: SGD with momentum 0.9, weight decay 1e-4 added to the gradient of every parameter (PyTorch's
coupled `weight_decay`, BatchNorm and bias included), cosine decay to 0 stepped once per epoch, no warm-up.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import optax


def learning_rate_schedule(
    config: ml_collections.ConfigDict, steps_per_epoch: int, step_offset: int = 0
) -> optax.Schedule:
    """Cosine decay per epoch (the official `CosineAnnealingLR` stepped each epoch) or per step, after a linear
    warm-up of `warmup_epochs` epochs (0 = none). Update `t` gets the rate of step `t + step_offset` of a run at
    `config.batch_size`: a run resumed at another batch size continues its schedule in samples (`train.py`)."""
    s = config.schedule
    total_epochs = config.num_epochs
    warmup_steps = int(round(s.warmup_epochs * steps_per_epoch))
    total_steps = total_epochs * steps_per_epoch
    if s.decay not in ("cosine", "constant"):
        raise ValueError(f"config.schedule.decay={s.decay!r}; expected 'cosine' or 'constant'")

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        if step_offset:
            step = step + step_offset
        if s.decay == "constant":
            lr = jnp.asarray(s.base_lr, jnp.float32)
        else:
            progress = jnp.floor(step / steps_per_epoch) / total_epochs if s.per_epoch else step / total_steps
            progress = jnp.clip(progress, 0.0, 1.0)
            lr = s.end_lr + (s.base_lr - s.end_lr) * 0.5 * (1 + jnp.cos(math.pi * progress))
        if warmup_steps:
            lr = lr * jnp.minimum(1.0, (step + 1) / warmup_steps)
        return lr

    return schedule


def _decay_mask(params):
    """Conv and linear kernels only: what `decay_all_params=False` decays."""
    return jax.tree_util.tree_map_with_path(lambda path, _: str(getattr(path[-1], "key", path[-1])) == "kernel", params)


def make_optimizer(
    config: ml_collections.ConfigDict, steps_per_epoch: int, step_offset: int = 0
) -> optax.GradientTransformation:
    o = config.optimizer
    if o.name != "sgd":
        raise ValueError(f"config.optimizer.name={o.name!r}; only 'sgd' (the official optimizer) is provided")
    parts = []
    if config.get("grad_clip_norm", 0.0):
        parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
    if o.weight_decay:
        parts.append(optax.add_decayed_weights(o.weight_decay, mask=None if o.decay_all_params else _decay_mask))
    parts.append(
        optax.sgd(
            learning_rate_schedule(config, steps_per_epoch, step_offset), momentum=o.momentum, nesterov=o.nesterov
        )
    )
    return optax.chain(*parts)
