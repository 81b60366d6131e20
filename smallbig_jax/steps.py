"""The model of a config, its train state and the train and eval steps, built in one place.

`train.py` (the training loop), `evaluate.py` (multi-view evaluation), `benchmark.py` (smallbig-jax benchmark,
benchmarks/cpu_step_profile.py) and `smallbig-jax accelerator_check` all take their model, state and steps from here,
so what is timed is what trains: per-device BatchNorm, gradient accumulation, EMA, label smoothing, the optimizer
chain, the model's formulation and its compile options exactly as the config sets them. `model_from_config` is the
one way from a config to a model; `train_setup` is the one call that turns a config into a ready train state and
its steps.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jax import lax

from smallbig_jax import sharding
from smallbig_jax.config import DTYPES
from smallbig_jax.convert import init_from
from smallbig_jax.models import (
    VARIANTS,
    Formulation,
    SmallBigNet,
    build_model,
    resolve_formulation,
    set_batchnorm_groups,
)
from smallbig_jax.optim import learning_rate_schedule, make_optimizer

# --- The model and the train state of a config ------------------------------------------------------------------


def formulation(config: ml_collections.ConfigDict, mesh=None) -> Formulation:
    """The model's formulation, `config.model.formulation` ("auto": "cpu" when `mesh`, or without one JAX's default
    backend, is on the CPU, "plain" elsewhere); it brings the compile options of the steps built here."""
    platform = mesh.devices.flat[0].platform if mesh is not None else None
    try:
        return resolve_formulation(config.model.formulation, platform)
    except ValueError as error:
        raise ValueError(f"config.model.{error}") from None


def model_from_config(config: ml_collections.ConfigDict, mesh=None) -> SmallBigNet:
    """A fresh model for `config.model` (seeded by `config.seed`, dtype names checked, in its `formulation`) and,
    given the `mesh` it trains on, its BatchNorms set for `config.batchnorm` (per-device statistics: one group per
    device)."""
    model_config = config.model
    for key in ("dtype", "param_dtype"):
        if model_config[key] not in DTYPES:
            raise ValueError(f"config.model.{key}={model_config[key]!r}; expected one of {sorted(DTYPES)}")
    if model_config.variant not in VARIANTS:
        raise ValueError(f"config.model.variant={model_config.variant!r}; expected one of {sorted(VARIANTS)}")
    if config.batchnorm not in ("per_device", "global"):
        raise ValueError(f"config.batchnorm={config.batchnorm!r}; expected 'per_device' or 'global'")
    model = build_model(
        model_config.variant,
        model_config.num_classes,
        base_width=model_config.base_width,
        dtype=getattr(jnp, model_config.dtype),
        param_dtype=getattr(jnp, model_config.param_dtype),
        seed=config.seed,
        formulation=formulation(config, mesh),
    )
    if mesh is not None and config.batchnorm == "per_device":
        set_batchnorm_groups(model, mesh.size)
    return model


def model_graphdefs(config: ml_collections.ConfigDict, mesh) -> tuple[nnx.GraphDef, nnx.GraphDef]:
    """Graph definitions of the model in train mode (batch statistics) and in eval mode (running statistics)."""
    model = nnx.eval_shape(lambda: model_from_config(config, mesh))
    train_graphdef = nnx.graphdef(model)
    model.eval()
    return train_graphdef, nnx.graphdef(model)


def _initial_state(config: ml_collections.ConfigDict, mesh, tx: optax.GradientTransformation, load: bool = True):
    """step, params, batch_stats, opt_state (and ema_params) of a fresh model (`config.init_from` applied if load)."""
    model = model_from_config(config, mesh)
    if load and config.init_from:
        init_from(model, config.init_from)
    _, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    state = {
        "step": jnp.zeros((), jnp.int32),
        "params": params,
        "batch_stats": batch_stats,
        "opt_state": tx.init(params),
    }
    if config.ema_decay:
        state["ema_params"] = params
    return state


def abstract_train_state(config: ml_collections.ConfigDict, mesh, tx: optax.GradientTransformation):
    """(shapes and dtypes of the train state, its shardings on `mesh`), without computing anything."""
    abstract = jax.eval_shape(lambda: _initial_state(config, mesh, tx, load=False))
    return abstract, sharding.state_shardings(abstract, mesh, config.params_sharding)


def create_train_state(config: ml_collections.ConfigDict, mesh, tx: optax.GradientTransformation):
    """(graphdef, state, shardings), the state created directly with its target shardings (`init_from` reads
    files on the host, so then the state is built there and placed)."""
    graphdef = model_graphdefs(config, mesh)[0]
    abstract, shardings = abstract_train_state(config, mesh, tx)
    if config.init_from:
        return graphdef, jax.device_put(_initial_state(config, mesh, tx), shardings), shardings
    # On CPU, LLVM's lighter optimisation level (O1) compiles the initialiser, a program that runs once, faster (tiny
    # SmallBig-23: 10.4 -> 4.4 s; SmallBig-R50: 12.2 -> 8.5 s) and gave bit-identical parameters (BENCHMARKS.md).
    options = {"xla_backend_optimization_level": 1} if mesh.devices.flat[0].platform == "cpu" else None
    init = jax.jit(lambda: _initial_state(config, mesh, tx), out_shardings=shardings, compiler_options=options)
    return graphdef, init(), shardings


# --- The steps --------------------------------------------------------------------------------------------------


def cross_entropy(logits: jax.Array, labels: jax.Array, smoothing: float = 0.0) -> jax.Array:
    targets = jax.nn.one_hot(labels, logits.shape[-1])
    if smoothing:
        targets = optax.smooth_labels(targets, smoothing)
    return optax.softmax_cross_entropy(logits, targets)


def train_step_fn(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    config: ml_collections.ConfigDict,
    lr_schedule: optax.Schedule,
) -> Callable:
    """The pure step `(state, batch) -> (state, metrics)`, not jitted (`make_train_step` jits it on a mesh; the
    accelerator check also runs it on the host CPU as the reference).

    With `grad_accum_steps = k` the global batch is split into k micro-batches (every device keeps 1/k of its part
    in each), run one after another with BatchNorm statistics per micro-batch and running statistics updated after
    each, as k PyTorch forward passes would; the mean of their gradients makes one update.
    """
    k = config.grad_accum_steps
    ema_decay = config.ema_decay

    def loss_fn(params, batch_stats, clips, labels):
        model = nnx.merge(graphdef, params, batch_stats, copy=True)
        logits = model(clips)
        loss = cross_entropy(logits, labels, config.label_smoothing).mean()
        correct = jnp.sum(jnp.argmax(logits, -1) == labels)
        return loss, (nnx.state(model, nnx.BatchStat), correct)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(state, batch):  # the name XLA's dumps and profiles show: jit_train_step
        clips, labels = batch["clip"], batch["label"]
        params = state["params"]
        if k == 1:
            (loss, (batch_stats, correct)), grads = grad_fn(params, state["batch_stats"], clips, labels)
        else:
            n = clips.shape[0]
            if n % k:
                raise ValueError(f"batch {n} does not split into grad_accum_steps={k} micro-batches")
            split = lambda x: jnp.swapaxes(x.reshape(n // k, k, *x.shape[1:]), 0, 1)  # noqa: E731

            def micro(carry, xs):
                batch_stats, grad_sum, loss_sum, correct_sum = carry
                (loss, (batch_stats, correct)), grads = grad_fn(params, batch_stats, *xs)
                grad_sum = jax.tree.map(jnp.add, grad_sum, grads)
                return (batch_stats, grad_sum, loss_sum + loss, correct_sum + correct), None

            zeros = jax.tree.map(jnp.zeros_like, params)
            init = (state["batch_stats"], zeros, jnp.zeros(()), jnp.zeros((), jnp.int32))
            (batch_stats, grads, loss, correct), _ = lax.scan(micro, init, (split(clips), split(labels)))
            grads = jax.tree.map(lambda g: g / k, grads)
            loss = loss / k
        updates, opt_state = tx.update(grads, state["opt_state"], params)
        new_state = {
            "step": state["step"] + 1,
            "params": optax.apply_updates(params, updates),
            "batch_stats": batch_stats,
            "opt_state": opt_state,
        }
        if ema_decay:
            new_state["ema_params"] = optax.incremental_update(new_state["params"], state["ema_params"], 1 - ema_decay)
        metrics = {"loss": loss, "accuracy": correct / labels.shape[0], "learning_rate": lr_schedule(state["step"])}
        return new_state, metrics

    return train_step


def make_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    config: ml_collections.ConfigDict,
    mesh,
    state_shardings: Any,
    lr_schedule: optax.Schedule,
) -> Callable:
    """The jitted step `(state, batch) -> (state, metrics)` on `mesh`: state in its shardings and donated, batch
    split over the 'data' axis, metrics replicated."""
    return jax.jit(
        train_step_fn(graphdef, tx, config, lr_schedule),
        in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
        out_shardings=(state_shardings, sharding.replicated(mesh)),
        donate_argnums=(0,),
        compiler_options=formulation(config, mesh).compiler_options(mesh.devices.flat[0].platform),
    )


def eval_step_fn(graphdef: nnx.GraphDef) -> Callable:
    """The pure `(params, batch_stats, clips) -> logits` of a model graph in eval mode (running statistics)."""

    def eval_step(params, batch_stats, clips):  # jit_eval_step in XLA's dumps and profiles
        return nnx.merge(graphdef, params, batch_stats)(clips)

    return eval_step


@functools.lru_cache(maxsize=4)
def make_eval_step(graphdef: nnx.GraphDef, mesh, formulation: Formulation) -> Callable:
    """Jitted `(params, batch_stats, clips) -> logits`, in eval mode, logits replicated on every device, compiled
    with the options of the model's `formulation` (`formulation(config, mesh)`); one per (model, mesh), so that the
    validations during training compile once."""
    options = formulation.compiler_options(mesh.devices.flat[0].platform)
    return jax.jit(eval_step_fn(graphdef), out_shardings=sharding.replicated(mesh), compiler_options=options)


@dataclasses.dataclass
class TrainSetup:
    """A config's train state on a mesh and the steps that run it (what `train_and_evaluate` trains with)."""

    graphdef: nnx.GraphDef  # train mode (batch statistics)
    eval_graphdef: nnx.GraphDef  # eval mode (running statistics)
    tx: optax.GradientTransformation
    lr_schedule: optax.Schedule
    state: dict[str, Any]
    state_shardings: Any
    train_step: Callable  # make_train_step(...)
    eval_step: Callable  # make_eval_step(...)


def train_setup(config: ml_collections.ConfigDict, mesh, steps_per_epoch: int, step_offset: int = 0) -> TrainSetup:
    """The optimizer, schedule (`step_offset`: see `optim.learning_rate_schedule`), fresh train state (born sharded;
    `config.init_from` applied) and jitted steps of `config` on `mesh`."""
    tx = make_optimizer(config, steps_per_epoch, step_offset)
    lr_schedule = learning_rate_schedule(config, steps_per_epoch, step_offset)
    graphdef, state, shardings = create_train_state(config, mesh, tx)
    eval_graphdef = model_graphdefs(config, mesh)[1]
    return TrainSetup(
        graphdef,
        eval_graphdef,
        tx,
        lr_schedule,
        state,
        shardings,
        make_train_step(graphdef, tx, config, mesh, shardings, lr_schedule),
        make_eval_step(eval_graphdef, mesh, formulation(config, mesh)),
    )
