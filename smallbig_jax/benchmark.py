"""Throughput of the model's evaluation forward and training step, per device and in total, optionally side by side
with the PyTorch reference implementation (same weights, same input) in the same run.

The steps timed are the training run's own (`smallbig_jax.steps.train_setup`: the config's optimizer and schedule,
per-device or global BatchNorm, gradient accumulation, EMA, compile options), built from a config file or, without
one, from the official recipe for the model asked for (`benchmark_config`).

What is measured, and how:
- **Step time**: each step is called and blocked on (`jax.block_until_ready`; PyTorch on CPU is synchronous); after
  `warmup` untimed steps, `steps` timed steps give the median and the 10th/90th percentiles. Compilation (JAX) is
  timed apart. With `--compare_torch` the JAX and PyTorch steps alternate (JAX, torch, JAX, torch, ...), so that both
  see the same machine load; on shared machines only their *ratio* is trustworthy.
- **Clips/s**: global batch / median step time, in total and per device.
- **MFU**: XLA's cost analysis of the per-device program (FLOPs of every op; conv taps on zero padding not counted,
  see `smallbig_jax.summary`) / median step time / the device's peak from `PEAK_TFLOPS`. No peak is known for CPUs,
  so on CPU the MFU is left empty unless a peak is given (`peak_tflops=`).
- **Memory**: the backend's `peak_bytes_in_use` where it reports one (GPU, TPU), XLA's memory analysis of the
  compiled step (arguments + outputs + temporaries), and the process's peak host RSS.
- **Checkpoint**: the training run's Orbax save of the train state (parameters, BatchNorm statistics, SGD momentum):
  how long the step loop is blocked (the write itself is asynchronous), how long until the write is complete, the
  restore time and the size on disk; the second of two saves, so that Orbax's one-time setup is not counted.
- **Input pipeline**: clips/s of the data loader alone (`input_pipeline_throughput`), so that a data bottleneck
  shows next to the model's throughput.
- **End to end** (`end_to_end`): the config's real training loader feeding the real train step, each step blocked
  on; the share of the time spent waiting for the next batch says whether training is input-bound.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import platform
import resource
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from smallbig_jax import checkpointing, sharding
from smallbig_jax import steps as step_builder
from smallbig_jax.config import official_recipe
from smallbig_jax.convert import export_state_dict
from smallbig_jax.data import pipeline

# Peak dense matmul throughput per chip, TFLOP/s, by compute dtype. Sources: vendor datasheets (NVIDIA A100/H100/H200
# SXM; Google Cloud TPU system architecture pages). float32 on GPUs is XLA's default TF32 math for convs and dots; on
# TPUs float32 matmuls run as bfloat16 passes at default precision, so the bfloat16 peak is the ceiling.
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "TPU v4": {"bfloat16": 275.0, "float32": 275.0},
    "TPU v5 lite": {"bfloat16": 197.0, "float32": 197.0},  # v5e
    "TPU v5e": {"bfloat16": 197.0, "float32": 197.0},
    "TPU v5p": {"bfloat16": 459.0, "float32": 459.0},
    "TPU v5": {"bfloat16": 459.0, "float32": 459.0},  # v5p reports device_kind "TPU v5"
    "TPU v6 lite": {"bfloat16": 918.0, "float32": 918.0},  # v6e (Trillium)
    "TPU v6e": {"bfloat16": 918.0, "float32": 918.0},
    "A100": {"bfloat16": 312.0, "float16": 312.0, "float32": 156.0},
    "H100": {"bfloat16": 989.0, "float16": 989.0, "float32": 494.0},  # SXM; PCIe is lower (756 bf16)
    "H200": {"bfloat16": 989.0, "float16": 989.0, "float32": 494.0},
}


def peak_tflops(device_kind: str, dtype: str) -> float | None:
    """Peak TFLOP/s of one device of this kind at this compute dtype, or None if unknown (CPUs, unlisted chips).

    Matches exact TPU kinds first ("TPU v5 lite" is v5e, "TPU v5" is v5p), then GPU names by substring
    ("NVIDIA H100 80GB HBM3" -> "H100").
    """
    kind = device_kind.strip()
    table = PEAK_TFLOPS.get(kind)
    if table is None and not kind.upper().startswith("TPU"):
        for name in ("H200", "H100", "A100"):  # H200 before H100: no kind contains both
            if name in kind.upper():
                table = PEAK_TFLOPS[name]
                break
    if table is None:
        return None
    return table.get(dtype)


def mfu(flops_per_step_per_device: float, step_s: float, peak_tflops_per_device: float | None) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s per device over the device's peak (None without a peak)."""
    if not peak_tflops_per_device or not np.isfinite(flops_per_step_per_device) or step_s <= 0:
        return None
    return flops_per_step_per_device / step_s / (peak_tflops_per_device * 1e12)


@dataclasses.dataclass
class Timing:
    name: str  # "eval forward" or "train step"
    framework: str  # "jax" or "torch"
    compile_s: float | None
    step_ms_median: float
    step_ms_p10: float
    step_ms_p90: float
    steps: int
    clips_per_s: float  # total
    clips_per_s_per_device: float
    gflops_per_step_per_device: float | None  # XLA cost analysis (JAX only)
    mfu: float | None
    page_faults_per_step: float  # median minor page faults of the process during a step
    memory: dict[str, float] = dataclasses.field(default_factory=dict)  # GB

    @property
    def achieved_gflops_per_device(self) -> float | None:
        if self.gflops_per_step_per_device is None:
            return None
        return self.gflops_per_step_per_device / (self.step_ms_median / 1e3)


def summarize(times_s: Sequence[float]) -> tuple[float, float, float]:
    """(median, p10, p90) in ms, linearly interpolated between samples."""
    median, p10, p90 = np.percentile(np.asarray(times_s, np.float64) * 1e3, [50, 10, 90])
    return float(median), float(p10), float(p90)


def time_interleaved(
    steps_by_name: dict[str, Callable[[], Any]], *, steps: int, warmup: int
) -> tuple[dict[str, list[float]], dict[str, list[int]]]:
    """Calls each blocking step function in turn (a, b, a, b, ...), `warmup` untimed rounds then `steps` timed ones.

    Returns each step's seconds and the process's minor page faults during it: a step that faults is paying the
    kernel to zero fresh memory (see `smallbig_jax.host_memory`), which the time alone does not show.
    """
    times: dict[str, list[float]] = {name: [] for name in steps_by_name}
    faults: dict[str, list[int]] = {name: [] for name in steps_by_name}
    for i in range(warmup + steps):
        for name, step in steps_by_name.items():
            faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            start = time.perf_counter()
            step()
            elapsed = time.perf_counter() - start
            if i >= warmup:
                times[name].append(elapsed)
                faults[name].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before)
    return times, faults


class JaxStep:
    """A step from `smallbig_jax.steps`, compiled ahead of time for the benchmark's arguments. A train step's new
    state is fed back into the next call (the old one is donated); an eval step's arguments stay."""

    def __init__(self, jitted: Callable, args: tuple, feeds_state: bool):
        self.jitted = jitted  # the function the training run calls (tests check it is the same object)
        start = time.perf_counter()
        self.compiled = jitted.lower(*args).compile()
        self.compile_s = time.perf_counter() - start
        self.args, self.feeds_state = args, feeds_state
        # The cost analysis of an SPMD-partitioned program is that of one device's partition (checked: 2 CPU devices
        # at 2 clips report the FLOPs of 1 device at 1 clip, tests/test_benchmark.py).
        self.flops = _cost(self.compiled, "flops")
        self.memory = _memory_analysis_gb(self.compiled)
        self.last = None

    def __call__(self):
        out = self.compiled(*self.args)
        jax.block_until_ready(out)
        if self.feeds_state:
            self.args = (out[0], *self.args[1:])
        self.last = out
        return out


def _cost(compiled_or_lowered, key: str) -> float:
    cost = compiled_or_lowered.cost_analysis() or {}
    if isinstance(cost, (list, tuple)):  # older jax: one dict per program
        cost = cost[0] if cost else {}
    return float(cost.get(key, float("nan")))


def _memory_analysis_gb(compiled) -> dict[str, float]:
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return {}
    if m is None:
        return {}
    total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
    return {"xla_compiled_total_gb": total / 1e9, "xla_temp_gb": m.temp_size_in_bytes / 1e9}


def device_peak_memory_gb(devices: Sequence[jax.Device]) -> float | None:
    """Largest `peak_bytes_in_use` over the devices, where the backend reports it (not XLA:CPU)."""
    peaks = []
    for d in devices:
        try:
            stats = d.memory_stats()
        except Exception:  # noqa: BLE001
            stats = None
        if stats and "peak_bytes_in_use" in stats:
            peaks.append(stats["peak_bytes_in_use"])
    return max(peaks) / 1e9 if peaks else None


def host_peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


# ----------------------------------------------------------------------------------------------------- JAX side


def load_config(spec: str) -> ml_collections.ConfigDict:
    """get_config(arg) of a config file given as `path.py` or `path.py:arg` (ml_collections' convention)."""
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("benchmark_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)


# The schedule's epoch length for a benchmark: only the learning rate's value depends on it, not the step's cost.
STEPS_PER_EPOCH = 1000


def benchmark_config(
    variant: str = "smallbig50",
    *,
    num_classes: int = 400,
    frames: int = 8,
    size: int = 224,
    base_width: int = 64,
    dtype: str = "float32",
) -> ml_collections.ConfigDict:
    """The official recipe (`config.official_recipe`: SGD momentum, weight decay on every parameter, per-device
    BatchNorm) for a model, when no config file is given."""
    config = official_recipe(variant=variant, num_classes=num_classes, num_frames=frames, sampling="dense")
    config.model.base_width = base_width
    config.model.dtype = dtype
    config.data.crop_size = size
    return config


def jax_steps(
    setup: step_builder.TrainSetup,
    mesh: Mesh,
    clips: np.ndarray,
    labels: np.ndarray,
    *,
    modes: Sequence[str] = ("eval", "train"),
) -> dict[str, JaxStep]:
    """The evaluation forward and the training step of `setup` (`steps.train_setup`, what training runs), compiled
    for this batch, split over `mesh`'s 'data' axis."""
    batch = jax.device_put({"clip": clips, "label": labels}, sharding.batch_sharding(mesh))
    out = {}
    if "eval" in modes:  # its own copy of the weights: the train step donates the state
        weights = jax.tree.map(jnp.copy, (setup.state["params"], setup.state["batch_stats"]))
        out["eval forward"] = JaxStep(setup.eval_step, (*weights, batch["clip"]), feeds_state=False)
    if "train" in modes:
        out["train step"] = JaxStep(setup.train_step, (setup.state, batch), feeds_state=True)
    return out


def end_to_end(
    compiled_step: Callable,
    state: Any,
    config: ml_collections.ConfigDict,
    mesh: Mesh,
    *,
    steps: int,
    warmup: int,
    input_bound_share: float = 0.1,
) -> dict[str, Any]:
    """The config's training loader (`pipeline.make_train_loader`, as in training) feeding the train step.

    Each step is blocked on, so the time spent in `next(loader)` is time the device waited for data (the loader's
    workers and device prefetch keep running meanwhile). Input-bound: over `input_bound_share` of the time waiting.
    """
    loader = pipeline.recipe_train_loader(config, mesh)
    waits, totals = [], []
    try:
        for i in range(warmup + steps):
            start = time.perf_counter()
            batch = next(loader)
            got = time.perf_counter()
            state, metrics = compiled_step(state, batch)
            jax.block_until_ready((state, metrics))
            if i >= warmup:
                waits.append(got - start)
                totals.append(time.perf_counter() - start)
    finally:
        loader.close()
    share = sum(waits) / sum(totals)
    median, p10, p90 = summarize(totals)
    return {
        "clips_per_s": config.batch_size * len(totals) / sum(totals),
        "clips_per_s_per_device": config.batch_size * len(totals) / sum(totals) / mesh.size,
        "step_ms_median": median,
        "step_ms_p10": p10,
        "step_ms_p90": p90,
        "data_wait_ms_median": summarize(waits)[0],
        "data_wait_share": share,
        "input_bound": share > input_bound_share,
        "steps": steps,
    }


def checkpoint_cost(params: Any, stats: Any, mesh: Mesh) -> dict[str, float]:
    """Save and restore times and size of a train state with these weights through `smallbig_jax.checkpointing`."""
    # Momentum as after training, not the all-zero arrays of step 0, which would compress away and flatter the size.
    opt_state = jax.tree.map(
        lambda z: jax.random.normal(jax.random.key(0), z.shape, z.dtype) * 1e-3,
        optax.sgd(0.01, momentum=0.9).init(params),
    )
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "batch_stats": stats, "opt_state": opt_state}
    state = jax.block_until_ready(jax.device_put(state, sharding.replicated(mesh)))
    config = ml_collections.ConfigDict({"model": {"variant": "benchmark"}})
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        manager = checkpointing.make_manager(tmp)
        for step in (1, 2):
            started = time.perf_counter()
            checkpointing.save(manager, step, state, {}, config, force=True)
            out["save_blocking_s"] = time.perf_counter() - started
            manager.wait_until_finished()
            out["save_total_s"] = time.perf_counter() - started
        out["megabytes"] = checkpointing.size_bytes(manager, 2) / 2**20
        abstract = checkpointing.abstract_like(state, jax.tree.map(lambda x: x.sharding, state))
        started = time.perf_counter()
        jax.block_until_ready(checkpointing.restore(manager, abstract, 2)[0])
        out["restore_s"] = time.perf_counter() - started
        manager.close()
    return out


# ------------------------------------------------------------------------------------------------- PyTorch side


class TorchSteps:
    """The PyTorch reference model with the JAX model's weights, channels-last (oneDNN's fast path on CPU)."""

    def __init__(
        self, jax_model, clips: np.ndarray, labels: np.ndarray, *, lr: float = 0.01, threads: int | None = None
    ):
        import torch  # optional: only for --compare_torch

        from smallbig_jax.torch_reference import TorchSmallBigNet

        self.torch = torch
        self.threads = threads or os.cpu_count() or 1
        torch.set_num_threads(self.threads)
        t = clips.shape[1]
        model = TorchSmallBigNet(jax_model.variant, jax_model.num_classes, t, base_width=jax_model.base_width)
        model.load_state_dict(export_state_dict(jax_model), strict=True)
        self.model = model.to(memory_format=torch.channels_last_3d)
        x = torch.from_numpy(np.ascontiguousarray(clips.transpose(0, 4, 1, 2, 3)))  # NTHWC -> NCTHW
        self.x = x.contiguous(memory_format=torch.channels_last_3d)
        self.y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        self.opt = torch.optim.SGD(self.model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
        self.loss_fn = torch.nn.CrossEntropyLoss()

    def eval_step(self):
        self.model.eval()
        with self.torch.inference_mode():
            return self.model(self.x)

    def train_step(self):
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model(self.x), self.y)
        loss.backward()
        self.opt.step()
        return loss.detach()


# ----------------------------------------------------------------------------------------------------- input data


def input_pipeline_throughput(config, *, batches: int = 20, warmup: int = 2) -> dict[str, Any]:
    """Clips/s of this host's training input pipeline alone (read, decode, sample, augment, batch into uint8
    arrays), without the model, for `config.data` at `config.batch_size` (smallbig_jax/data/pipeline.py)."""
    where = "arrayrecord_dir" if config.data.format == "arrayrecord" else "train_list"
    if not config.data[where]:
        return {"skipped": f"config.data names no dataset (config.data.{where} is empty)"}
    host_batches = pipeline.train_dataset(
        config.data, global_batch_size=config.batch_size, seed=0, num_classes=config.model.num_classes
    )
    return time_iterator(host_batches, batches=batches, warmup=warmup)


def time_iterator(iterable: Iterable, *, batches: int, warmup: int = 2) -> dict[str, Any]:
    """Clips/s of drawing `batches` batches from an iterable after `warmup` batches (time to first batch apart)."""
    it = iter(iterable)
    start = time.perf_counter()
    first = next(it)
    first_s = time.perf_counter() - start
    for _ in range(warmup):
        next(it)
    clips, times = 0, []
    for _ in range(batches):
        start = time.perf_counter()
        batch = next(it)
        times.append(time.perf_counter() - start)
        clips += _batch_size(batch)
    total = sum(times)
    median, p10, p90 = summarize(times)
    return dict(
        clips_per_s=clips / total if total > 0 else float("inf"),
        batch_ms_median=median,
        batch_ms_p10=p10,
        batch_ms_p90=p90,
        batches=batches,
        first_batch_s=first_s,
        batch_size=_batch_size(first),
    )


def _batch_size(batch) -> int:
    if isinstance(batch, dict):
        batch = batch.get("clip", next(iter(batch.values())))
    elif isinstance(batch, (tuple, list)):
        batch = batch[0]
    return int(np.shape(batch)[0])


# ----------------------------------------------------------------------------------------------------------- main


def benchmark_model(
    config: ml_collections.ConfigDict,
    *,
    batch_per_device: int = 2,
    num_devices: int | None = None,
    steps: int = 10,
    warmup: int = 2,
    modes: Sequence[str] = ("eval", "train"),
    compare_torch: bool = False,
    torch_threads: int | None = None,
    peak_tflops_per_device: float | None = None,
    measure_input: bool = False,
    measure_checkpoint: bool = False,
    measure_end_to_end: bool = False,
) -> dict[str, Any]:
    """Times `config`'s evaluation forward and/or training step, as training builds them, at `batch_per_device`
    clips per device; returns a JSON-ready record (see `format_results`)."""
    mesh = sharding.make_mesh(num_devices=num_devices)
    n_dev = mesh.size
    batch = batch_per_device * n_dev
    config = ml_collections.ConfigDict(config.to_dict())
    config.batch_size = batch
    variant, num_classes = config.model.variant, config.model.num_classes
    frames, size, dtype = config.data.num_frames, config.data.crop_size, config.model.dtype
    setup = step_builder.train_setup(config, mesh, STEPS_PER_EPOCH)
    rng = np.random.default_rng(config.seed)
    clips = rng.standard_normal((batch, frames, size, size, 3), dtype=np.float32).astype(config.data.dtype)
    labels = (np.arange(batch) % num_classes).astype(np.int32)

    torch_steps = None
    if compare_torch:
        if dtype != "float32":
            raise ValueError("--compare_torch compares float32 models only")
        jax_model = nnx.merge(setup.eval_graphdef, setup.state["params"], setup.state["batch_stats"])
        torch_steps = TorchSteps(jax_model, clips, labels, threads=torch_threads)  # weights taken before any JAX step

    device = mesh.devices.flat[0]
    peak = peak_tflops_per_device or peak_tflops(device.device_kind, dtype)
    checkpoint = None
    if measure_checkpoint:  # before the train step donates the weights
        checkpoint = checkpoint_cost(setup.state["params"], setup.state["batch_stats"], mesh)
    jsteps = jax_steps(setup, mesh, clips, labels, modes=modes)
    timings: list[Timing] = []
    parity = {}
    e2e = None
    for name, jstep in jsteps.items():
        funcs = {"jax": jstep}
        if torch_steps is not None:
            funcs["torch"] = torch_steps.eval_step if name == "eval forward" else torch_steps.train_step
        times, faults = time_interleaved(funcs, steps=steps, warmup=warmup)
        if torch_steps is not None and name == "eval forward":
            j_logits = np.asarray(jstep.last)
            t_logits = torch_steps.eval_step().float().numpy()
            parity["eval_logits_max_abs_diff"] = float(np.abs(j_logits - t_logits).max())
            parity["eval_logits_max_abs"] = float(np.abs(t_logits).max())
        if measure_end_to_end and name == "train step":
            e2e = end_to_end(jstep.compiled, jstep.args[0], config, mesh, steps=steps, warmup=warmup)
        for framework, ts in times.items():
            median, p10, p90 = summarize(ts)
            is_jax = framework == "jax"
            flops = jstep.flops if is_jax else float("nan")
            timings.append(
                Timing(
                    name=name,
                    framework=framework,
                    compile_s=jstep.compile_s if is_jax else None,
                    step_ms_median=median,
                    step_ms_p10=p10,
                    step_ms_p90=p90,
                    steps=steps,
                    clips_per_s=batch / (median / 1e3),
                    clips_per_s_per_device=batch_per_device / (median / 1e3),
                    gflops_per_step_per_device=flops / 1e9 if is_jax else None,
                    mfu=mfu(flops, median / 1e3, peak) if is_jax else None,
                    page_faults_per_step=float(np.median(faults[framework])),
                    memory=jstep.memory if is_jax else {},
                )
            )
        del jsteps[name].compiled  # free the step's buffers before the next mode
    ratios = {}
    for name in ("eval forward", "train step"):
        by = {t.framework: t for t in timings if t.name == name}
        if "jax" in by and "torch" in by:
            # > 1: JAX is faster. Same run, interleaved steps.
            ratios[name] = by["torch"].step_ms_median / by["jax"].step_ms_median

    record = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "device_kind": device.device_kind,
        "platform": device.platform,
        "device_count": n_dev,
        "process_count": jax.process_count(),
        "cpu": platform.processor() or platform.machine(),
        "host_cores": os.cpu_count(),
        "load_average": list(os.getloadavg()),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),  # smallbig_jax/host_memory.py
        "versions": _versions(compare_torch),
        "variant": variant,
        "base_width": config.model.base_width,
        "num_classes": num_classes,
        # How the step was built (steps.train_setup), as in training.
        "step_config": {
            "formulation": step_builder.formulation(config, mesh).name,
            "batchnorm": config.batchnorm,
            "grad_accum_steps": config.grad_accum_steps,
            "ema_decay": config.ema_decay,
            "params_sharding": config.params_sharding,
        },
        "input_per_device": [batch_per_device, frames, size, size, 3],
        "global_batch": batch,
        "mesh": {"data": n_dev},
        "dtype": dtype,
        "steps": steps,
        "warmup": warmup,
        "peak_tflops_per_device": peak,
        "peak_note": None if peak else f"no peak FLOP/s known for {device.device_kind!r}; MFU not computed",
        "timings": [
            dataclasses.asdict(t) | {"achieved_gflops_per_device": t.achieved_gflops_per_device} for t in timings
        ],
        "torch_speedup_ratio": ratios,  # torch median / JAX median: > 1 means JAX is faster
        "parity": parity,
        "device_peak_memory_gb": device_peak_memory_gb(list(mesh.devices.flat)),
        "peak_host_rss_gb": host_peak_rss_gb(),
    }
    if torch_steps is not None:
        record["torch_threads"] = torch_steps.threads
    if checkpoint is not None:
        record["checkpoint"] = checkpoint
    if measure_input:
        record["input_pipeline"] = input_pipeline_throughput(config)
    if e2e is not None:
        record["end_to_end"] = e2e
    return record


def _versions(with_torch: bool) -> dict[str, str]:
    v = {"python": platform.python_version(), "jax": jax.__version__, "flax": flax.__version__}
    if with_torch:
        import torch  # optional: only when PyTorch was timed

        v["torch"] = torch.__version__
    return v


def format_results(record: dict[str, Any]) -> str:
    n, t, h, w, _ = record["input_per_device"]
    lines = [
        f"{record['variant']} (width {record['base_width']}) [{n},{t},{h},{w},3] per device x {record['device_count']} "
        f"{record['device_kind']} ({record['platform']}), {record['dtype']}, global batch {record['global_batch']}",
        "versions "
        + ", ".join(f"{k} {v}" for k, v in record["versions"].items())
        + f"; load average {record['load_average'][0]:.2f}"
        + f"; GLIBC_TUNABLES {record.get('glibc_tunables') or 'unset (glibc defaults)'}",
        f"{'':13} {'':6} {'compile s':>9} {'median ms':>10} {'p10 ms':>9} {'p90 ms':>9} {'clips/s':>8} "
        f"{'/device':>8} {'GFLOP/s':>8} {'MFU':>6} {'faults':>8}",
    ]
    for r in record["timings"]:
        compile_s = f"{r['compile_s']:.1f}" if r["compile_s"] is not None else "-"
        gf = r["achieved_gflops_per_device"]
        gf_s = f"{gf:.1f}" if gf is not None else "-"
        mfu_s = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
        lines.append(
            f"{r['name']:13} {r['framework']:6} {compile_s:>9} {r['step_ms_median']:>10.1f} {r['step_ms_p10']:>9.1f} "
            f"{r['step_ms_p90']:>9.1f} {r['clips_per_s']:>8.2f} {r['clips_per_s_per_device']:>8.2f} "
            f"{gf_s:>8} {mfu_s:>6} {r['page_faults_per_step']:>8.0f}"
        )
    for name, ratio in record["torch_speedup_ratio"].items():
        lines.append(f"{name}: PyTorch median / JAX median = {ratio:.2f} ({'JAX' if ratio >= 1 else 'PyTorch'} faster)")
    if record["parity"]:
        p = record["parity"]
        lines.append(
            f"eval logits max |JAX - PyTorch| = {p['eval_logits_max_abs_diff']:.2e} "
            f"(max |logit| {p['eval_logits_max_abs']:.2f})"
        )
    if record["peak_note"]:
        lines.append(record["peak_note"])
    mem = [f"peak host RSS {record['peak_host_rss_gb']:.2f} GB"]
    if record["device_peak_memory_gb"] is not None:
        mem.append(f"peak device memory {record['device_peak_memory_gb']:.2f} GB")
    for r in record["timings"]:
        if r["memory"]:
            mem.append(f"XLA {r['name']} {r['memory']['xla_compiled_total_gb']:.2f} GB")
    lines.append("; ".join(mem))
    if "checkpoint" in record:
        c = record["checkpoint"]
        lines.append(
            f"checkpoint (params, BN statistics, SGD momentum): {c['megabytes']:.1f} MB; save blocks the loop "
            f"{c['save_blocking_s']:.2f} s, written after {c['save_total_s']:.2f} s; restore {c['restore_s']:.2f} s"
        )
    if "input_pipeline" in record:
        ip = record["input_pipeline"]
        lines.append(
            f"input pipeline: {ip['skipped']}"
            if "skipped" in ip
            else f"input pipeline: {ip['clips_per_s']:.1f} clips/s"
        )
    if "end_to_end" in record:
        e = record["end_to_end"]
        lines.append(
            f"end to end (loader + train step): {e['clips_per_s']:.2f} clips/s, "
            f"median step {e['step_ms_median']:.1f} ms "
            f"of which waiting for data {e['data_wait_ms_median']:.1f} ms ({e['data_wait_share']:.0%} of the time): "
            + ("INPUT-BOUND" if e["input_bound"] else "not input-bound")
        )
    return "\n".join(lines)
