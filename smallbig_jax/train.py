"""Training and evaluation of SmallBigNet from a config, on one CPU, a multi-GPU host or a TPU pod alike.

The train step is one pure `jax.jit` function over the model's `nnx.split` state on a 'data' mesh: state born
sharded (`out_shardings`), buffers donated, batch split over every device of every process, no pmap. A run in a
workdir that already has checkpoints resumes from the newest intact one (checksums verified, the saved config
compared with the new one before anything compiles), iterator position included; SIGTERM saves a
checkpoint at the current step and exits cleanly.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils

from smallbig_jax import checkpointing, evaluate as evaluation, runtime, sharding, steps
from smallbig_jax.config import ConfigError, check_config, model_from_config, resume_changes
from smallbig_jax.data import pipeline
from smallbig_jax.metrics import MetricWriter, plot_curves
from smallbig_jax.models import set_batchnorm_groups
from smallbig_jax.optim import make_optimizer  # noqa: F401 (evaluate.py builds the abstract state with it)
from smallbig_jax.steps import cross_entropy, make_train_step  # noqa: F401 (built in steps.py; kept importable here)

log = logging.getLogger(__name__)


# --- State and steps --------------------------------------------------------------------------------------------


def build_model(config: ml_collections.ConfigDict, mesh) -> nnx.Module:
    """The config's model with BatchNorm groups set for `config.batchnorm`."""
    model = model_from_config(config.model, seed=config.seed)
    if config.batchnorm == "per_device":
        set_batchnorm_groups(model, mesh.size)
    elif config.batchnorm != "global":
        raise ValueError(f"config.batchnorm={config.batchnorm!r}; expected 'per_device' or 'global'")
    return model


def model_graphdefs(config: ml_collections.ConfigDict, mesh) -> tuple[nnx.GraphDef, nnx.GraphDef]:
    """Graph definitions of the model in train mode (batch statistics) and in eval mode (running statistics)."""
    model = nnx.eval_shape(lambda: build_model(config, mesh))
    train_graphdef = nnx.graphdef(model)
    model.eval()
    return train_graphdef, nnx.graphdef(model)


def _initial_state(config: ml_collections.ConfigDict, mesh, tx: optax.GradientTransformation, load: bool = True):
    """step, params, batch_stats, opt_state (and ema_params) of a fresh model (`config.init_from` applied if load)."""
    model = build_model(config, mesh)
    if load and config.init_from:
        from smallbig_jax.convert import init_from  # torch is only needed for .pth files

        init_from(model, config.init_from)
    _, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "batch_stats": batch_stats,
             "opt_state": tx.init(params)}
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


# --- The run ----------------------------------------------------------------------------------------------------


class Preemption:
    """SIGTERM sets a flag; all processes agree on it at a step boundary so they checkpoint the same step."""

    def __init__(self):
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        del signum, frame
        self.requested = True

    def agreed(self) -> bool:
        if jax.process_count() == 1:
            return self.requested
        return bool(multihost_utils.process_allgather(np.int32(self.requested)).max())

    def restore(self):
        signal.signal(signal.SIGTERM, self._previous)


def _first_nonfinite(history: list[tuple[int, dict]]) -> int | None:
    for step, m in history:
        if not math.isfinite(float(m["loss"])):
            return step
    return None


def _format_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def validation_config(data_config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Single view per video (centre clip, centre crop): the fast validation run during training."""
    c = ml_collections.ConfigDict(data_config.to_dict())
    c.num_clips, c.num_crops = 1, 1
    return c


def run_evaluation(config, data_config, state, mesh, split_name: str) -> dict[str, Any]:
    """Evaluates the current (or EMA) weights on the validation split with `data_config`'s views."""
    params = state.get("ema_params", state["params"])
    result = evaluation.evaluate_dataset(config, data_config, model_graphdefs(config, mesh)[1], params,
                                         state["batch_stats"], mesh)
    log.info("%s: top-1 %.4f  top-5 %.4f over %d videos (%d views each)", split_name, result["top1"], result["top5"],
             result["videos"], data_config.num_clips * data_config.num_crops)
    return result


def check_resume(config: ml_collections.ConfigDict, saved_config: dict, data_state: dict, start: int,
                 num_videos: int, total_steps: int) -> None:
    """Refuses (`ConfigError`, every refused field as `old -> new` in one message) a resume from checkpoint `start`
    under a config the checkpoint cannot continue with, and logs the changes it accepts and what they do."""
    refused, accepted = resume_changes(saved_config, config)
    saved_videos = data_state.get("num_videos")  # absent in checkpoints written before it was recorded
    if saved_videos is not None and saved_videos != num_videos:
        refused.append(f"training set size: {saved_videos} -> {num_videos} videos (epochs would start at other steps)")
    if start > total_steps and not refused:  # otherwise a consequence of the refused changes
        refused.append(f"num_epochs: the checkpoint is at step {start}, past the last step ({total_steps}) of "
                       f"{config.num_epochs} epochs")
    if refused:
        raise ConfigError(f"cannot resume from checkpoint step {start} with this config; these fields must keep "
                          "their saved values (or train in a new workdir):\n  " + "\n  ".join(refused))
    if accepted:
        log.info("config changes since checkpoint step %d: %s", start, "; ".join(accepted))
    old_epochs = saved_config.get("num_epochs", config.num_epochs)
    if old_epochs != config.num_epochs:
        log.warning("num_epochs %s -> %s: continuing from step %d (%d samples seen) to step %d; the learning-rate "
                    "schedule now spans %d epochs", old_epochs, config.num_epochs, start,
                    data_state.get("position", start * config.batch_size), total_steps, config.num_epochs)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains `config` in `workdir` (resuming from its newest intact checkpoint if any) and returns the final
    metrics. Config values, the checkpoint and the resume compatibility are all checked before anything compiles."""
    check_config(config)
    runtime.configure(config, workdir)  # compilation cache, XLA GPU flags: before the backend starts
    mesh = sharding.make_mesh()
    devices = mesh.size
    if config.batch_size % devices:
        raise ConfigError(f"config.batch_size={config.batch_size} is not divisible by {devices} devices")
    start = checkpointing.find_intact(workdir, set_aside=True)
    train_loader = pipeline.make_train_loader(config.data, global_batch_size=config.batch_size, seed=config.seed,
                                              num_classes=config.model.num_classes, mesh=mesh)
    steps_per_epoch = max(train_loader.num_videos // config.batch_size, 1)
    total_steps = config.num_epochs * steps_per_epoch
    manager = checkpointing.make_manager(workdir, keep=config.keep_checkpoints)
    if start is not None:
        try:
            saved_config, data_state = checkpointing.restore_run_info(manager, start)
            check_resume(config, saved_config, data_state, start, train_loader.num_videos, total_steps)
        except BaseException:
            manager.close()
            train_loader.close()
            raise
    setup = steps.train_setup(config, mesh, steps_per_epoch)  # the same state and step as scripts/benchmark.py's
    state, state_shardings, train_step = setup.state, setup.state_shardings, setup.train_step

    if start is not None:
        abstract = checkpointing.abstract_like(state, state_shardings)
        state, data_state, start = checkpointing.restore(manager, abstract, start)
        train_loader.set_state(data_state)
        log.info("resumed from %s at step %d", manager.directory, start)
    start = start or 0
    writer = MetricWriter(workdir, resumed_at=start)
    preemption = Preemption()
    profiler = runtime.StepProfiler(config.get("profile_steps", 0), os.path.join(workdir, "tensorboard"), start)
    log.info("%d steps (%d epochs x %d), global batch %d on %d devices (%d processes), BatchNorm %s",
             total_steps, config.num_epochs, steps_per_epoch, config.batch_size, devices, jax.process_count(),
             config.batchnorm)

    saved = {"step": start}

    def save(step, metrics=None, force=False):
        if saved["step"] != step:
            data_state = {**train_loader.get_state(), "num_videos": train_loader.num_videos}
            checkpointing.save(manager, step, state, data_state, config, metrics, force=force)
            saved["step"] = step

    # first_step_seconds: time to the first step's result, which compilation dominates.
    result: dict[str, Any] = {"steps": start, "total_steps": total_steps, "first_step_seconds": None}
    started = time.perf_counter()
    history: list[tuple[int, dict]] = []
    last_log_time, last_log_step = time.perf_counter(), start
    step = start
    try:
        for step in range(start + 1, total_steps + 1):
            profiler.before(step)
            state, metrics = train_step(state, next(train_loader))
            profiler.after(step, metrics)
            history.append((step, metrics))
            if result["first_step_seconds"] is None:
                jax.block_until_ready(metrics)
                result["first_step_seconds"] = round(time.perf_counter() - started, 2)
            if step % config.log_every == 0 or step == total_steps:
                history = jax.device_get(history)
                bad = _first_nonfinite(history)
                if bad is not None:
                    before = [s for s in manager.all_steps() if s < bad]
                    raise FloatingPointError(f"the training loss became {history[bad - history[0][0]][1]['loss']} "
                                             f"at step {bad}; stopping (newest checkpoint before it: step "
                                             f"{max(before) if before else 'none'})")
                now = time.perf_counter()
                rate = (step - last_log_step) * config.batch_size / (now - last_log_time)
                mean = {k: float(np.mean([m[k] for _, m in history])) for k in history[-1][1]}
                writer.write(step, "train", {**mean, "clips_per_second_per_device": rate / devices})
                log.info("step %d/%d  loss %.4f  acc %.3f  lr %.5f  %.1f clips/s/device  ETA %s", step, total_steps,
                         mean["loss"], mean["accuracy"], mean["learning_rate"], rate / devices,
                         _format_eta((total_steps - step) * config.batch_size / rate))
                history, last_log_time, last_log_step = [], now, step
            end_of_epoch = step % steps_per_epoch == 0
            if config.eval_every_epochs and end_of_epoch and (step // steps_per_epoch) % config.eval_every_epochs == 0:
                val = run_evaluation(config, validation_config(config.data), state, mesh, "val")
                writer.write(step, "val", {k: val[k] for k in ("top1", "top5")})
                save(step, {checkpointing.BEST_METRIC: val[checkpointing.BEST_METRIC]})
                last_log_time = time.perf_counter()  # evaluation time is not training throughput
            elif step % config.checkpoint_every == 0:
                save(step)
            if preemption.agreed():
                log.warning("SIGTERM: saving a checkpoint at step %d and exiting", step)
                save(step, force=True)
                manager.wait_until_finished()
                result.update(steps=step, preempted=True)
                return result
        started = time.perf_counter()
        save(total_steps, force=True)
        manager.wait_until_finished()
        result.update(steps=total_steps, final_save_seconds=round(time.perf_counter() - started, 2),
                      checkpoint_megabytes=round(checkpointing.size_bytes(manager, total_steps) / 2**20, 2))
        if config.final_eval:
            final = run_evaluation(config, config.data, state, mesh, "test")
            writer.write(total_steps, "test", {k: final[k] for k in ("top1", "top5")})
            if jax.process_index() == 0:
                evaluation.write_predictions(os.path.join(workdir, "predictions_test.jsonl"), final)
            result.update({k: v for k, v in final.items() if k not in ("predictions", "names")})
        return result
    finally:
        profiler.close()
        preemption.restore()
        manager.wait_until_finished()
        manager.close()
        train_loader.close()
        writer.close()
        plot_curves(workdir)
