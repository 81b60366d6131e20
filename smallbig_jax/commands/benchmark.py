r"""Training-step and evaluation throughput, per device and in total, optionally side by side with PyTorch.

  smallbig-jax benchmark                                   # SmallBig-R50, 8x224x224, 2 clips/device, float32
  smallbig-jax benchmark --config=configs/benchmark.py:tiny --config.model.dtype=bfloat16
  smallbig-jax benchmark --config=configs/kinetics400_smallbig50_8x8.py:bf16 --batch_per_device=8
  smallbig-jax benchmark --compare_torch                   # + the PyTorch reference, same weights and input
  XLA_FLAGS=--xla_force_host_platform_device_count=2 smallbig-jax benchmark --num_devices=2 \
      --config.model.base_width=8
  smallbig-jax benchmark --config=configs/synthetic_smallbig.py --end_to_end   # the real loader feeding the step

The steps are the training run's own (`smallbig_jax.steps.train_setup`): the config's model, optimizer, BatchNorm
mode, gradient accumulation and EMA. `configs/benchmark.py` gives a model without a dataset (the default,
`configs/benchmark.py:smallbig50`; its docstring lists the others); a training config also times its input
pipeline. Data-parallel over `--num_devices` local devices (all by default): the global batch is
batch_per_device x devices on a 1-D 'data' mesh. Prints a table and appends a JSON record to `--results`
(benchmarks/results.jsonl); BENCHMARKS.md lists the latest results per device with the commands that made them.
"""

import jax
from absl import app, flags

from smallbig_jax import cli
from smallbig_jax.distributed import initialize_distributed
from smallbig_jax.tools.benchmark import benchmark_model, format_results
from smallbig_jax.tools.harness import dataset_missing, write_report

DEFAULT_CONFIG = "configs/benchmark.py:smallbig50"

FLAGS = flags.FlagValues()
_CONFIG = cli.define_config_flag(
    FLAGS,
    f"A config file (file.py[:arg]) whose model and step are timed (default {DEFAULT_CONFIG}).",
    default=DEFAULT_CONFIG,
)
_BATCH = flags.DEFINE_integer("batch_per_device", 2, "Clips per device per step.", flag_values=FLAGS)
_DEVICES = flags.DEFINE_integer(
    "num_devices", None, "Devices on the 'data' mesh (default: all local devices).", flag_values=FLAGS
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
    "input_pipeline", True, "Also time the input pipeline alone (a config that names a dataset).", flag_values=FLAGS
)
_CHECKPOINT = flags.DEFINE_boolean(
    "checkpoint", True, "Also time an Orbax save/restore of the train state.", flag_values=FLAGS
)
_E2E = flags.DEFINE_boolean(
    "end_to_end",
    False,
    "Also run the config's real training loader feeding the train step (a config that names a dataset): clips/s "
    "end to end and whether the step waits for data.",
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
    config = cli.config_value(_CONFIG)
    if _E2E.value and (missing := dataset_missing(config.data)):
        raise app.UsageError(f"--end_to_end needs a config that names a dataset: {missing}")
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
        measure_input=_INPUT.value,
        measure_checkpoint=_CHECKPOINT.value,
        measure_end_to_end=_E2E.value,
    )
    record["config"] = FLAGS["config"].config_filename
    write_report(record, format_results(record), _OUT.value)
