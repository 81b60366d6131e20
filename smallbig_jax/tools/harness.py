"""What the benchmark and the accelerator check share: the timing harness, the one row schema of a timed step
(`Timing`), MFU against the device's peak (`PEAK_TFLOPS`), the input pipeline's throughput, the machine record and
the report writer (a JSON line appended to a results file, the text printed, optionally a markdown file).

How a step is timed: each step is called and blocked on (`jax.block_until_ready`; PyTorch on CPU is synchronous);
after `warmup` untimed steps, `steps` timed steps give the median and the 10th/90th percentiles. Compilation is
timed apart. Several steps are timed in alternation (a, b, a, b, ...) so that they see the same machine load.
MFU: XLA's cost analysis of the per-device program (FLOPs of every op; conv taps on zero padding not counted, see
`smallbig_jax.summary`) / median step time / the device's peak. No peak is known for CPUs: there MFU is left empty
unless a peak is given.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import platform
import resource
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from smallbig_jax import sharding
from smallbig_jax import steps as step_builder
from smallbig_jax.data import pipeline

# The schedule's epoch length for a timed step: only the learning rate's value depends on it, not the step's cost.
STEPS_PER_EPOCH = 1000

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


# --------------------------------------------------------------------------------------------------- timing harness


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
    """A step from `smallbig_jax.steps`, compiled ahead of time for the tool's arguments. A train step's new state is
    fed back into the next call (the old one is donated); an eval step's arguments stay."""

    def __init__(self, jitted: Callable, args: tuple, feeds_state: bool):
        self.jitted = jitted  # the function the training run calls (tests check it is the same object)
        start = time.perf_counter()
        self.compiled = jitted.lower(*args).compile()
        self.compile_s = time.perf_counter() - start
        self.args, self.feeds_state = args, feeds_state
        # The cost analysis of an SPMD-partitioned program is that of one device's partition (checked: 2 CPU devices
        # at 2 clips report the FLOPs of 1 device at 1 clip, tests/test_benchmark.py).
        self.flops = float((self.compiled.cost_analysis() or {}).get("flops", float("nan")))
        self.memory = _memory_analysis_gb(self.compiled)
        self.last = None

    def __call__(self):
        out = self.compiled(*self.args)
        jax.block_until_ready(out)
        if self.feeds_state:
            self.args = (out[0], *self.args[1:])
        self.last = out
        return out


def _memory_analysis_gb(compiled) -> dict[str, float]:
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return {}
    if m is None:
        return {}
    total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
    return {"xla_compiled_total_gb": total / 1e9, "xla_temp_gb": m.temp_size_in_bytes / 1e9}


def random_batch(config: ml_collections.ConfigDict, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`config.batch_size` random clips of the config's shape (in `config.data.dtype`) and labels 0, 1, 2, ..."""
    n, t, size = config.batch_size, config.data.num_frames, config.data.crop_size
    clips = np.random.default_rng(seed).standard_normal((n, t, size, size, 3), dtype=np.float32)
    labels = (np.arange(n) % config.model.num_classes).astype(np.int32)
    return clips.astype(config.data.dtype), labels


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


# --------------------------------------------------------------------------------------------------- the row schema


@dataclasses.dataclass
class Timing:
    """One timed step: the row both tools record."""

    name: str  # "eval forward" or "train step"
    framework: str  # "jax" or "torch"
    clips_per_device: int
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
    memory: dict[str, float] = dataclasses.field(default_factory=dict)  # GB, XLA's memory analysis (JAX only)
    device_peak_memory_gb: float | None = None  # the backend's running peak after this row (GPU, TPU)

    @property
    def achieved_gflops_per_device(self) -> float | None:
        if self.gflops_per_step_per_device is None:
            return None
        return self.gflops_per_step_per_device / (self.step_ms_median / 1e3)

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"achieved_gflops_per_device": self.achieved_gflops_per_device}


def timing(
    name: str,
    framework: str,
    times_s: Sequence[float],
    faults: Sequence[int],
    *,
    clips_per_device: int,
    devices: Sequence[jax.Device],
    jstep: JaxStep | None = None,
    peak: float | None = None,
) -> Timing:
    """The row of a step timed `times_s` (with `faults` page faults) at `clips_per_device` on `devices`; `jstep`
    (a JAX step) gives its compile time, FLOPs, memory and MFU against `peak` TFLOP/s."""
    median, p10, p90 = summarize(times_s)
    flops = jstep.flops if jstep is not None else float("nan")
    return Timing(
        name=name,
        framework=framework,
        clips_per_device=clips_per_device,
        compile_s=jstep.compile_s if jstep is not None else None,
        step_ms_median=median,
        step_ms_p10=p10,
        step_ms_p90=p90,
        steps=len(times_s),
        clips_per_s=clips_per_device * len(devices) / (median / 1e3),
        clips_per_s_per_device=clips_per_device / (median / 1e3),
        gflops_per_step_per_device=flops / 1e9 if jstep is not None else None,
        mfu=mfu(flops, median / 1e3, peak) if jstep is not None else None,
        page_faults_per_step=float(np.median(faults)),
        memory=jstep.memory if jstep is not None else {},
        device_peak_memory_gb=device_peak_memory_gb(devices),
    )


# ----------------------------------------------------------------------------------------------------- input data


def dataset_missing(data: ml_collections.ConfigDict) -> str | None:
    """Why a data config names no dataset to read, or None when it names one."""
    where = "arrayrecord_dir" if data.format == "arrayrecord" else "train_list"
    return None if data[where] else f"config.data names no dataset (config.data.{where} is empty)"


def input_pipeline_throughput(config, *, batches: int = 20, warmup: int = 2) -> dict[str, Any]:
    """Clips/s of this host's training input pipeline alone (read, decode, sample, augment, batch into uint8
    arrays), without the model, for `config.data` at `config.batch_size` (smallbig_jax/data/pipeline.py)."""
    if missing := dataset_missing(config.data):
        return {"skipped": missing}
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


# ------------------------------------------------------------------------------------ the machine and the report


def machine_record(devices: Sequence[jax.Device], *, with_torch: bool = False) -> dict[str, Any]:
    """Where and when a tool ran: the devices, the host, its load, the allocator and XLA settings, the versions."""
    device = devices[0]
    versions = {"python": platform.python_version(), "jax": jax.__version__, "flax": flax.__version__}
    if with_torch:
        import torch  # optional: only when PyTorch was timed

        versions["torch"] = torch.__version__
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "device_kind": device.device_kind,
        "platform": device.platform,
        "device_count": len(devices),
        "process_count": jax.process_count(),
        "cpu": platform.processor() or platform.machine(),
        "host_cores": os.cpu_count(),
        "load_average": list(os.getloadavg()),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),  # smallbig_jax/host_memory.py
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "versions": versions,
    }


def write_report(
    record: dict[str, Any], text: str, results: str, *, markdown: str | None = None, print_record: bool = False
) -> None:
    """Prints `text` (and the JSON record with `print_record`), writes it to `markdown` if given, and appends the
    record, with the command line as typed, as one JSON line to `results`."""
    record["command"] = " ".join(["python", *sys.orig_argv[1:]])  # as typed (-m smallbig_jax, a script...)
    print(text)
    if markdown:
        pathlib.Path(markdown).write_text(text + "\n")
    path = pathlib.Path(results)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
    if print_record:
        print(json.dumps(record))
    print(f"appended to {path}")
