"""Throughput of the model's evaluation forward and training step, per device and in total, optionally side by side
with the PyTorch reference implementation (same weights, same input) in the same run.

The steps timed are the training run's own (`smallbig_jax.steps.train_setup`: the config's optimizer and schedule,
per-device or global BatchNorm, gradient accumulation, EMA, compile options), built from a config
(`configs/benchmark.py` for a model alone, or a training config).

What is measured, and how:
- **Step time** and **MFU** as `smallbig_jax/tools/harness.py` times them (median and 10th/90th percentiles after
  warm-up, compilation apart; the device's peak from `harness.PEAK_TFLOPS`, none for CPUs unless `peak_tflops=`).
  With `--compare_torch` the JAX and PyTorch steps alternate (JAX, torch, JAX, torch, ...), so that both see the
  same machine load; on shared machines only their *ratio* is trustworthy.
- **Clips/s**: global batch / median step time, in total and per device.
- **Memory**: the backend's `peak_bytes_in_use` where it reports one (GPU, TPU), XLA's memory analysis of the
  compiled step (arguments + outputs + temporaries), and the process's peak host RSS.
- **Checkpoint**: the training run's Orbax save of its train state (parameters, BatchNorm statistics, SGD momentum):
  how long the step loop is blocked (the write itself is asynchronous), how long until the write is complete, the
  restore time and the size on disk; the second of two saves, so that Orbax's one-time setup is not counted.
- **Input pipeline**: clips/s of the data loader alone (`input_pipeline_throughput`), so that a data bottleneck
  shows next to the model's throughput.
- **End to end** (`end_to_end`): the config's real training loader feeding the real train step, each step blocked
  on; the share of the time spent waiting for the next batch says whether training is input-bound.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from smallbig_jax import checkpointing, sharding
from smallbig_jax import steps as step_builder
from smallbig_jax.convert import export_state_dict
from smallbig_jax.data import pipeline
from smallbig_jax.tools import harness
from smallbig_jax.tools.harness import JaxStep, Timing


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
    median, p10, p90 = harness.summarize(totals)
    return {
        "clips_per_s": config.batch_size * len(totals) / sum(totals),
        "clips_per_s_per_device": config.batch_size * len(totals) / sum(totals) / mesh.size,
        "step_ms_median": median,
        "step_ms_p10": p10,
        "step_ms_p90": p90,
        "data_wait_ms_median": harness.summarize(waits)[0],
        "data_wait_share": share,
        "input_bound": share > input_bound_share,
        "steps": steps,
    }


def checkpoint_cost(setup: step_builder.TrainSetup, config: ml_collections.ConfigDict) -> dict[str, float]:
    """Save and restore times and size of the training run's state (`setup.state`, with its shardings) through
    `smallbig_jax.checkpointing`. Call it before a train step donates the state."""
    # Momentum as after training, not the all-zero arrays of step 0, which would compress away and flatter the size.
    opt_state = jax.tree.map(
        lambda z: (
            jax.random.normal(jax.random.key(0), z.shape, z.dtype) * 1e-3 if jnp.issubdtype(z, jnp.floating) else z
        ),
        setup.state["opt_state"],
    )
    state = {**setup.state, "opt_state": opt_state}
    state = jax.block_until_ready(jax.device_put(state, jax.tree.map(lambda x: x.sharding, setup.state)))
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

    @classmethod
    def of_setup(cls, setup: step_builder.TrainSetup, clips: np.ndarray, labels: np.ndarray, threads: int | None):
        """With the weights of `setup`'s state (take them before a train step donates it)."""
        jax_model = nnx.merge(setup.eval_graphdef, setup.state["params"], setup.state["batch_stats"])
        return cls(jax_model, clips, labels, threads=threads)

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


def time_steps(
    jsteps: dict[str, JaxStep],
    torch_steps: TorchSteps | None,
    *,
    clips_per_device: int,
    devices: Sequence[jax.Device],
    steps: int,
    warmup: int,
    peak: float | None,
    after_train: Callable[[JaxStep], None] | None = None,
) -> tuple[list[Timing], dict[str, float]]:
    """Each JAX step timed (in alternation with its PyTorch twin if given): the rows, and how far the two eval
    forwards' logits are apart. `after_train(step)` runs once the train step is timed; each compiled step is freed
    before the next one is timed."""
    rows, parity = [], {}
    for name, jstep in jsteps.items():
        funcs = {"jax": jstep}
        if torch_steps is not None:
            funcs["torch"] = torch_steps.eval_step if name == "eval forward" else torch_steps.train_step
        times, faults = harness.time_interleaved(funcs, steps=steps, warmup=warmup)
        if torch_steps is not None and name == "eval forward":
            j_logits = np.asarray(jstep.last)
            t_logits = torch_steps.eval_step().float().numpy()
            parity["eval_logits_max_abs_diff"] = float(np.abs(j_logits - t_logits).max())
            parity["eval_logits_max_abs"] = float(np.abs(t_logits).max())
        if after_train is not None and name == "train step":
            after_train(jstep)
        for framework in times:
            rows.append(
                harness.timing(
                    name,
                    framework,
                    times[framework],
                    faults[framework],
                    clips_per_device=clips_per_device,
                    devices=devices,
                    jstep=jstep if framework == "jax" else None,
                    peak=peak,
                )
            )
        del jsteps[name].compiled  # free the step's buffers before the next mode
    return rows, parity


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
    devices = list(mesh.devices.flat)
    config = ml_collections.ConfigDict(config.to_dict())
    config.batch_size = batch_per_device * mesh.size
    if compare_torch and config.model.dtype != "float32":
        raise ValueError("--compare_torch compares float32 models only")
    setup = step_builder.train_setup(config, mesh, harness.STEPS_PER_EPOCH)
    clips, labels = harness.random_batch(config, seed=config.seed)
    # The weights and the checkpoint are taken before the train step donates the state.
    torch_steps = TorchSteps.of_setup(setup, clips, labels, torch_threads) if compare_torch else None
    checkpoint = checkpoint_cost(setup, config) if measure_checkpoint else None
    peak = peak_tflops_per_device or harness.peak_tflops(devices[0].device_kind, config.model.dtype)
    e2e = {}

    def after_train(jstep: JaxStep) -> None:
        if measure_end_to_end:
            e2e.update(end_to_end(jstep.compiled, jstep.args[0], config, mesh, steps=steps, warmup=warmup))

    jsteps = harness.jax_steps(setup, mesh, clips, labels, modes=modes)
    rows, parity = time_steps(
        jsteps,
        torch_steps,
        clips_per_device=batch_per_device,
        devices=devices,
        steps=steps,
        warmup=warmup,
        peak=peak,
        after_train=after_train,
    )
    record = harness.machine_record(devices, with_torch=compare_torch) | model_record(config, mesh)
    record |= {
        "steps": steps,
        "warmup": warmup,
        "peak_tflops_per_device": peak,
        "peak_note": None if peak else f"no peak FLOP/s known for {devices[0].device_kind!r}; MFU not computed",
        "timings": [row.as_json() for row in rows],
        "torch_speedup_ratio": speedup_ratios(rows),  # torch median / JAX median: > 1 means JAX is faster
        "parity": parity,
        "device_peak_memory_gb": harness.device_peak_memory_gb(devices),
        "peak_host_rss_gb": harness.host_peak_rss_gb(),
    }
    if torch_steps is not None:
        record["torch_threads"] = torch_steps.threads
    if checkpoint is not None:
        record["checkpoint"] = checkpoint
    if measure_input:
        record["input_pipeline"] = harness.input_pipeline_throughput(config)
    if e2e:
        record["end_to_end"] = e2e
    return record


def model_record(config: ml_collections.ConfigDict, mesh: Mesh) -> dict[str, Any]:
    """What was timed: the model, how its step was built (`steps.train_setup`, as in training), the batch."""
    per_device = config.batch_size // mesh.size
    size = config.data.crop_size
    return {
        "variant": config.model.variant,
        "base_width": config.model.base_width,
        "num_classes": config.model.num_classes,
        "step_config": {
            "formulation": step_builder.formulation(config, mesh).name,
            "batchnorm": config.batchnorm,
            "grad_accum_steps": config.grad_accum_steps,
            "ema_decay": config.ema_decay,
            "params_sharding": config.params_sharding,
        },
        "input_per_device": [per_device, config.data.num_frames, size, size, 3],
        "global_batch": config.batch_size,
        "mesh": {"data": mesh.size},
        "dtype": config.model.dtype,
    }


def speedup_ratios(rows: Sequence[Timing]) -> dict[str, float]:
    """PyTorch median / JAX median of each step timed with both (> 1: JAX is faster; same run, interleaved)."""
    ratios = {}
    for name in ("eval forward", "train step"):
        by = {t.framework: t for t in rows if t.name == name}
        if "jax" in by and "torch" in by:
            ratios[name] = by["torch"].step_ms_median / by["jax"].step_ms_median
    return ratios


def format_results(record: dict[str, Any]) -> str:
    """The record as the text the command prints: the machine, a row per timed step, then memory, checkpoint and
    input."""
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
