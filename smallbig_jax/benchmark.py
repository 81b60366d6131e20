"""Throughput of the model's evaluation forward and training step, per device and in total, optionally side by side
with the PyTorch reference implementation (same weights, same input) in the same run.

What is measured, and how:
- **Step time**: each step is called and blocked on (`jax.block_until_ready`; PyTorch on CPU is synchronous); after
  `warmup` untimed steps, `steps` timed steps give the median and the 10th/90th percentiles. Compilation (JAX) is
  timed apart. With `--compare-torch` the JAX and PyTorch steps alternate (JAX, torch, JAX, torch, ...), so that both
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
"""

from __future__ import annotations

import dataclasses
import os
import platform
import resource
import time
from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from smallbig_jax.config import DTYPES
from smallbig_jax.models import layers
from smallbig_jax.models.smallbig import build_model

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
    """A compiled step with its state: `fn(*state, *inputs) -> (*new_state, *outputs)`, state donated and fed back."""

    def __init__(self, fn: Callable, state: tuple, inputs: tuple, compiler_options: dict[str, str] | None = None):
        self.n_state = len(state)
        start = time.perf_counter()
        jitted = jax.jit(fn, donate_argnums=tuple(range(self.n_state)), compiler_options=compiler_options)
        self.compiled = jitted.lower(*state, *inputs).compile()
        self.compile_s = time.perf_counter() - start
        self.state, self.inputs = state, inputs
        # The cost analysis of an SPMD-partitioned program is that of one device's partition (checked: 2 CPU devices
        # at 2 clips report the FLOPs of 1 device at 1 clip, tests/test_benchmark.py).
        self.flops = _cost(self.compiled, "flops")
        self.memory = _memory_analysis_gb(self.compiled)
        self.last = None

    def __call__(self):
        out = self.compiled(*self.state, *self.inputs)
        jax.block_until_ready(out)
        self.state, self.last = tuple(out[: self.n_state]), out[self.n_state :]
        return self.last


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


def make_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D data-parallel mesh ('data',) over the first `num_devices` devices (all by default)."""
    devices = jax.devices()
    n = len(devices) if num_devices is None else num_devices
    if not 1 <= n <= len(devices):
        raise ValueError(f"asked for {n} devices, {len(devices)} available ({devices[0].platform})")
    return Mesh(np.array(devices[:n]), ("data",))


def jax_steps(model, clips: np.ndarray, labels: np.ndarray, mesh: Mesh, *, lr: float = 0.01, modes=("eval", "train")):
    """JaxStep objects for the evaluation forward and the training step (forward, backward, SGD-momentum update,
    weight decay on every parameter as in the official recipe), data-parallel over `mesh` ('data' axis)."""
    replicated = NamedSharding(mesh, P())
    batch_sharding = NamedSharding(mesh, P("data"))
    graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    model.eval()
    eval_graphdef = nnx.graphdef(model)
    model.train()
    tx = optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(lr, momentum=0.9))
    opt_state = tx.init(params)
    params, stats, opt_state = jax.device_put((params, stats, opt_state), replicated)
    x = jax.device_put(clips, batch_sharding)
    y = jax.device_put(labels, batch_sharding)

    def forward(params, stats, clips):
        return params, stats, nnx.merge(eval_graphdef, params, stats)(clips)

    def train_step(params, opt_state, stats, clips, labels):
        def loss_fn(params, stats):
            m = nnx.merge(graphdef, params, stats, copy=True)
            logits = m(clips)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            return loss, nnx.state(m, nnx.BatchStat)

        (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, new_stats, loss

    options = layers.compiler_options(mesh.devices.flat[0].platform)  # the model's own compile options
    out = {}
    if "eval" in modes:
        state = jax.tree.map(jnp.copy, (params, stats))
        out["eval forward"] = JaxStep(forward, state, (x,), options)
    if "train" in modes:
        state = (params, opt_state, stats)
        out["train step"] = JaxStep(train_step, state, (x, y), options)
    return out


def checkpoint_cost(model, mesh: Mesh) -> dict[str, float]:
    """Save and restore times and size of `model`'s train state through `smallbig_jax.checkpointing`."""
    import tempfile

    import ml_collections

    from smallbig_jax import checkpointing

    _, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    # Momentum as after training, not the all-zero arrays of step 0, which would compress away and flatter the size.
    opt_state = jax.tree.map(lambda z: jax.random.normal(jax.random.key(0), z.shape, z.dtype) * 1e-3,
                             optax.sgd(0.01, momentum=0.9).init(params))
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "batch_stats": stats, "opt_state": opt_state}
    state = jax.block_until_ready(jax.device_put(state, NamedSharding(mesh, P())))
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

    def __init__(self, jax_model, clips: np.ndarray, labels: np.ndarray, *, lr: float = 0.01, threads: int | None = None):
        import torch

        from smallbig_jax.convert import export_state_dict
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
    from smallbig_jax.data import pipeline

    where = "arrayrecord_dir" if config.data.format == "arrayrecord" else "train_list"
    if not config.data[where]:
        return {"skipped": f"config.data names no dataset (config.data.{where} is empty)"}
    host_batches = pipeline.train_dataset(config.data, global_batch_size=config.batch_size, seed=0,
                                          num_classes=config.model.num_classes)
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
    variant: str = "smallbig50",
    *,
    num_classes: int = 400,
    frames: int = 8,
    size: int = 224,
    batch_per_device: int = 2,
    num_devices: int | None = None,
    base_width: int = 64,
    dtype: str = "float32",
    steps: int = 10,
    warmup: int = 2,
    modes: Sequence[str] = ("eval", "train"),
    compare_torch: bool = False,
    torch_threads: int | None = None,
    peak_tflops_per_device: float | None = None,
    config=None,
    measure_input: bool = False,
    measure_checkpoint: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Times the evaluation forward and/or training step; returns a JSON-ready record (see `format_results`)."""
    mesh = make_mesh(num_devices)
    n_dev = mesh.size
    batch = batch_per_device * n_dev
    model = build_model(variant, num_classes, base_width=base_width, dtype=DTYPES[dtype], seed=seed)
    rng = np.random.default_rng(seed)
    clips = rng.standard_normal((batch, frames, size, size, 3), dtype=np.float32)
    labels = (np.arange(batch) % num_classes).astype(np.int32)

    torch_steps = None
    if compare_torch:
        if dtype != "float32":
            raise ValueError("--compare-torch compares float32 models only")
        torch_steps = TorchSteps(model, clips, labels, threads=torch_threads)  # weights taken before any JAX step

    device = mesh.devices.flat[0]
    peak = peak_tflops_per_device or peak_tflops(device.device_kind, dtype)
    checkpoint = checkpoint_cost(model, mesh) if measure_checkpoint else None  # before the steps donate the weights
    jsteps = jax_steps(model, clips, labels, mesh, modes=modes)
    timings: list[Timing] = []
    parity = {}
    for name, jstep in jsteps.items():
        funcs = {"jax": jstep}
        if torch_steps is not None:
            funcs["torch"] = torch_steps.eval_step if name == "eval forward" else torch_steps.train_step
        times, faults = time_interleaved(funcs, steps=steps, warmup=warmup)
        if torch_steps is not None and name == "eval forward":
            j_logits = np.asarray(jstep.last[0])
            t_logits = torch_steps.eval_step().float().numpy()
            parity["eval_logits_max_abs_diff"] = float(np.abs(j_logits - t_logits).max())
            parity["eval_logits_max_abs"] = float(np.abs(t_logits).max())
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
        "base_width": base_width,
        "num_classes": num_classes,
        "input_per_device": [batch_per_device, frames, size, size, 3],
        "global_batch": batch,
        "mesh": {"data": n_dev},
        "dtype": dtype,
        "steps": steps,
        "warmup": warmup,
        "peak_tflops_per_device": peak,
        "peak_note": None if peak else f"no peak FLOP/s known for {device.device_kind!r}; MFU not computed",
        "timings": [dataclasses.asdict(t) | {"achieved_gflops_per_device": t.achieved_gflops_per_device} for t in timings],
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
        record["input_pipeline"] = (
            input_pipeline_throughput(config) if config is not None else {"skipped": "needs --config"}
        )
    return record


def _versions(with_torch: bool) -> dict[str, str]:
    import flax

    v = {"python": platform.python_version(), "jax": jax.__version__, "flax": flax.__version__}
    if with_torch:
        import torch

        v["torch"] = torch.__version__
    return v


def format_results(record: dict[str, Any]) -> str:
    n, t, h, w, _ = record["input_per_device"]
    lines = [
        f"{record['variant']} (width {record['base_width']}) [{n},{t},{h},{w},3] per device x {record['device_count']} "
        f"{record['device_kind']} ({record['platform']}), {record['dtype']}, global batch {record['global_batch']}",
        "versions " + ", ".join(f"{k} {v}" for k, v in record["versions"].items())
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
        lines.append(f"eval logits max |JAX - PyTorch| = {p['eval_logits_max_abs_diff']:.2e} (max |logit| {p['eval_logits_max_abs']:.2f})")
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
        lines.append(f"checkpoint (params, BN statistics, SGD momentum): {c['megabytes']:.1f} MB; save blocks the loop "
                     f"{c['save_blocking_s']:.2f} s, written after {c['save_total_s']:.2f} s; restore {c['restore_s']:.2f} s")
    if "input_pipeline" in record:
        ip = record["input_pipeline"]
        lines.append(
            f"input pipeline: {ip['skipped']}" if "skipped" in ip else f"input pipeline: {ip['clips_per_s']:.1f} clips/s"
        )
    return "\n".join(lines)
