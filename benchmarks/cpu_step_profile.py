r"""Where a JAX step's time goes on CPU: step time, page faults, time per source line; and a BatchNorm-sum kernel.

  python benchmarks/cpu_step_profile.py --mode train                   # step time, page faults, kernel time
  SMALLBIG_KEEP_HOST_MEMORY=0 python benchmarks/cpu_step_profile.py    # the same under glibc's defaults
  python benchmarks/cpu_step_profile.py --mode eval --by_line 25       # + the 25 source lines taking most time
  python benchmarks/cpu_step_profile.py --kernels                      # BN sums over [1, N, C] and [N, C]

The step is the training run's (`smallbig_jax.steps.train_setup` through `smallbig_jax.benchmark.jax_steps`),
for SmallBig-R50, 8x224x224, batch 2, float32, the official recipe, as scripts/benchmark.py without --config.
`--by_line` traces one step with `jax.profiler`, reads the trace back with `jax.profiler.ProfileData` and maps each
XLA fusion to the innermost smallbig_jax source line in the optimised HLO dump (thread time, summed over threads).
`--kernels` times the microbenchmark behind BENCHMARKS.md's round 2, row 11; the convs' microbenchmarks are in
`benchmarks/conv_formulations.py`.
"""

from smallbig_jax.host_memory import keep_freed_host_memory

keep_freed_host_memory()

import collections
import glob
import re
import resource
import statistics
import tempfile
import time

from absl import app, flags

_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"], "Which step.")
_STEPS = flags.DEFINE_integer("steps", 3, "Timed steps after one warm-up step.")
_BY_LINE = flags.DEFINE_integer("by_line", 0, "Also print this many source lines with the most XLA time.")
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


def time_per_line(dump_path: str, durations: dict[str, int], limit: int) -> None:
    """Prints XLA thread time per (innermost smallbig_jax source line, forward/backward, op)."""
    text = open(dump_path).read()
    table = lambda name, end: text.split(name)[1].split(end)[0]  # noqa: E731
    files = dict(re.findall(r'^(\d+) "(.*)"$', table("FileNames", "FunctionNames"), re.M))
    locations = {
        m[0]: (m[1], m[2])
        for m in re.findall(r"^(\d+) \{file_name_id=(\d+) function_name_id=\d+ line=(\d+)", text, re.M)
    }
    frames = {
        m[0]: (m[1], m[2]) for m in re.findall(r"^(\d+) \{file_location_id=(\d+) parent_frame_id=(\d+)", text, re.M)
    }

    def source(frame_id):
        seen = set()
        while frame_id in frames and frame_id not in seen:
            seen.add(frame_id)
            location, frame_id = frames[frame_id]
            path, line = files[locations[location][0]], locations[location][1]
            if "smallbig_jax/" in path:
                return f"{path.split('smallbig_jax/')[-1]}:{line}"
        return "elsewhere"

    totals = collections.Counter()
    pattern = r'^\s+(?:ROOT )?%(\S+) = .*?metadata=\{op_name="([^"]*)" stack_frame_id=(\d+)'
    for name, op, frame_id in re.findall(pattern, text, re.M):
        if name in durations:
            direction = "backward" if "transpose(" in op else "forward"
            totals[(source(frame_id), direction, op.split("/")[-1])] += durations[name]
    print(f"XLA thread time {sum(totals.values()) / 1e9:.2f} s; by source line:")
    for (where, direction, op), ns in totals.most_common(limit):
        print(f"{ns / 1e6:8.0f} ms  {where:28} {direction:8} {op}")


def main(argv):
    del argv
    if _KERNELS.value:
        return kernels()
    import os

    dump_dir = tempfile.mkdtemp()
    if _BY_LINE.value:
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_dump_to={dump_dir}"
    import jax
    import numpy as np

    from smallbig_jax import benchmark, sharding, steps

    config = benchmark.benchmark_config("smallbig50", num_classes=400)
    config.batch_size = 2
    mesh = sharding.make_mesh(num_devices=1)
    setup = steps.train_setup(config, mesh, benchmark.STEPS_PER_EPOCH)
    clips = np.random.default_rng(0).standard_normal((2, 8, 224, 224, 3), dtype=np.float32)
    name = "train step" if _MODE.value == "train" else "eval forward"
    step = benchmark.jax_steps(setup, mesh, clips, np.array([0, 1], np.int32), modes=(_MODE.value,))[name]
    step()
    print(f"{name}: compiled in {step.compile_s:.1f} s; GLIBC_TUNABLES {os.environ.get('GLIBC_TUNABLES')}")
    for _ in range(_STEPS.value):
        before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        step()
        elapsed, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
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
            sorted(glob.glob(f"{dump_dir}/*{module}.cpu_after_optimizations.txt"))[-1], durations, _BY_LINE.value
        )


if __name__ == "__main__":
    app.run(main)
