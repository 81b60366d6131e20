r"""Where a JAX step's time goes on CPU: step time, page faults, time per source line; and a BatchNorm-sum kernel.

  python benchmarks/cpu_step_profile.py --mode train                   # step time, page faults, kernel time
  SMALLBIG_KEEP_HOST_MEMORY=0 python benchmarks/cpu_step_profile.py    # the same under glibc's defaults
  python benchmarks/cpu_step_profile.py --mode eval --by_line 25       # + the 25 source lines taking most time
  python benchmarks/cpu_step_profile.py --by_line 20 --torch          # JAX and PyTorch time by op class
  python benchmarks/cpu_step_profile.py --kernels                      # BN sums over [1, N, C] and [N, C]

The step is the training run's (`smallbig_jax.steps.train_setup` through `smallbig_jax.tools.harness.jax_steps`),
for SmallBig-R50, 8x224x224, batch 2, float32, the official recipe: `--config`, by default
`configs/benchmark.py:smallbig50` as for `smallbig-jax benchmark`.
`--by_line` traces one step with `jax.profiler`, reads the trace back with `jax.profiler.ProfileData` and maps each
XLA fusion to the innermost smallbig_jax source line in the optimised HLO dump (thread time, summed over threads).
`--kernels` times the microbenchmark behind BENCHMARKS.md's round 2, row 11; the convs' microbenchmarks are in
`benchmarks/conv_formulations.py`.
"""

from smallbig_jax import cli
from smallbig_jax.host_memory import keep_freed_host_memory

keep_freed_host_memory()

import collections
import glob
import inspect
import re
import resource
import statistics
import tempfile
import time

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/benchmark.py:smallbig50", "The model (and its recipe).")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"], "Which step.")
_STEPS = flags.DEFINE_integer("steps", 3, "Timed steps after one warm-up step.")
_BY_LINE = flags.DEFINE_integer("by_line", 0, "Also print this many source lines with the most XLA time.")
_TORCH = flags.DEFINE_boolean("torch", False, "Also profile PyTorch's train step with the same weights by op class.")
_KERNELS = flags.DEFINE_boolean("kernels", False, "Run the kernel microbenchmarks instead of a model step.")


def _median_ms(fn, *args, steps: int = 10) -> float:
    import jax

    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def kernels() -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(0)
    n, c = 50176, 64  # layer1 at 8x224x224, batch 2: 2*8*56*56 elements of 64 channels
    x, g = (jnp.asarray(rng.standard_normal((1, n, c), dtype=np.float32)) for _ in range(2))
    sum_3d = jax.jit(lambda x, g: jnp.sum(g * x, axis=1))
    sum_2d = jax.jit(lambda x, g: jnp.sum((g * x).reshape(n, c), axis=0))
    print(
        f"BN sum of g*x over {n} elements, {c} channels: [1, N, C] over axis 1 {_median_ms(sum_3d, x, g):.2f} ms, "
        f"[N, C] over axis 0 {_median_ms(sum_2d, x, g):.2f} ms"
    )


HELPERS = {"_stored", "_cut", "_shift", "conv2d", "_sum_per_group", "pool_taps", "first_maximum", "__call__"}


def _op_class(text: str, functions: list[str], path: str, backward: bool) -> str:
    """The op class of one timed HLO instruction (`text`: its line and, for a fusion, its fused computation)."""
    if "convolution(" in text:
        if not backward:
            return "conv forward"
        out = re.search(r"dim_labels=\S*->(\w+)", text)
        return "conv input-grad" if out and out.group(1).startswith("b") else "conv kernel-grad"
    if " dot(" in text:
        if not backward:
            return "dot forward (1x1 convs, head)"
        return "dot kernel-grad" if "lhs_contracting_dims={0}" in text else "dot input-grad"
    if "optax" in path or "optim" in path:
        return "optimizer"
    direction = "backward" if backward else "forward"
    for fn in functions:  # innermost first
        if "batch_norm" in fn or "BatchNorm" in fn:
            return f"BatchNorm {direction}"
        if "pool" in fn or "frames" in fn:
            return f"max-pools {direction}"
        if fn.split(".")[-1] not in HELPERS:
            return f"elementwise {direction}"
    return "other (loss, head, copies)"


def time_per_line(dump_path: str, durations: dict[str, int], limit: int, step_s: float) -> None:
    """Prints XLA thread time per op class, then per (innermost smallbig_jax source line, forward/backward, op)."""
    text = open(dump_path).read()
    table = lambda name, end: text.split(name)[1].split(end)[0]  # noqa: E731
    files = dict(re.findall(r'^(\d+) "(.*)"$', table("FileNames", "FunctionNames"), re.M))
    functions = dict(re.findall(r'^(\d+) "(.*)"$', table("FunctionNames", "FileLocations"), re.M))
    locations = {
        m[0]: (m[1], m[2], m[3])
        for m in re.findall(r"^(\d+) \{file_name_id=(\d+) function_name_id=(\d+) line=(\d+)", text, re.M)
    }
    frames = {
        m[0]: (m[1], m[2]) for m in re.findall(r"^(\d+) \{file_location_id=(\d+) parent_frame_id=(\d+)", text, re.M)
    }
    from smallbig_jax.models import layers

    bn_source, bn_first = inspect.getsourcelines(layers.BatchNorm)
    bn_lines = range(bn_first, bn_first + len(bn_source))
    bodies = dict(re.findall(r"^(?:%|)([\w.-]+) [^\n]*\{\n(.*?)\n\}", text, re.M | re.S))

    def source(frame_id):
        """(innermost smallbig_jax file:line, smallbig_jax function names innermost first, outermost path)."""
        seen, where, names, path = set(), "elsewhere", [], ""
        while frame_id in frames and frame_id not in seen:
            seen.add(frame_id)
            location, frame_id = frames[frame_id]
            file_id, function_id, line = locations[location]
            path = files[file_id]
            if "smallbig_jax/" in path:
                if where == "elsewhere":
                    where = f"{path.split('smallbig_jax/')[-1]}:{line}"
                name = functions.get(function_id, "?")
                in_bn = path.endswith("models/layers.py") and int(line) in bn_lines
                names.append("BatchNorm" if in_bn else name)
            elif where == "elsewhere" and "optax" in path:
                where = "optax"
        return where, names, path

    by_line, by_class = collections.Counter(), collections.Counter()
    pattern = r'^\s+(?:ROOT )?%(\S+) = (.*?metadata=\{op_name="([^"]*)" stack_frame_id=(\d+).*)$'
    for name, line, op, frame_id in re.findall(pattern, text, re.M):
        if name not in durations:
            continue
        where, names, path = source(frame_id)
        called = re.search(r"calls=%?([\w.-]+)", line)
        body = bodies.get(called.group(1), "") if called else ""
        backward = "transpose(" in op or any(n.endswith("_bwd") for n in names)
        by_class[_op_class(line + body, names, where if where == "optax" else path, backward)] += durations[name]
        by_line[(where, "backward" if backward else "forward", op.split("/")[-1])] += durations[name]
    total = sum(by_class.values())
    print(
        f"XLA thread time {total / 1e9:.2f} s for a {step_s:.2f} s step; by op class (thread s, share, share of "
        f"the step in s):"
    )
    for cls, ns in sorted(by_class.items(), key=lambda kv: -kv[1]):
        print(f"  {cls:28} {ns / 1e9:6.2f} s  {ns / total:6.1%}  {ns / total * step_s:6.2f} s")
    print("by source line:")
    for (where, direction, op), ns in by_line.most_common(limit):
        print(f"{ns / 1e6:8.0f} ms  {where:28} {direction:8} {op}")


def torch_profile(ts) -> None:
    """PyTorch's train step (`benchmark.TorchSteps`: same weights, channels_last_3d) under `torch.profiler`, self
    time by op class."""
    import torch

    for _ in range(2):
        ts.train_step()
    start = time.perf_counter()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        ts.train_step()
    step_s = time.perf_counter() - start
    by_class = collections.Counter()
    for event in prof.key_averages(group_by_input_shape=True):
        name, shapes = event.key, event.input_shapes
        weight = next((s for s in shapes if isinstance(s, list) and len(s) == 5 and s[0] != 2), None)
        kind = "1x1" if weight and weight[2:] == [1, 1, 1] else "kxk"
        if name in ("aten::mkldnn_convolution", "aten::_convolution", "aten::convolution", "aten::conv3d"):
            cls = f"conv forward {kind}"
        elif name in ("aten::convolution_backward", "aten::mkldnn_convolution_backward"):
            cls = f"conv backward {kind} (input+kernel grad)"
        elif "batch_norm" in name:
            cls = "BatchNorm " + ("backward" if "backward" in name else "forward")
        elif "max_pool" in name:
            cls = "max-pools " + ("backward" if "backward" in name else "forward")
        elif "foreach" in name or "Optimizer" in name or "sgd" in name.lower():
            cls = "optimizer"
        elif name.startswith("aten::"):
            cls = "elementwise and other aten ops"
        else:
            cls = "other (autograd engine, python)"
        by_class[cls] += event.self_cpu_time_total
    total = sum(by_class.values())
    print(f"PyTorch train step {step_s:.2f} s (profiled); self time by op class:")
    for cls, us in sorted(by_class.items(), key=lambda kv: -kv[1]):
        print(f"  {cls:40} {us / 1e6:6.2f} s  {us / total:6.1%}")


def main(argv):
    del argv
    if _KERNELS.value:
        return kernels()
    import os

    dump_dir = tempfile.mkdtemp()
    if _BY_LINE.value:
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_dump_to={dump_dir}"
    import jax

    from smallbig_jax import sharding, steps
    from smallbig_jax.tools import benchmark, harness

    config = _CONFIG.value
    config.batch_size = 2
    mesh = sharding.make_mesh(num_devices=1)
    setup = steps.train_setup(config, mesh, harness.STEPS_PER_EPOCH)
    clips, labels = harness.random_batch(config, seed=0)
    name = "train step" if _MODE.value == "train" else "eval forward"
    torch_steps = None
    if _TORCH.value:  # the weights, before the train step donates them
        from flax import nnx

        model = nnx.merge(setup.eval_graphdef, setup.state["params"], setup.state["batch_stats"])
        torch_steps = benchmark.TorchSteps(model, clips, labels)
    step = harness.jax_steps(setup, mesh, clips, labels, modes=(_MODE.value,))[name]
    step()
    print(f"{name}: compiled in {step.compile_s:.1f} s; GLIBC_TUNABLES {os.environ.get('GLIBC_TUNABLES')}")
    times = []
    for _ in range(_STEPS.value):
        before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        step()
        elapsed, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
        times.append(elapsed)
        print(
            f"  {elapsed:.2f} s  page faults {after.ru_minflt - before.ru_minflt}  "
            f"kernel time {after.ru_stime - before.ru_stime:.2f} s  user time {after.ru_utime - before.ru_utime:.2f} s"
        )
    if _BY_LINE.value:
        trace_dir = tempfile.mkdtemp()
        jax.profiler.start_trace(trace_dir)
        step()
        jax.profiler.stop_trace()
        profile = jax.profiler.ProfileData.from_file(
            sorted(glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True))[-1]
        )
        durations = collections.Counter()
        for plane in profile.planes:
            for line in plane.lines:
                for event in line.events:
                    durations[event.name] += event.duration_ns
        module = "jit_train_step" if _MODE.value == "train" else "jit_eval_step"
        time_per_line(
            sorted(glob.glob(f"{dump_dir}/*{module}.cpu_after_optimizations.txt"))[-1],
            durations,
            _BY_LINE.value,
            statistics.median(times),
        )
    if torch_steps is not None:
        torch_profile(torch_steps)


if __name__ == "__main__":
    cli.choose_jax_platforms()  # the aot extra's TPU and CUDA plugins left out on a CPU-only machine
    app.run(main)
