"""Training and evaluation of SmallBigNet from a config, on one CPU, a multi-GPU host or a TPU pod alike.

The train step (`smallbig_jax.steps`) is one pure `jax.jit` function over the model's `nnx.split` state on a 'data'
mesh: state born sharded (`out_shardings`), buffers donated, batch split over every device of every process, no
pmap. A run in a workdir that already has checkpoints resumes from the newest intact one (checksums verified, the
saved config compared with the new one before anything compiles), iterator position included, on any number of
devices and hosts and at another batch size when the samples seen allow it (`check_resume`); SIGTERM saves a
checkpoint at the current step and exits cleanly.

`train_and_evaluate` reads as its steps: `open_run` (check the config, find the checkpoint to resume from, open the
loader, build or restore the train state), `train_steps` (the loop: a step, its log line, validation and
checkpoints, preemption), `finish` (the last checkpoint and the final multi-view test).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import signal
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from smallbig_jax import checkpointing, runtime, sharding, steps
from smallbig_jax import evaluate as evaluation
from smallbig_jax.config import ConfigError, check_config, resume_changes
from smallbig_jax.data import pipeline
from smallbig_jax.metrics import MetricWriter, plot_curves

log = logging.getLogger(__name__)


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


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}{'es' if word.endswith('s') else 's'}"


def _was(now: Any, before: Any) -> str:
    return f" (was {before})" if before is not None and before != now else ""


def total_steps_of(config: ml_collections.ConfigDict, steps_per_epoch: int, step_offset: int = 0) -> int:
    """The last step: `num_epochs` epochs of `steps_per_epoch` batches of `config.batch_size`, counted from
    `step_offset` steps before the first update (`check_resume`)."""
    return config.num_epochs * steps_per_epoch - step_offset


def _batchnorm_group_change(
    config: ml_collections.ConfigDict, saved_config: dict, saved_devices: int | None, devices: int
) -> tuple[str | None, str]:
    """(why a resume is refused, what it changes in words) for the clips BatchNorm takes its statistics over: with
    `per_device`, each device's part of a micro-batch, which must stay the same; with `global`, the whole
    micro-batch, which a change of batch size or accumulation changes with it (said, not refused)."""
    old_batch, batch = saved_config.get("batch_size", config.batch_size), config.batch_size
    old_k, k = saved_config.get("grad_accum_steps", 1), config.grad_accum_steps
    if config.batchnorm != "per_device":
        old, new = old_batch // old_k, batch // k
        return None, "" if old == new else f", BatchNorm over the global micro-batch of {new} clips (was {old})"
    if saved_devices is None:  # written before the device count was recorded
        return None, ", per-device BatchNorm groups not compared (the checkpoint does not record its device count)"
    old_group, new_group = old_batch / (saved_devices * old_k), batch / (devices * k)
    if old_group == new_group:
        return None, ""
    group = int(old_group)
    keep = [f"--config.batch_size={group * devices * k}"]
    if batch % (devices * group) == 0:
        keep.append(f"--config.grad_accum_steps={batch // (devices * group)}")
    return (
        f"batchnorm='per_device': statistics over {group} clips per device and micro-batch (batch {old_batch} / "
        f"{_plural(saved_devices, 'device')} / grad_accum_steps {old_k}) would be over {new_group:g} ({batch} / "
        f"{_plural(devices, 'device')} / {k}); keep {group} with {' or '.join(keep)}"
    ), ""


def check_resume(
    config: ml_collections.ConfigDict,
    saved_config: dict,
    data_state: dict,
    start: int,
    num_videos: int,
    devices: int,
) -> tuple[int, str]:
    """Refuses (`ConfigError`, every refused field as `old -> new` in one message) a resume from checkpoint `start`
    under a config the checkpoint cannot continue with, and logs the config changes it accepts. Returns the step
    offset of the schedule and the capacity the run resumes on, in words (for the one "resumed" line).

    The position is carried in samples (the global stream position saved with the loader's state), so a run resumes
    on any number of devices and hosts, and at another batch size B' when the samples seen are a whole number of
    batches of B' (else refused: no step of a run at B' begins there). A step is one update of B' samples: steps
    keep counting updates, and update t takes the learning rate of step `t + offset` of an uninterrupted run at B'
    (`offset` = samples seen / B' - `start`), as its epochs and its last step do."""
    refused, accepted = resume_changes(saved_config, config)
    saved_videos = data_state.get("num_videos")  # absent in checkpoints written before it was recorded
    if saved_videos is not None and saved_videos != num_videos:
        refused.append(f"training set size: {saved_videos} -> {num_videos} videos (epochs would start at other steps)")
    old_batch, batch = saved_config.get("batch_size", config.batch_size), config.batch_size
    samples = int(data_state.get("position", start * old_batch))
    offset = samples // batch - start
    if samples % batch:
        refused.append(
            f"batch_size: {old_batch} -> {batch}: the checkpoint at step {start} has seen {samples:,} samples, not a "
            f"whole number of batches of {batch}, so no step of a run at batch {batch} begins there (resume at a "
            f"batch that divides {samples}, or at {old_batch} until a checkpoint at a multiple of {batch} samples)"
        )
    saved_devices = data_state.get("devices")  # absent in checkpoints written before it was recorded
    bn_refused, bn_change = _batchnorm_group_change(config, saved_config, saved_devices, devices)
    if bn_refused:
        refused.append(bn_refused)
    total_steps = total_steps_of(config, max(num_videos // batch, 1), offset)
    if start > total_steps and not refused:  # otherwise a consequence of the refused changes
        refused.append(
            f"num_epochs: the checkpoint is at step {start} ({samples:,} samples), past the last step ({total_steps}) "
            f"of {config.num_epochs} epochs"
        )
    if refused:
        raise ConfigError(
            f"cannot resume from checkpoint step {start} with this config; these fields must keep "
            "their saved values (or train in a new workdir):\n  " + "\n  ".join(refused)
        )
    if accepted:
        log.info("config changes since checkpoint step %d: %s", start, "; ".join(accepted))
    old_epochs = saved_config.get("num_epochs", config.num_epochs)
    if old_epochs != config.num_epochs:
        log.warning(
            "num_epochs %s -> %s: continuing from step %d (%d samples seen) to step %d; the learning-rate "
            "schedule now spans %d epochs",
            old_epochs,
            config.num_epochs,
            start,
            samples,
            total_steps,
            config.num_epochs,
        )
    processes = jax.process_count()
    old_processes = data_state.get("layout", {}).get("process_count")
    old_k = saved_config.get("grad_accum_steps", 1)
    words = (
        f" on {_plural(devices, 'device')}{_was(devices, saved_devices)}, "
        f"{_plural(processes, 'process')}{_was(processes, old_processes)}, batch {batch}{_was(batch, old_batch)}"
        + (f", grad_accum_steps {config.grad_accum_steps} (was {old_k})" if old_k != config.grad_accum_steps else "")
        + bn_change
        + f": continuing at sample {samples % max(num_videos, 1):,} of epoch {samples // max(num_videos, 1) + 1}"
    )
    if offset:
        words += (
            f"; step {start} is step {start + offset} of a run at batch {batch} (the schedule continues in samples)"
        )
    return offset, words


@dataclasses.dataclass
class Run:
    """A training run while it trains: its mesh, loader, checkpoint manager, steps and current state."""

    config: ml_collections.ConfigDict
    workdir: str
    mesh: Mesh
    loader: pipeline.DeviceIterator
    manager: checkpointing.Manager
    setup: steps.TrainSetup
    state: dict[str, Any]
    start: int  # the step the run starts (or resumes) from
    steps_per_epoch: int
    total_steps: int
    saved_step: int = -1
    step_offset: int = 0  # step `t` is step `t + step_offset` of a run at this batch size (`check_resume`)

    def save(self, step: int, metrics: dict | None = None, force: bool = False) -> None:
        """Checkpoints the state at `step` with the loader's position, unless this step is saved already."""
        if self.saved_step != step:
            data_state = {**self.loader.get_state(), "num_videos": self.loader.num_videos, "devices": self.mesh.size}
            checkpointing.save(self.manager, step, self.state, data_state, self.config, metrics, force=force)
            self.saved_step = step

    def evaluate(self, data_config: ml_collections.ConfigDict, split_name: str) -> dict[str, Any]:
        """The current (or EMA) weights on the validation split with `data_config`'s views."""
        params = self.state.get("ema_params", self.state["params"])
        result = evaluation.evaluate_dataset(
            self.config, data_config, self.setup.eval_graphdef, params, self.state["batch_stats"], self.mesh
        )
        log.info(
            "%s: top-1 %.4f  top-5 %.4f over %d videos (%d views each)",
            split_name,
            result["top1"],
            result["top5"],
            result["videos"],
            data_config.num_clips * data_config.num_crops,
        )
        return result


def open_run(config: ml_collections.ConfigDict, workdir: str) -> Run:
    """Everything checked before anything compiles (the config's values, its batch against the devices, the
    checkpoint to resume from and what the config changes since), then the loader and the train state: fresh, or
    restored with the loader's position. Raises `ConfigError` (and leaves the workdir as it was) on a refusal."""
    check_config(config)
    runtime.configure(config, workdir)  # compilation cache, XLA GPU flags: before the backend starts
    mesh = sharding.make_mesh()
    if config.batch_size % mesh.size:
        raise ConfigError(f"config.batch_size={config.batch_size} is not divisible by {mesh.size} devices")
    start = checkpointing.find_intact(workdir, set_aside=True)
    loader = pipeline.recipe_train_loader(config, mesh)
    steps_per_epoch = max(loader.num_videos // config.batch_size, 1)
    manager = checkpointing.make_manager(workdir, keep=config.keep_checkpoints)
    offset, resumed_on = 0, ""
    try:
        if start is not None:
            saved_config, data_state = checkpointing.restore_run_info(manager, start)
            offset, resumed_on = check_resume(config, saved_config, data_state, start, loader.num_videos, mesh.size)
        # the same state and step as smallbig-jax benchmark's
        setup = steps.train_setup(config, mesh, steps_per_epoch, offset)
        state = setup.state
        if start is not None:
            abstract = checkpointing.abstract_like(state, setup.state_shardings)  # the new mesh's shardings
            state, data_state, start = checkpointing.restore(manager, abstract, start)
            loader.set_state(data_state)  # the samples seen: the same stream position on any hosts and batch
            log.info("resumed from %s at step %d%s", manager.directory, start, resumed_on)
    except BaseException:
        manager.close()
        loader.close()
        raise
    start = start or 0
    total_steps = total_steps_of(config, steps_per_epoch, offset)
    return Run(
        config,
        workdir,
        mesh,
        loader,
        manager,
        setup,
        state,
        start,
        steps_per_epoch,
        total_steps,
        saved_step=start,
        step_offset=offset,
    )


class TrainLog:
    """The training metrics of the steps since the last log line: every `config.log_every` steps (and at the last)
    their mean is written (TensorBoard, metrics.jsonl) and logged with the throughput and the ETA; a non-finite loss
    stops the run there, naming the step."""

    def __init__(self, run: Run, writer: MetricWriter):
        self.run, self.writer = run, writer
        self.history: list[tuple[int, dict]] = []
        self.since, self.since_step = time.perf_counter(), run.start

    def add(self, step: int, metrics: dict) -> None:
        self.history.append((step, metrics))
        if step % self.run.config.log_every == 0 or step == self.run.total_steps:
            self.flush(step)

    def flush(self, step: int) -> None:
        run, config = self.run, self.run.config
        history = jax.device_get(self.history)
        bad = _first_nonfinite(history)
        if bad is not None:
            before = [s for s in run.manager.all_steps() if s < bad]
            raise FloatingPointError(
                f"the training loss became {history[bad - history[0][0]][1]['loss']} at step "
                f"{bad}; stopping (newest checkpoint before it: step "
                f"{max(before) if before else 'none'})"
            )
        now = time.perf_counter()
        devices = run.mesh.size
        rate = (step - self.since_step) * config.batch_size / (now - self.since)
        mean = {k: float(np.mean([m[k] for _, m in history])) for k in history[-1][1]}
        self.writer.write(step, "train", {**mean, "clips_per_second_per_device": rate / devices})
        log.info(
            "step %d/%d  loss %.4f  acc %.3f  lr %.5f  %.1f clips/s/device  ETA %s",
            step,
            run.total_steps,
            mean["loss"],
            mean["accuracy"],
            mean["learning_rate"],
            rate / devices,
            _format_eta((run.total_steps - step) * config.batch_size / rate),
        )
        self.history, self.since, self.since_step = [], now, step

    def pause_clock(self) -> None:
        """Evaluation time is not training throughput."""
        self.since = time.perf_counter()


def train_steps(run: Run, writer: MetricWriter, result: dict[str, Any]) -> bool:
    """Trains from `run.start` to the last step: each step, its log line, the validation at the end of every
    `eval_every_epochs`-th epoch (with a checkpoint), a checkpoint every `checkpoint_every` steps. Returns whether it
    stopped early because every process agreed on a SIGTERM (after checkpointing that step)."""
    config = run.config
    train_log = TrainLog(run, writer)
    profiler = runtime.StepProfiler(config.get("profile_steps", 0), os.path.join(run.workdir, "tensorboard"), run.start)
    preemption = Preemption()
    started = time.perf_counter()
    try:
        for step in range(run.start + 1, run.total_steps + 1):
            profiler.before(step)
            run.state, metrics = run.setup.train_step(run.state, next(run.loader))
            profiler.after(step, metrics)
            if result["first_step_seconds"] is None:
                jax.block_until_ready(metrics)
                result["first_step_seconds"] = round(time.perf_counter() - started, 2)
            train_log.add(step, metrics)
            epoch, into_epoch = divmod(step + run.step_offset, run.steps_per_epoch)
            if config.eval_every_epochs and into_epoch == 0 and epoch % config.eval_every_epochs == 0:
                val = run.evaluate(validation_config(config.data), "val")
                writer.write(step, "val", {k: val[k] for k in ("top1", "top5")})
                run.save(step, {checkpointing.BEST_METRIC: val[checkpointing.BEST_METRIC]})
                train_log.pause_clock()
            elif step % config.checkpoint_every == 0:
                run.save(step)
            if preemption.agreed():
                log.warning("SIGTERM: saving a checkpoint at step %d and exiting", step)
                run.save(step, force=True)
                run.manager.wait_until_finished()
                result.update(steps=step, preempted=True)
                return True
        return False
    finally:
        profiler.close()
        preemption.restore()


def finish(run: Run, writer: MetricWriter, result: dict[str, Any]) -> None:
    """The last checkpoint (timed, with its size) and, with `config.final_eval`, the full multi-view test of the
    final weights, its scores in `result` and its per-video predictions in `<workdir>/predictions_test.jsonl`."""
    started = time.perf_counter()
    run.save(run.total_steps, force=True)
    run.manager.wait_until_finished()
    result.update(
        steps=run.total_steps,
        final_save_seconds=round(time.perf_counter() - started, 2),
        checkpoint_megabytes=round(checkpointing.size_bytes(run.manager, run.total_steps) / 2**20, 2),
    )
    if run.config.final_eval:
        final = run.evaluate(run.config.data, "test")
        writer.write(run.total_steps, "test", {k: final[k] for k in ("top1", "top5")})
        if jax.process_index() == 0:
            evaluation.write_predictions(os.path.join(run.workdir, "predictions_test.jsonl"), final)
        result.update({k: v for k, v in final.items() if k not in ("predictions", "names")})


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains `config` in `workdir` (resuming from its newest intact checkpoint if any) and returns the final
    metrics. Config values, the checkpoint and the resume compatibility are all checked before anything compiles."""
    run = open_run(config, workdir)
    log.info(
        "%d steps (%d epochs x %d), global batch %d on %d devices (%d processes), BatchNorm %s",
        run.total_steps,
        config.num_epochs,
        run.steps_per_epoch,
        config.batch_size,
        run.mesh.size,
        jax.process_count(),
        config.batchnorm,
    )
    # first_step_seconds: time to the first step's result, which compilation dominates.
    result: dict[str, Any] = {"steps": run.start, "total_steps": run.total_steps, "first_step_seconds": None}
    with contextlib.ExitStack() as cleanup:  # closed in reverse order: the checkpoint writes first, the curves last
        cleanup.callback(plot_curves, workdir)
        writer = MetricWriter(workdir, resumed_at=run.start)
        cleanup.callback(writer.close)
        cleanup.callback(run.loader.close)
        cleanup.callback(run.manager.close)
        cleanup.callback(run.manager.wait_until_finished)
        if not train_steps(run, writer, result):
            finish(run, writer, result)
    return result
