"""Training and evaluation of SmallBigNet from a config, on one CPU, a multi-GPU host or a TPU pod alike.

The train step (`smallbig_jax.steps`) is one pure `jax.jit` function over the model's `nnx.split` state on a 'data'
mesh: state born sharded (`out_shardings`), buffers donated, batch split over every device of every process, no
pmap. A run in a workdir that already has checkpoints resumes from the newest intact one (checksums verified, the
saved config compared with the new one before anything compiles), iterator position included, on any number of
devices and hosts and at another batch size when the samples seen allow it (`check_resume`). One run per workdir
(`smallbig_jax.workdir_lock`). SIGTERM (or a first Ctrl-C) stops every process at the same step or evaluation
batch, saves that step durably and returns a result marked preempted (`smallbig_jax.preemption`); a failed
checkpoint save stops the run at the next step. Where the time went is accounted for (`smallbig_jax.goodput`).

`train_and_evaluate` reads as its steps: `open_run` (check the config, find the checkpoint to resume from, open the
loader, build or restore the train state), `train_steps` (the loop: a step, its log line, validation and
checkpoints, preemption), `finish` (the last checkpoint and the final multi-view test); it returns a `TrainResult`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from smallbig_jax import checkpointing, runtime, sharding, steps
from smallbig_jax import evaluate as evaluation
from smallbig_jax.config import ConfigError, check_config, resume_changes
from smallbig_jax.data import pipeline
from smallbig_jax.errors import CheckpointError
from smallbig_jax.goodput import PARTIAL, SPLIT, Goodput, earlier_runs, summary
from smallbig_jax.metrics import MetricWriter, plot_curves
from smallbig_jax.preemption import Preempted, Preemption
from smallbig_jax.workdir_lock import WorkdirLock

log = logging.getLogger(__name__)


# --- The run ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class TrainResult:
    """What a training run did: the step it reached of `total_steps`, whether it stopped for a preemption (its
    checkpoint durable; the command exits with `cli.EXIT_PREEMPTED`), time to the first step's result (compilation
    dominates it), the last checkpoint's save time and size, the final test's metrics (`config.final_eval`) and the
    run's time account (`goodput`)."""

    steps: int
    total_steps: int
    preempted: bool = False
    first_step_seconds: float | None = None
    final_save_seconds: float | None = None
    checkpoint_megabytes: float | None = None
    test: dict[str, Any] | None = None  # top1, top5, videos, ... (no per-video predictions)
    goodput: dict[str, float] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The flat JSON line `smallbig-jax train` prints (the unset fields left out)."""
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("test", "goodput") and v is not None}
        if not self.preempted:
            del fields["preempted"]
        return {**fields, **(self.test or {}), "goodput": self.goodput}


def _first_nonfinite(history: list[tuple[int, dict]]) -> tuple[int, float] | None:
    """(step, loss) of the first step in `history` whose loss is not finite."""
    for step, m in history:
        if not math.isfinite(float(m["loss"])):
            return step, float(m["loss"])
    return None


def validation_due(config: ml_collections.ConfigDict, steps_per_epoch: int, step: int) -> bool:
    """Whether validation runs after `step`: at the end of every `config.eval_every_epochs`-th epoch."""
    epoch, into_epoch = divmod(step, steps_per_epoch)
    return bool(config.eval_every_epochs) and into_epoch == 0 and epoch % config.eval_every_epochs == 0


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
    """A training run while it trains: its mesh, loader, checkpoint manager, steps, current state and the step it
    holds (`step`: the last one trained), its preemption handling and its time account."""

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
    preemption: Preemption
    goodput: Goodput
    saved_step: int = -1
    step: int = 0
    step_offset: int = 0  # step `t` is step `t + step_offset` of a run at this batch size (`check_resume`)

    def save(self, step: int, metrics: dict | None = None, force: bool = False) -> None:
        """Checkpoints the state at `step` with the loader's position, unless this step is saved already. A save
        that fails (now, or in the background: see `service`) raises `CheckpointError` `<path>: <what>`."""
        if self.saved_step != step:
            data_state = {**self.loader.get_state(), "num_videos": self.loader.num_videos, "devices": self.mesh.size}
            with self.goodput.phase("checkpoint"):
                try:
                    checkpointing.save(self.manager, step, self.state, data_state, self.config, metrics, force=force)
                except Exception as e:
                    raise self._save_failed(step, e) from e
            self.saved_step = step

    def wait_durable(self) -> None:
        """Waits until the last save is complete on disk (or raises its failure)."""
        with self.goodput.phase("checkpoint"):
            try:
                self.manager.wait_until_finished()
                self.manager.check_for_errors()
            except Exception as e:
                raise self._save_failed(self.saved_step, e) from e

    def service(self) -> None:
        """A service point (after each step, before each evaluation batch): a checkpoint save that failed in the
        background stops the run here, and so does a preemption that every process agreed on (`Preempted`)."""
        try:
            self.manager.check_for_errors()
        except Exception as e:
            raise self._save_failed(self.saved_step, e) from e
        self.preemption.check()

    def _save_failed(self, step: int, error: Exception) -> CheckpointError:
        cause: BaseException | None = error
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__cause__ or cause.__context__
        where = getattr(cause, "filename", None) or os.path.join(str(self.manager.directory), str(step))
        what = getattr(cause, "strerror", None) or str(cause or error).strip().splitlines()[0]
        return CheckpointError(
            f"{where}: {what} (the checkpoint of step {step} was not saved; training stopped at step {self.step}, "
            f"the newest checkpoint is step {self._newest_intact()})"
        )

    def _newest_intact(self) -> str:
        saved = [s for s in checkpointing.list_steps(self.workdir) if s != self.saved_step]
        return str(saved[-1]) if saved else "none"

    def evaluate(self, data_config: ml_collections.ConfigDict, split_name: str) -> dict[str, Any]:
        """The current (or EMA) weights on the validation split with `data_config`'s views, with a service point
        before each batch."""
        params = self.state.get("ema_params", self.state["params"])
        batches = 0

        def between_batches() -> None:
            nonlocal batches
            batches += 1
            self.service()

        with self.goodput.phase("evaluation"):
            try:
                result = evaluation.evaluate_dataset(
                    self.config,
                    data_config,
                    self.setup.eval_graphdef,
                    params,
                    self.state["batch_stats"],
                    self.mesh,
                    between_batches=between_batches,
                )
            except Preempted:
                log.warning(
                    "%s of step %d stopped before its batch %d by the preemption", split_name, self.step, batches
                )
                raise
        log.info(
            "%s: top-1 %.4f  top-5 %.4f over %d videos (%d views each)",
            split_name,
            result["top1"],
            result["top5"],
            result["videos"],
            data_config.num_clips * data_config.num_crops,
        )
        return result


def open_run(
    config: ml_collections.ConfigDict,
    workdir: str,
    preemption: Preemption | None = None,
    goodput: Goodput | None = None,
) -> Run:
    """Everything checked before anything compiles (the config's values, its batch against the devices, the
    checkpoint to resume from and what the config changes since), then the loader and the train state: fresh, or
    restored with the loader's position. Raises `ConfigError` (and leaves the workdir as it was) on a refusal.
    Without `preemption` and `goodput` (a run opened to be inspected, not trained), no signal handling and a fresh
    account."""
    preemption = Preemption(newest=None) if preemption is None else preemption
    goodput = Goodput() if goodput is None else goodput
    mesh = sharding.make_mesh()
    if config.batch_size % mesh.size:
        raise ConfigError(f"config.batch_size={config.batch_size} is not divisible by {mesh.size} devices")
    start = checkpointing.find_intact(workdir, set_aside=True)
    preemption.newest = start
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
        preemption,
        goodput,
        saved_step=start,
        step=start,
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
            before = [s for s in run.manager.all_steps() if s < bad[0]]
            raise FloatingPointError(
                f"the training loss became {bad[1]} at step {bad[0]}; stopping (newest checkpoint before it: step "
                f"{max(before) if before else 'none'})"
            )
        now = time.perf_counter()
        devices = run.mesh.size
        rate = (step - self.since_step) * config.batch_size / (now - self.since)
        mean = {k: float(np.mean([m[k] for _, m in history])) for k in history[-1][1]}
        self.writer.write(step, "train", {**mean, "clips_per_second_per_device": rate / devices})
        self.writer.write(step, PARTIAL, run.goodput.row())  # the account so far, should the run be killed
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


def validate(run: Run, writer: MetricWriter, step: int) -> None:
    """The validation of `step` (single view), written and saved with its checkpoint as the best-model metric."""
    val = run.evaluate(validation_config(run.config.data), "val")
    writer.write(step, "val", {k: val[k] for k in ("top1", "top5")})
    run.save(step, {checkpointing.BEST_METRIC: val[checkpointing.BEST_METRIC]})


def train_steps(run: Run, writer: MetricWriter, result: TrainResult) -> None:
    """Trains from `run.start` to the last step: each step, its log line, the validation at the end of every
    `eval_every_epochs`-th epoch (with a checkpoint), a checkpoint every `checkpoint_every` steps, a service point
    after each step. A resumed run first repeats a validation that a preemption interrupted (its checkpoint has no
    metric)."""
    config = run.config
    train_log = TrainLog(run, writer)
    profiler = runtime.StepProfiler(config.get("profile_steps", 0), os.path.join(run.workdir, "tensorboard"), run.start)
    started = time.perf_counter()
    try:
        if run.start and validation_due(config, run.steps_per_epoch, run.start + run.step_offset):
            if checkpointing.BEST_METRIC not in (run.manager.metrics(run.start) or {}):
                # Its checkpoint is not saved again: it keeps no metric for `evaluate --best`.
                log.info("repeating the validation of step %d, which a preemption interrupted", run.start)
                validate(run, writer, run.start)
        for step in range(run.start + 1, run.total_steps + 1):
            profiler.before(step)
            with run.goodput.phase("input"):
                batch = next(run.loader)
            run.state, metrics = run.setup.train_step(run.state, batch)
            run.step = step
            profiler.after(step, metrics)
            if result.first_step_seconds is None:
                jax.block_until_ready(metrics)
                result.first_step_seconds = round(time.perf_counter() - started, 2)
                run.preemption.trained()
            run.goodput.steps_trained += 1
            train_log.add(step, metrics)
            if validation_due(config, run.steps_per_epoch, step + run.step_offset):
                validate(run, writer, step)
                train_log.pause_clock()
            elif step % config.checkpoint_every == 0:
                run.save(step)
            run.service()
    finally:
        profiler.close()
    result.steps = run.total_steps


def finish(run: Run, writer: MetricWriter, result: TrainResult) -> None:
    """The last checkpoint (timed, with its size) and, with `config.final_eval`, the full multi-view test of the
    final weights, its scores in `result.test` and its per-video predictions in `<workdir>/predictions_test.jsonl`."""
    started = time.perf_counter()
    run.save(run.total_steps, force=True)
    run.wait_durable()
    result.final_save_seconds = round(time.perf_counter() - started, 2)
    result.checkpoint_megabytes = round(checkpointing.size_bytes(run.manager, run.total_steps) / 2**20, 2)
    if run.config.final_eval:
        final = run.evaluate(run.config.data, "test")
        writer.write(run.total_steps, "test", {k: final[k] for k in ("top1", "top5")})
        if jax.process_index() == 0:
            evaluation.write_predictions(os.path.join(run.workdir, "predictions_test.jsonl"), final)
        result.test = {k: v for k, v in final.items() if k not in ("predictions", "names")}


def save_preempted(run: Run, result: TrainResult) -> None:
    """After the service point where every process agreed to stop: checkpoint `run.step` (every process the same),
    synchronously, and log when it is durable."""
    run.save(run.step, force=True)
    run.wait_durable()
    log.warning("%s", run.preemption.durable_line(run.step))
    result.steps, result.preempted = run.step, True


def _account_lost_steps(goodput: Goodput, earlier: list[dict], last_step: int, start: int) -> None:
    """Steps an earlier run trained past the checkpoint this run resumes from (a kill between checkpoints), timed at
    that run's mean step time (its account is written with every log line)."""
    if earlier and last_step > start:
        previous = earlier[-1]
        per_step = previous["train_seconds"] / max(previous["steps_trained"], 1)
        goodput.add_lost(last_step - start, (last_step - start) * per_step)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, started: float | None = None) -> TrainResult:
    """Trains `config` in `workdir` (resuming from its newest intact checkpoint if any) and returns what it did.
    Config values, the checkpoint and the resume compatibility are all checked before anything compiles. `started`:
    the `time.time()` the run's wall time counts from (the process start, for the command; default now)."""
    check_config(config)
    checkpointing.check_workdir(workdir)  # a folder that cannot be written fails here, with its name
    goodput = Goodput(started)
    runtime.configure(config, workdir)  # compilation cache, XLA GPU flags: before the backend starts
    with contextlib.ExitStack() as cleanup:  # closed in reverse order
        cleanup.callback(goodput.close)
        preemption = cleanup.enter_context(Preemption(newest=None))
        cleanup.enter_context(WorkdirLock(workdir, enabled=jax.process_index() == 0))
        earlier, last_step = earlier_runs(workdir) if jax.process_index() == 0 else ([], 0)
        run = open_run(config, workdir, preemption, goodput)
        _account_lost_steps(goodput, earlier, last_step, run.start)
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
        result = TrainResult(steps=run.start, total_steps=run.total_steps)
        writer = MetricWriter(workdir, resumed_at=run.start)
        for close, *args in (
            (writer.close,),
            (_write_goodput, run, writer, result),
            (plot_curves, workdir),
            (run.loader.close,),
            (run.manager.close,),
            (run.manager.wait_until_finished,),
            (goodput.switch, "close"),
        ):
            cleanup.push(_closing(close, *args))
        try:
            with goodput.phase("train"):
                train_steps(run, writer, result)
                finish(run, writer, result)
        except Preempted:
            save_preempted(run, result)
    log.info("%s", summary(result.goodput, earlier))
    return result


def _closing(close: Callable, *args: Any) -> Callable:
    """An exit callback that calls `close(*args)`; while an error is already on its way out, a failure of `close` is
    logged, not raised (a full disk fails the closing writes too): the first failure is the one reported."""

    def exit_(exc_type, exc, traceback) -> bool:
        del exc, traceback
        if exc_type is None:
            close(*args)
            return False
        try:
            close(*args)
        except Exception as e:
            log.warning("while stopping: %s", str(e).strip().splitlines()[0] if str(e).strip() else repr(e))
        return False

    return exit_


def _write_goodput(run: Run, writer: MetricWriter, result: TrainResult) -> None:
    result.goodput = run.goodput.row()
    writer.write(result.steps, SPLIT, result.goodput)
