r"""Where a JAX step's time goes on CPU: step time, page faults, time per source line; and two kernel comparisons.

  python benchmarks/cpu_step_profile.py --mode train                   # step time, page faults, kernel time
  SMALLBIG_KEEP_HOST_MEMORY=0 python benchmarks/cpu_step_profile.py    # the same under glibc's defaults
  python benchmarks/cpu_step_profile.py --mode eval --by_line 25       # + the 25 source lines taking most time
  python benchmarks/cpu_step_profile.py --kernels                      # BN sums; kernel gradient and 3x3 conv forms

The step is `smallbig_jax.benchmark.jax_steps` (SmallBig-R50, 8x224x224, batch 2, float32, as scripts/benchmark.py).
`--by_line` traces one step with `jax.profiler`, reads the trace back with `jax.profiler.ProfileData` and maps each
XLA fusion to the innermost smallbig_jax source line in the optimised HLO dump (thread time, summed over threads).
`--kernels` times the microbenchmarks behind BENCHMARKS.md's round 2 (rows 11 and 13) and round 3 (row 22).
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
    from jax import lax

    rng = np.random.default_rng(0)
    n, c = 50176, 64  # layer1 at 8x224x224, batch 2: 2*8*56*56 elements of 64 channels
    x, g = (jnp.asarray(rng.standard_normal((1, n, c), dtype=np.float32)) for _ in range(2))
    sum_3d = jax.jit(lambda x, g: jnp.sum(g * x, axis=1))
    sum_2d = jax.jit(lambda x, g: jnp.sum((g * x).reshape(n, c), axis=0))
    print(
        f"BN sum of g*x over {n} elements, {c} channels: [1, N, C] over axis 1 {_median_ms(sum_3d, x, g):.2f} ms, "
        f"[N, C] over axis 0 {_median_ms(sum_2d, x, g):.2f} ms"
    )
    for h, ch in [(56, 64), (28, 128), (14, 256), (7, 512)]:
        x = jnp.asarray(rng.standard_normal((16, h, h, ch), dtype=np.float32))
        dy = jnp.asarray(rng.standard_normal((16, h, h, ch), dtype=np.float32))

        def taps(x):
            xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
            return [
                lax.slice(xp, (0, i, j, 0), (16, i + h, j + h, ch)).reshape(-1, ch) for i in range(3) for j in range(3)
            ]

        per_tap = jax.jit(lambda x, dy: jnp.stack([t.T @ dy.reshape(-1, ch) for t in taps(x)]))
        im2col = jax.jit(lambda x, dy: jnp.concatenate(taps(x), axis=1).T @ dy.reshape(-1, ch))

        def xla_conv(x, dy):
            conv = lambda w: lax.conv_general_dilated(
                x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
            return jax.vjp(conv, jnp.zeros((3, 3, ch, ch)))[1](dy)[0]

        print(
            f"3x3 kernel gradient at {h} px, {ch} channels, 16 frames: one matmul per tap "
            f"{_median_ms(per_tap, x, dy, steps=5):.1f} ms, im2col {_median_ms(im2col, x, dy, steps=5):.1f} ms, "
            f"XLA conv autodiff {_median_ms(jax.jit(xla_conv), x, dy, steps=5):.1f} ms"
        )
    from smallbig_jax.models.layers import _conv2d_xla, conv2d_im2col

    # (input px, channels, frames, stride): layer4's 3x3 at 224 px (7x7) and 112 px (4x4), layer3's (14x14), and
    # the strided convs into layer4 and layer3.
    shapes = [(7, 512, 8, 1), (7, 512, 16, 1), (7, 512, 32, 1), (7, 512, 64, 1), (4, 512, 32, 1), (14, 256, 16, 1)]
    for h, ch, frames, stride in shapes + [(14, 512, 16, 2), (28, 256, 16, 2)]:
        x = jnp.asarray(rng.standard_normal((frames, h, h, ch), dtype=np.float32))
        w = jnp.asarray(rng.standard_normal((3, 3, ch, ch), dtype=np.float32))
        direct = jax.jit(lambda x, w: _conv2d_xla(x, w, stride, 1))
        im2col = jax.jit(lambda x, w: conv2d_im2col(x, w, stride, 1))
        # Timed twice each, alternating, best of the two medians: the machine's speed drifts.
        runs = [[_median_ms(f, x, w, steps=9) for f in (direct, im2col)] for _ in range(2)]
        a, b = min(r[0] for r in runs), min(r[1] for r in runs)
        print(
            f"3x3 conv forward, stride {stride}, {h}x{h} px in, {ch} channels, {frames} frames: direct (XLA/YNNPACK) "
            f"{a:.1f} ms, im2col matmul {b:.1f} ms ({b / a:.2f})"
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

    from smallbig_jax.benchmark import jax_steps, make_mesh
    from smallbig_jax.models import build_model

    model = build_model("smallbig50", 400)
    clips = np.random.default_rng(0).standard_normal((2, 8, 224, 224, 3), dtype=np.float32)
    name = "train step" if _MODE.value == "train" else "eval forward"
    step = jax_steps(model, clips, np.array([0, 1], np.int32), make_mesh(), modes=(_MODE.value,))[name]
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
        module = "jit_train_step" if _MODE.value == "train" else "jit_forward"
        time_per_line(
            sorted(glob.glob(f"{dump_dir}/*{module}.cpu_after_optimizations.txt"))[-1], durations, _BY_LINE.value
        )


if __name__ == "__main__":
    app.run(main)
