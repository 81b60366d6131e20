"""The first thing to run on a new machine: does the model compute the right numbers on this device, how fast does
it train and evaluate here, and can the host's CPUs feed it (`smallbig-jax accelerator_check`).

1. **Numerics** (float32 at the highest matmul/conv precision, so that TF32 on NVIDIA GPUs does not count as an
   error), with the weights of a converted checkpoint (`--converted`) or the config's seeded initialisation:
   - eval logits on the device against the same model on the host CPU: max |difference| within
     `LOGITS_F32_BOUND` x max(1, max |logit|);
   - bfloat16 eval logits against float32 on the device: relative L2 error within `LOGITS_BF16_BOUND`;
   - one training step (`steps.train_step_fn`, the training run's step) from the same state and batch: the
     parameter update on the device against the host CPU's, relative L2 error within `UPDATE_F32_BOUND`.
   When the device *is* the CPU (CI, a laptop), the "device" side is the training run's program, sharded over
   every local device (per-device BatchNorm, donated state, the "cpu" formulation and its compile options), and the
   reference the model in the "plain" formulation as a single-device program compiled at LLVM -O0 without those
   options: a different program for the same model, so the bounds still catch a wrong sharding, fusion, layout or
   formulation, but not a wrong CPU backend. On an accelerator the reference is the "plain" formulation too.
2. **Speed**: the config's model in bfloat16, train step and eval forward at each `clips_per_device` (8, 16, 32),
   built by `steps.train_setup` and timed by the benchmark's harness (`harness.py`); a size that runs out of device
   memory is recorded and ends that mode's sweep. Clips/s per device, MFU (XLA's FLOPs of the compiled per-device
   program / step time / the device's peak), peak device memory (the backend's `peak_bytes_in_use`, a running
   maximum: sizes go up, so it is that size's peak), compile time.
3. **Input**: the training input pipeline's clips/s with every host core (`worker_count = cores`) on a dataset
   (`--data_config`, or synthetic mp4s as long as the config's clip span, at its `scale_size`), and the cores it
   would take to feed the fastest measured train step on all of the host's devices.

`run` returns one JSON-ready record; `markdown` renders it as the table BENCHMARKS.md takes.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from smallbig_jax import sharding, steps
from smallbig_jax.data import synthetic, writers
from smallbig_jax.tools import harness

LOGITS_F32_BOUND = 1e-4  # x max(1, max |logit|): float32 on the device vs the host CPU
# Relative L2 error of bfloat16 logits against float32: rounding to an 8-bit mantissa gave 0.03 on the tiny CI
# model; a broken bfloat16 path (an overflow, a cast in the wrong place) gives errors of order 1.
LOGITS_BF16_BOUND = 0.1
UPDATE_F32_BOUND = 1e-3  # relative L2 error of one step's parameter update, device vs host CPU

OOM_MARKERS = ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory", "OOM")


def is_out_of_memory(error: BaseException) -> bool:
    """Whether a compile or run failed for lack of device memory (XLA's RESOURCE_EXHAUSTED on GPU and TPU)."""
    return any(marker in str(error) for marker in OOM_MARKERS)


def _relative_l2(a: Any, b: Any) -> float:
    """||a - b|| / ||b|| over all leaves of two pytrees of arrays."""
    diff = sum(
        float(np.sum((np.asarray(x, np.float64) - np.asarray(y, np.float64)) ** 2))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    )
    norm = sum(float(np.sum(np.asarray(y, np.float64) ** 2)) for y in jax.tree.leaves(b))
    return math.sqrt(diff / norm) if norm else math.sqrt(diff)


def _host_cpu() -> jax.Device | None:
    try:
        return jax.devices("cpu")[0]
    except RuntimeError:  # JAX_PLATFORMS leaves the CPU out
        return None


def _reference(fn, args: tuple, cpu: jax.Device, same_backend: bool):
    """`fn(*args)` as one plain jitted program on the host CPU: one device, no shardings, no donation, XLA's default
    options, and when the device under test is that CPU too, LLVM at -O0. `fn` runs the model in the "plain"
    formulation, so a device running the "cpu" one is checked against the other formulation."""
    options = {"xla_backend_optimization_level": 0} if same_backend else None
    return jax.device_get(jax.jit(fn, compiler_options=options)(*jax.device_put(args, cpu)))


def numerics(config: ml_collections.ConfigDict, mesh, clips_per_device: int = 2) -> dict[str, Any]:
    """The three numerics checks of the module docstring on `mesh`, float32 config `config`."""
    cpu = _host_cpu()
    if cpu is None:
        return {"skipped": "no host CPU backend (JAX_PLATFORMS excludes cpu)", "passed": False}
    same_backend = mesh.devices.flat[0].platform == "cpu"
    config = ml_collections.ConfigDict(config.to_dict())
    config.model.dtype = "float32"
    config.batch_size = clips_per_device * mesh.size
    clips, labels = harness.random_batch(config, seed=0)
    batch = jax.device_put({"clip": clips, "label": labels}, sharding.batch_sharding(mesh))
    out: dict[str, Any] = {
        "weights": config.init_from or f"seeded initialisation (seed {config.seed})",
        "device": f"{mesh.size} x {mesh.devices.flat[0].device_kind}, the training run's jitted step",
        "reference": ("host CPU, 1 device, plain formulation, plain jit" + (" at -O0" if same_backend else "")),
        "batch": list(clips.shape),
        "bounds": {
            "logits_f32_vs_cpu": f"max|diff| <= {LOGITS_F32_BOUND} x max(1, max|logit|)",
            "logits_bf16_vs_f32": f"relative L2 <= {LOGITS_BF16_BOUND}",
            "update_f32_vs_cpu": f"relative L2 <= {UPDATE_F32_BOUND}",
        },
    }
    plain = ml_collections.ConfigDict(config.to_dict())
    plain.model.formulation = "plain"
    plain_graphdef, plain_eval_graphdef = steps.model_graphdefs(plain, mesh)
    with jax.default_matmul_precision("highest"):
        setup = steps.train_setup(config, mesh, harness.STEPS_PER_EPOCH)
        params, stats = jax.device_get((setup.state["params"], setup.state["batch_stats"]))
        logits = np.asarray(setup.eval_step(setup.state["params"], setup.state["batch_stats"], batch["clip"]))
        ref_logits = _reference(steps.eval_step_fn(plain_eval_graphdef), (params, stats, clips), cpu, same_backend)
        scale = max(1.0, float(np.abs(ref_logits).max()))
        diff = float(np.abs(logits - ref_logits).max())
        out["logits_f32_vs_cpu"] = {
            "max_abs_diff": diff,
            "max_abs_logit": float(np.abs(ref_logits).max()),
            "passed": diff <= LOGITS_F32_BOUND * scale,
        }

    # bfloat16 at the default precision, as training runs it.
    bf16 = ml_collections.ConfigDict(config.to_dict())
    bf16.model.dtype = "bfloat16"
    bf16_step = steps.make_eval_step(steps.model_graphdefs(bf16, mesh)[1], mesh, steps.formulation(bf16, mesh))
    bf16_logits = np.asarray(bf16_step(setup.state["params"], setup.state["batch_stats"], batch["clip"]), np.float32)
    rel = _relative_l2(bf16_logits, logits)
    out["logits_bf16_vs_f32"] = {"relative_l2": rel, "passed": rel <= LOGITS_BF16_BOUND}

    with jax.default_matmul_precision("highest"):
        host_state = jax.device_get(setup.state)
        new_state, metrics = setup.train_step(setup.state, batch)  # donates setup.state
        new_params, loss = jax.device_get((new_state["params"], metrics["loss"]))
        ref_state, ref_metrics = _reference(
            steps.train_step_fn(plain_graphdef, setup.tx, config, setup.lr_schedule),
            (host_state, {"clip": clips, "label": labels}),
            cpu,
            same_backend,
        )
        update = jax.tree.map(np.subtract, new_params, host_state["params"])
        ref_update = jax.tree.map(np.subtract, ref_state["params"], host_state["params"])
        rel = _relative_l2(update, ref_update)
        out["update_f32_vs_cpu"] = {
            "relative_l2": rel,
            "loss": float(loss),
            "reference_loss": float(ref_metrics["loss"]),
            "passed": rel <= UPDATE_F32_BOUND,
        }
    out["passed"] = all(out[k]["passed"] for k in ("logits_f32_vs_cpu", "logits_bf16_vs_f32", "update_f32_vs_cpu"))
    return out


def speed(
    config: ml_collections.ConfigDict,
    mesh,
    clips_per_device: Sequence[int],
    *,
    steps_: int,
    warmup: int,
    peak_tflops: float | None = None,
    setup_fn=None,
) -> dict[str, Any]:
    """Train step and eval forward of `config` at each per-device batch, one train state per size (the eval forward
    runs first: it does not donate the state); an out-of-memory compile or run is recorded
    ({"clips_per_device": c, "oom": "..."}) and ends that mode's sweep."""
    setup_fn = setup_fn or steps.train_setup
    device = mesh.devices.flat[0]
    peak = peak_tflops or harness.peak_tflops(device.device_kind, config.model.dtype)
    results: dict[str, list] = {"train step": [], "eval forward": []}

    def out_of_memory(name: str, c: int, error: Exception) -> None:
        if not is_out_of_memory(error):
            raise error
        results[name].append({"clips_per_device": c, "oom": str(error).strip().splitlines()[0][:300]})

    for c in clips_per_device:
        names = [n for n in ("eval forward", "train step") if not (results[n] and "oom" in results[n][-1])]
        if not names:
            break
        cfg = ml_collections.ConfigDict(config.to_dict())
        cfg.batch_size = c * mesh.size
        clips, labels = harness.random_batch(cfg, seed=c)
        try:
            setup = setup_fn(cfg, mesh, harness.STEPS_PER_EPOCH)
        except Exception as error:  # noqa: BLE001 - out-of-memory is recorded; anything else is re-raised
            for name in names:
                out_of_memory(name, c, error)
            continue
        for name in names:
            try:
                jstep = harness.jax_steps(setup, mesh, clips, labels, modes=(name.split()[0],))[name]
                times, faults = harness.time_interleaved({"jax": jstep}, steps=steps_, warmup=warmup)
                row = harness.timing(
                    name,
                    "jax",
                    times["jax"],
                    faults["jax"],
                    clips_per_device=c,
                    devices=list(mesh.devices.flat),
                    jstep=jstep,
                    peak=peak,
                )
                results[name].append(row.as_json())
            except Exception as error:  # noqa: BLE001
                out_of_memory(name, c, error)
            finally:
                jstep = None  # noqa: F841 - free the compiled program before the next one
        setup = None  # noqa: F841 - free the train state before the next size
    return {"peak_tflops_per_device": peak, **results}


def synthetic_data_config(out: str, like: ml_collections.ConfigDict, num_videos: int) -> ml_collections.ConfigDict:
    """Writes `num_videos` synthetic mp4s, each as long as a clip of the data config `like` spans (num_frames x
    stride frames) at its `scale_size`, and returns a data config reading them with its clip shape."""
    size = like.scale_size
    writers.write_synthetic_dataset(
        out,
        num_train=num_videos,
        num_val=1,
        num_frames=like.num_frames * like.stride,
        size=size,
        workers=max(1, min(8, os.cpu_count() or 1)),
        arrayrecord=False,
    )
    data = synthetic.data_config(out, fmt="video")
    data.num_frames, data.stride, data.crop_size = like.num_frames, like.stride, like.crop_size
    data.scale_size = data.train_short_side = size
    return data


def input_pipeline(
    data_config: ml_collections.ConfigDict,
    *,
    num_classes: int,
    batch_size: int,
    workers: int,
    batches: int,
    warmup: int,
    step_clips_per_s_per_host: float | None,
) -> dict[str, Any]:
    """The training pipeline's clips/s with `workers` grain worker processes (0: in the main process, one core),
    and the cores it would take to feed `step_clips_per_s_per_host`."""
    config = ml_collections.ConfigDict(
        {"batch_size": batch_size, "model": {"num_classes": num_classes}, "data": data_config.to_dict()}
    )
    config.data.worker_count = workers
    r = harness.input_pipeline_throughput(config, batches=batches, warmup=warmup)
    if "skipped" in r:
        return r
    cores = max(workers, 1)
    per_core = r["clips_per_s"] / cores
    r.update(cores_used=cores, clips_per_s_per_core=per_core, step_clips_per_s_per_host=step_clips_per_s_per_host)
    if step_clips_per_s_per_host:
        r["cores_needed"] = math.ceil(step_clips_per_s_per_host / per_core)
        r["host_cores"] = os.cpu_count()
        r["input_bound"] = r["cores_needed"] > (os.cpu_count() or 1)
    return r


def run(
    config: ml_collections.ConfigDict,
    *,
    clips_per_device: Sequence[int],
    steps_: int,
    warmup: int,
    numerics_config: ml_collections.ConfigDict | None = None,
    data_config: ml_collections.ConfigDict | None = None,
    input_batches: int = 10,
    input_workers: int | None = None,
    input_videos: int = 16,
    peak_tflops: float | None = None,
) -> dict[str, Any]:
    """Numerics, speed and input of `config` on this host's devices; one JSON-ready record. Without `data_config`
    the input is `input_videos` synthetic mp4s of the config's clip span (`synthetic_data_config`)."""
    started = time.perf_counter()
    devices = jax.local_devices()
    mesh = sharding.make_mesh(devices)
    device = devices[0]
    record: dict[str, Any] = harness.machine_record(devices) | {
        "model": {
            "variant": config.model.variant,
            "base_width": config.model.base_width,
            "num_classes": config.model.num_classes,
            "frames": config.data.num_frames,
            "size": config.data.crop_size,
            "dtype": config.model.dtype,
            "batchnorm": config.batchnorm,
        },
    }
    t0 = time.perf_counter()
    # On an accelerator one device (the CPU reference of a bigger batch would take minutes); on a CPU every device,
    # so that the sharded program is what is checked.
    numerics_devices = devices if device.platform == "cpu" else devices[:1]
    record["numerics"] = numerics(numerics_config or config, sharding.make_mesh(numerics_devices))
    record["numerics"]["seconds"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    record["speed"] = speed(config, mesh, clips_per_device, steps_=steps_, warmup=warmup, peak_tflops=peak_tflops)
    record["speed"]["seconds"] = time.perf_counter() - t0
    fitted = [r for r in record["speed"]["train step"] if "oom" not in r]
    best = max((r["clips_per_s_per_device"] for r in fitted), default=None)
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if data_config is None:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="accelerator_check_"))
            data_config = synthetic_data_config(tmp, config.data, input_videos)
            record["input_data"] = (
                f"{input_videos} synthetic mp4s of {data_config.num_frames * data_config.stride} frames at "
                f"{data_config.scale_size}x{data_config.scale_size}"
            )
        else:
            record["input_data"] = data_config.get("train_list") or data_config.get("arrayrecord_dir")
        workers = (os.cpu_count() or 1) if input_workers is None else input_workers
        record["input_pipeline"] = input_pipeline(
            data_config,
            num_classes=config.model.num_classes,
            batch_size=max(clips_per_device) * len(devices),
            workers=workers,
            batches=input_batches,
            warmup=1,
            step_clips_per_s_per_host=best * len(devices) if best else None,
        )
    record["input_pipeline"]["seconds"] = time.perf_counter() - t0
    record["seconds"] = time.perf_counter() - started
    record["passed"] = record["numerics"]["passed"]
    return record


def _fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def markdown(record: dict[str, Any]) -> str:
    """The record as markdown: the machine, the numerics with their bounds, a speed table, the input pipeline."""
    m, num = record["model"], record["numerics"]
    lines = [
        f"**{record['device_count']} x {record['device_kind']}** ({record['platform']}), {record['host_cores']} "
        f"host cores, load average {record['load_average'][0]:.2f}, {record['date']}; "
        + ", ".join(f"{k} {v}" for k, v in record["versions"].items()),
        f"Model: {m['variant']} (width {m['base_width']}, {m['num_classes']} classes), {m['frames']}x{m['size']}x"
        f"{m['size']}, {m['dtype']}, BatchNorm {m['batchnorm']}. Whole check: {record['seconds']:.0f} s.",
        "",
    ]
    if "skipped" in num:
        lines.append(f"Numerics: skipped ({num['skipped']})")
    else:
        lines += [
            f"Numerics ({num['weights']}; device: {num['device']}; reference: {num['reference']}; "
            f"batch {num['batch']}):",
            "",
            "| check | value | bound | result |",
            "|---|---|---|---|",
            f"| float32 logits, device vs host CPU | max abs diff {num['logits_f32_vs_cpu']['max_abs_diff']:.2e} "
            f"(max abs logit {num['logits_f32_vs_cpu']['max_abs_logit']:.3g}) | {num['bounds']['logits_f32_vs_cpu']} "
            f"| {'pass' if num['logits_f32_vs_cpu']['passed'] else 'FAIL'} |",
            f"| bfloat16 vs float32 logits, device | relative L2 {num['logits_bf16_vs_f32']['relative_l2']:.2e} "
            f"| {num['bounds']['logits_bf16_vs_f32']} | {'pass' if num['logits_bf16_vs_f32']['passed'] else 'FAIL'} |",
            f"| one train step's parameter update, device vs host CPU | relative L2 "
            f"{num['update_f32_vs_cpu']['relative_l2']:.2e} | {num['bounds']['update_f32_vs_cpu']} "
            f"| {'pass' if num['update_f32_vs_cpu']['passed'] else 'FAIL'} |",
        ]
    lines += [
        "",
        "| step | clips/device | compile s | median ms | clips/s/device | GFLOP/step/device | MFU | peak device GB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in ("train step", "eval forward"):
        for r in record["speed"][name]:
            if "oom" in r:
                lines.append(f"| {name} | {r['clips_per_device']} | out of memory | | | | | |")
                continue
            lines.append(
                f"| {name} | {r['clips_per_device']} | {r['compile_s']:.1f} | {r['step_ms_median']:.1f} | "
                f"{r['clips_per_s_per_device']:.2f} | {r['gflops_per_step_per_device']:.1f} | "
                f"{_fmt(r['mfu'], '.1%', 'no peak known')} | "
                f"{_fmt(r['device_peak_memory_gb'], '.2f', 'not reported')} |"
            )
    ip = record["input_pipeline"]
    if "skipped" in ip:
        lines.append(f"\nInput pipeline: {ip['skipped']}")
    else:
        need = (
            (
                f"; feeding the fastest train step ({ip['step_clips_per_s_per_host']:.1f} clips/s on this host) takes "
                f"{ip['cores_needed']} cores of {ip['host_cores']}" + (" (INPUT-BOUND)" if ip["input_bound"] else "")
            )
            if ip.get("cores_needed")
            else ""
        )
        lines.append(
            f"\nInput pipeline ({record['input_data']}): {ip['clips_per_s']:.1f} clips/s with "
            f"{ip['cores_used']} cores ({ip['clips_per_s_per_core']:.2f} per core){need}."
        )
    lines.append(f"\nNumerics {'passed' if record['passed'] else 'FAILED'}.")
    return "\n".join(lines)
