r"""Same-process A/B of the CPU formulation's tricks: each one switched back to its plain form, steps alternating.

  python benchmarks/cpu_tricks_ab.py --variants base,-stored,-bn_backward --steps 5
  python benchmarks/cpu_tricks_ab.py --variants base,opt:xla_cpu_use_onednn=true --mode eval

Every variant is the training run's step (`smallbig_jax.steps`, SmallBig-R50 8x224x224, batch 2, float32, the
official recipe: `--config`, by default `configs/benchmark.py:smallbig50` as for `smallbig-jax benchmark`), built in
a variant of the CPU formulation (`models/cpu_formulation.py`) with some of its tricks replaced by the plain form a
reader would write; all variants are compiled first, then run in turn (base, A, B, base, A, B, ...), so machine load
hits them alike. Prints, per variant, the median step time, the median of its per-round ratio to the first variant
(robust to load that drifts between rounds), XLA's temporaries, the compile time and page faults. Variants (comma-
separated; `-` switches a trick off):

  base          the CPU formulation as it is
  -stored       `cpu_formulation._stored` is the identity (the block-output ReLU and the pools' kept values are
                fused into their consumers again)
  -relu_stored  only the block-output ReLU is a plain `jax.nn.relu` (the pools keep `_stored`)
  -bn_backward  BatchNorm's backward by autodiff of its forward instead of the hand-written one
  -bn_2d_sums   BatchNorm's sums over the middle axis of `[1, elements, C]` instead of a 2D `[elements, C]` view
  -pool_backward  the pools' forward as it is, their backward by autodiff (no tap indices)
  -pools        every max-pool as `lax.reduce_window` (its backward: select-and-scatter), frames broadcast by
                `jnp.broadcast_to`
  -conv_options  no compiler options: XLA:CPU's defaults give convolutions to YNNPACK
  plain         the plain formulation (`layers.PLAIN`: plain `lax` ops and autodiff, XLA:CPU's default options)
  opt:K=V[;K=V] base compiled with these XLA:CPU options added (e.g. opt:xla_cpu_use_onednn=true)
A variant is a `Formulation` (the CPU one with fields replaced) given to the step builder in place of the config's
(`steps.formulation` is patched for the build), plus the module functions of `cpu_formulation` it replaces while
its steps are traced. The glibc settings (`smallbig_jax/host_memory.py`) act on the process, so they are compared
across processes: `SMALLBIG_KEEP_HOST_MEMORY=0 python benchmarks/cpu_step_profile.py` against the same without it.
"""

from smallbig_jax.host_memory import keep_freed_host_memory

keep_freed_host_memory()

import contextlib
import dataclasses
import resource
import statistics
import time

import jax
import jax.numpy as jnp
from absl import app, flags
from jax import lax
from ml_collections import config_flags

from smallbig_jax import cli, sharding, steps
from smallbig_jax.models import cpu_formulation, layers
from smallbig_jax.models.cpu_formulation import CPU
from smallbig_jax.tools import harness

_VARIANTS = flags.DEFINE_list("variants", ["base", "-stored"], "Variants to compare (see the docstring).")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"], "Which step.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed rounds after one warm-up round.")
_CONFIG = config_flags.DEFINE_config_file("config", "configs/benchmark.py:smallbig50", "The model (and its recipe).")


def _reduce_window_max(x, window, strides, padding):
    return lax.reduce_window(x, -jnp.inf, lax.max, window, strides, padding)


def _plain_max_pool_1d(x, axis, window=3, stride=1, padding=1):
    dims, strides, pads = [1] * x.ndim, [1] * x.ndim, [(0, 0)] * x.ndim
    dims[axis], strides[axis], pads[axis] = window, stride, (padding, padding)
    return _reduce_window_max(x, dims, strides, pads)


def _plain_pool_3x3x3(x):
    return _reduce_window_max(x, (1, 3, 3, 3, 1), (1,) * 5, ((0, 0), (1, 1), (1, 1), (1, 1), (0, 0)))


def _plain_pool_global_t_3x3(x):
    return _reduce_window_max(x, (1, x.shape[1], 3, 3, 1), (1,) * 5, ((0, 0), (0, 0), (1, 1), (1, 1), (0, 0)))


@dataclasses.dataclass(frozen=True, eq=False)
class _ReduceWindowPools(layers.Formulation):
    """A formulation whose big-view pools are one 3D `lax.reduce_window` each (not built from the 1D pool)."""

    def max_pool_3x3x3(self, x):
        return _plain_pool_3x3x3(x)

    def max_pool_global_t_3x3(self, x):
        return _plain_pool_global_t_3x3(x)


# trick -> (fields of the CPU formulation replaced, [(cpu_formulation attribute, plain replacement)])
TRICKS = {
    "stored": ({}, [("_stored", lambda a: a)]),
    "relu_stored": ({"block_output_relu": jax.nn.relu}, []),
    "bn_backward": ({"batch_norm_train": cpu_formulation.batch_norm_train.fun}, []),
    "bn_2d_sums": ({}, [("_sum_per_group", lambda a: jnp.sum(a, axis=1, keepdims=True))]),
    "pool_backward": (
        {"broadcast_frames": cpu_formulation.broadcast_frames.fun},
        [
            ("_max_pool_3_tap", cpu_formulation._max_pool_3_tap.fun),
            ("_max_pool_1d", cpu_formulation._max_pool_1d.fun),
            ("_max_over_frames", cpu_formulation._max_over_frames.fun),
        ],
    ),
    "pools": (
        {"max_pool_1d": _plain_max_pool_1d, "broadcast_frames": layers.broadcast_frames},
        [],
    ),
    "conv_options": ({"cpu_compiler_options": {}}, []),
}
FORMULATION_CLASSES = {"pools": _ReduceWindowPools}  # tricks that change how the composite pools are built


def _option_value(text: str):
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return int(text) if text.isdigit() else text


def variant_of(variant: str) -> tuple[layers.Formulation, list]:
    """(the variant's formulation, [(module, attribute, replacement)] to hold while its steps are traced)."""
    if variant == "base":
        return CPU, []
    if variant == "plain":
        return layers.PLAIN, []
    if variant.startswith("-") and variant[1:] in TRICKS:
        fields, functions = TRICKS[variant[1:]]
        cls = FORMULATION_CLASSES.get(variant[1:], layers.Formulation)
        replaced = cls(**{**{f.name: getattr(CPU, f.name) for f in dataclasses.fields(CPU)}, "name": variant, **fields})
        return replaced, [(cpu_formulation, name, value) for name, value in functions]
    if variant.startswith("opt:"):
        extra = {k: _option_value(v) for k, v in (item.split("=", 1) for item in variant[4:].split(";"))}
        return dataclasses.replace(CPU, name=variant, cpu_compiler_options={**CPU.cpu_compiler_options, **extra}), []
    raise app.UsageError(f"unknown variant {variant!r}")


@contextlib.contextmanager
def patched(replacements):
    saved = [(module, name, getattr(module, name)) for module, name, _ in replacements]
    try:
        for module, name, value in replacements:
            setattr(module, name, value)
        yield
    finally:
        for module, name, value in reversed(saved):
            setattr(module, name, value)


def main(argv):
    del argv
    config = _CONFIG.value
    config.batch_size = 2
    mesh = sharding.make_mesh(num_devices=1)
    setup = steps.train_setup(config, mesh, harness.STEPS_PER_EPOCH)
    clips, labels = harness.random_batch(config, seed=0)
    batch = jax.device_put({"clip": clips, "label": labels}, sharding.batch_sharding(mesh))
    runs = {}
    for variant in _VARIANTS.value:
        formulation, functions = variant_of(variant)
        with patched([*functions, (steps, "formulation", lambda config, mesh=None: formulation)]):
            state = jax.tree.map(jnp.copy, setup.state)
            graphdef, eval_graphdef = steps.model_graphdefs(config, mesh)
            if _MODE.value == "train":
                jitted = steps.make_train_step(
                    graphdef, setup.tx, config, mesh, setup.state_shardings, setup.lr_schedule
                )
                runs[variant] = harness.JaxStep(jitted, (state, batch), feeds_state=True)
            else:
                jitted = steps.make_eval_step(eval_graphdef, mesh, formulation)
                runs[variant] = harness.JaxStep(
                    jitted, (state["params"], state["batch_stats"], batch["clip"]), feeds_state=False
                )
        print(
            f"{variant}: compiled in {runs[variant].compile_s:.1f} s, XLA temporaries "
            f"{runs[variant].memory.get('xla_temp_gb', float('nan')):.2f} GB",
            flush=True,
        )
    del setup
    times = {v: [] for v in runs}
    faults = {v: [] for v in runs}
    for i in range(_STEPS.value + 1):
        for variant, step in runs.items():
            before, start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
            step()
            if i:
                times[variant].append(time.perf_counter() - start)
                faults[variant].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        print(f"round {i}: " + ", ".join(f"{v} {t[-1]:.2f} s" for v, t in times.items() if i), flush=True)
    first = _VARIANTS.value[0]
    print(
        f"load average {' '.join(f'{x:.2f}' for x in __import__('os').getloadavg())}; {_MODE.value} step, "
        f"{_STEPS.value} rounds; ratio = variant / {first} per round, median (> 1: the variant is slower)"
    )
    for variant in runs:
        ratio = statistics.median(a / b for a, b in zip(times[variant], times[first]))
        print(
            f"{variant:28} median {statistics.median(times[variant]):6.2f} s  min {min(times[variant]):6.2f} s  "
            f"ratio {ratio:5.3f}  temporaries {runs[variant].memory.get('xla_temp_gb', float('nan')):5.2f} GB  "
            f"compile {runs[variant].compile_s:5.1f} s  faults {statistics.median(faults[variant]):.0f}"
        )


if __name__ == "__main__":
    cli.choose_jax_platforms()  # the aot extra's TPU and CUDA plugins left out on a CPU-only machine
    app.run(main)
