"""Timing of the model's evaluation forward and training step at an exact shape: compile time apart from
steady-state step time (median and spread over many steps after warm-up), clips/s and achieved FLOP/s."""

from __future__ import annotations

import dataclasses
import platform
import resource
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from smallbig_jax.config import DTYPES
from smallbig_jax.models.smallbig import build_model


@dataclasses.dataclass
class Timing:
    name: str
    compile_s: float
    step_ms_median: float
    step_ms_p10: float
    step_ms_p90: float
    steps: int
    clips_per_s: float
    xla_gflops_per_step: float

    @property
    def achieved_gflops(self) -> float:
        return self.xla_gflops_per_step / (self.step_ms_median / 1e3)


def time_compiled(
    name: str, fn: Callable, args: tuple, *, batch: int, steps: int, warmup: int, donate: int = 0
) -> Timing:
    """Compiles `fn(*args)` (timed apart), then times `steps` calls after `warmup` calls, blocking on each.

    With `donate=k`, the first k arguments are donated and `fn` returns their updated values first: they feed the
    next call, as in a training loop.
    """
    start = time.perf_counter()
    compiled = jax.jit(fn, donate_argnums=tuple(range(donate))).lower(*args).compile()
    compile_s = time.perf_counter() - start
    flops = (compiled.cost_analysis() or {}).get("flops", float("nan"))
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        out = compiled(*args)
        jax.block_until_ready(out)
        if i >= warmup:
            times.append(time.perf_counter() - start)
        if donate:
            args = (*out[:donate], *args[donate:])
    times_ms = sorted(t * 1e3 for t in times)
    median = statistics.median(times_ms)
    return Timing(
        name=name,
        compile_s=compile_s,
        step_ms_median=median,
        step_ms_p10=times_ms[int(0.1 * (len(times_ms) - 1))],
        step_ms_p90=times_ms[int(0.9 * (len(times_ms) - 1))],
        steps=steps,
        clips_per_s=batch / (median / 1e3),
        xla_gflops_per_step=flops / 1e9,
    )


def benchmark_model(
    variant: str = "smallbig50",
    *,
    num_classes: int = 400,
    frames: int = 8,
    size: int = 224,
    batch: int = 2,
    dtype: str = "float32",
    steps: int = 10,
    warmup: int = 2,
) -> dict[str, Any]:
    """Eval forward and train step (forward, backward, SGD-momentum update) of one model on one device."""
    model = build_model(variant, num_classes, dtype=DTYPES[dtype])
    graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    model.eval()
    eval_graphdef = nnx.graphdef(model)
    clips = jax.random.normal(jax.random.key(0), (batch, frames, size, size, 3), jnp.float32)
    labels = jnp.arange(batch) % num_classes
    tx = optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(0.01, momentum=0.9))
    opt_state = tx.init(params)

    def forward(params, stats, clips):
        return nnx.merge(eval_graphdef, params, stats)(clips)

    def train_step(params, opt_state, stats, clips, labels):
        def loss_fn(params, stats):
            m = nnx.merge(graphdef, params, stats, copy=True)
            logits = m(clips)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            return loss, nnx.state(m, nnx.BatchStat)

        (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, new_stats, loss

    timing = dict(batch=batch, steps=steps, warmup=warmup)
    results = [
        time_compiled("eval forward", forward, (params, stats, clips), **timing),
        time_compiled("train step", train_step, (params, opt_state, stats, clips, labels), donate=3, **timing),
    ]
    device = jax.devices()[0]
    return {
        "date": time.strftime("%Y-%m-%d"),
        "device_kind": device.device_kind,
        "platform": device.platform,
        "device_count": jax.device_count(),
        "cpu": platform.processor() or platform.machine(),
        "jax": jax.__version__,
        "variant": variant,
        "input": [batch, frames, size, size, 3],
        "dtype": dtype,
        "timings": [dataclasses.asdict(r) | {"achieved_gflops": r.achieved_gflops} for r in results],
        "peak_host_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def format_results(record: dict[str, Any]) -> str:
    n, t, h, w, _ = record["input"]
    lines = [
        f"{record['variant']} [{n},{t},{h},{w},3] {record['dtype']} on {record['device_count']} x "
        f"{record['device_kind']} ({record['platform']}), jax {record['jax']}",
        f"{'':14} {'compile s':>10} {'median ms':>10} {'p10 ms':>8} {'p90 ms':>8} {'clips/s':>8} {'GFLOP/s':>8}",
    ]
    for r in record["timings"]:
        lines.append(
            f"{r['name']:14} {r['compile_s']:>10.1f} {r['step_ms_median']:>10.1f} {r['step_ms_p10']:>8.1f} "
            f"{r['step_ms_p90']:>8.1f} {r['clips_per_s']:>8.2f} {r['achieved_gflops']:>8.1f}"
        )
    lines.append(f"peak host RSS {record['peak_host_rss_gb']:.2f} GB")
    return "\n".join(lines)
