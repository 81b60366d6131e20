r"""Training-step and evaluation throughput, per device and in total, optionally side by side with PyTorch.

  smallbig-jax benchmark                                   # SmallBig-R50, 8x224x224, 2 clips/device, float32
  smallbig-jax benchmark --config configs/kinetics400_smallbig50_8x8.py --batch_per_device 8 --dtype bfloat16
  smallbig-jax benchmark --compare_torch                   # + the PyTorch reference, same weights and input
  XLA_FLAGS=--xla_force_host_platform_device_count=2 smallbig-jax benchmark --num_devices 2 --base_width 8
  smallbig-jax benchmark --config configs/synthetic_smallbig.py --end_to_end   # the real loader feeding the step

The steps are the training run's own (`smallbig_jax.steps.train_setup`): with `--config`, its optimizer, BatchNorm
mode, gradient accumulation and EMA; without, the official recipe for `--variant`. Data-parallel over
`--num_devices` local devices (all by default): the global batch is batch_per_device x devices on
a 1-D 'data' mesh. Prints a table and appends a JSON record to `--results` (benchmarks/results.jsonl); BENCHMARKS.md
lists the latest results per device with the commands that made them.
"""

import json
import pathlib
import sys

import jax
from absl import app, flags

from smallbig_jax import cli
from smallbig_jax.benchmark import benchmark_config, benchmark_model, format_results, load_config
from smallbig_jax.config import DTYPES
from smallbig_jax.distributed import initialize_distributed
from smallbig_jax.models import VARIANTS

FLAGS = flags.FlagValues()
_CONFIG = flags.DEFINE_string(
    "config",
    None,
    "A configs/*.py file (optionally file.py:arg): variant, classes, frames, crop, dtype from it.",
    flag_values=FLAGS,
)
_VARIANT = flags.DEFINE_enum(
    "variant", "smallbig50", sorted(VARIANTS), "Model variant (without --config).", flag_values=FLAGS
)
_CLASSES = flags.DEFINE_integer("num_classes", 400, "Classifier size (without --config).", flag_values=FLAGS)
_FRAMES = flags.DEFINE_integer("frames", 8, "Frames per clip (without --config).", flag_values=FLAGS)
_SIZE = flags.DEFINE_integer("size", 224, "Crop size (without --config).", flag_values=FLAGS)
_WIDTH = flags.DEFINE_integer(
    "base_width", 64, "Channels of the stem (64 = the paper's; smaller for quick runs).", flag_values=FLAGS
)
_BATCH = flags.DEFINE_integer("batch_per_device", 2, "Clips per device per step.", flag_values=FLAGS)
_DEVICES = flags.DEFINE_integer(
    "num_devices", None, "Devices on the 'data' mesh (default: all local devices).", flag_values=FLAGS
)
_DTYPE = flags.DEFINE_enum(
    "dtype", None, sorted(DTYPES), "Compute dtype (default float32, or the config's).", flag_values=FLAGS
)
_MODES = flags.DEFINE_list(
    "modes", ["eval", "train"], "What to time: eval (forward) and/or train (step).", flag_values=FLAGS
)
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps after warm-up.", flag_values=FLAGS)
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.", flag_values=FLAGS)
_TORCH = flags.DEFINE_boolean(
    "compare_torch", False, "Also time the PyTorch reference (same weights and input).", flag_values=FLAGS
)
_THREADS = flags.DEFINE_integer("torch_threads", None, "torch.set_num_threads (default: all cores).", flag_values=FLAGS)
_PEAK = flags.DEFINE_float(
    "peak_tflops", None, "Peak TFLOP/s per device for MFU (default: from the peaks table).", flag_values=FLAGS
)
_INPUT = flags.DEFINE_boolean(
    "input_pipeline", True, "Also time the input pipeline alone (with --config).", flag_values=FLAGS
)
_CHECKPOINT = flags.DEFINE_boolean(
    "checkpoint", True, "Also time an Orbax save/restore of the train state.", flag_values=FLAGS
)
_E2E = flags.DEFINE_boolean(
    "end_to_end",
    False,
    "Also run the config's real training loader feeding the train step (needs --config with a "
    "dataset): clips/s end to end and whether the step waits for data.",
    flag_values=FLAGS,
)
_OUT = flags.DEFINE_string(
    "results", "benchmarks/results.jsonl", "JSON-lines file the record is appended to.", flag_values=FLAGS
)
cli.define_debug_flag(FLAGS)


def main() -> int | None:
    # Multi-host (TPU pod, SLURM): joins the processes when the launcher's environment asks for it; else a no-op.
    # Single-host runs are what has been tested; every process must then build the same input (fixed seed).
    initialize_distributed()
    if _TORCH.value and jax.process_count() > 1:
        raise app.UsageError("--compare_torch compares on one host; run it without a multi-process launcher")
    if _CONFIG.value:
        config = load_config(_CONFIG.value)
        if _DTYPE.value:
            config.model.dtype = _DTYPE.value
        if _WIDTH.present:
            config.model.base_width = _WIDTH.value
    else:
        if _E2E.value:
            raise app.UsageError("--end_to_end needs --config (the dataset to load)")
        config = benchmark_config(
            _VARIANT.value,
            num_classes=_CLASSES.value,
            frames=_FRAMES.value,
            size=_SIZE.value,
            base_width=_WIDTH.value,
            dtype=_DTYPE.value or "float32",
        )
    record = benchmark_model(
        config,
        batch_per_device=_BATCH.value,
        num_devices=_DEVICES.value,
        steps=_STEPS.value,
        warmup=_WARMUP.value,
        modes=tuple(_MODES.value),
        compare_torch=_TORCH.value,
        torch_threads=_THREADS.value,
        peak_tflops_per_device=_PEAK.value,
        measure_input=_INPUT.value and bool(_CONFIG.value),
        measure_checkpoint=_CHECKPOINT.value,
        measure_end_to_end=_E2E.value,
    )
    if _INPUT.value and not _CONFIG.value:
        record["input_pipeline"] = {"skipped": "needs --config"}
    record["config"] = _CONFIG.value
    record["command"] = " ".join(["python", *sys.orig_argv[1:]])  # as typed (-m smallbig_jax, a script...)
    print(format_results(record))
    path = pathlib.Path(_OUT.value)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
    print(f"appended to {path}")
