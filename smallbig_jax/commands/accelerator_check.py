r"""On a new accelerator, run this first: numerics on the device, speed at 8/16/32 clips per device, input pipeline.

  smallbig-jax accelerator_check                       # SmallBig-R50 8x224, bfloat16, all local devices
  smallbig-jax accelerator_check --converted converted/smallbig50_k400   # numerics with converted weights
  smallbig-jax accelerator_check --data_config=configs/kinetics400_smallbig50_8x8.py   # your dataset's input
  smallbig-jax accelerator_check --config=configs/benchmark.py:tiny,bf16 --tiny   # about a minute on a CPU

What it checks and the bounds it holds the device to: `smallbig_jax/tools/accelerator_check.py`. The model is the
config's (default `configs/benchmark.py:smallbig50,bf16`; a training config serves too). It prints a markdown table
(the one BENCHMARKS.md takes, `--markdown` also writes it to a file) and one JSON record, appended to `--results`.
Exits 1 if a numerics check fails. Meant to take under 8 minutes on one GPU or one TPU host (most of it compiling
SmallBig-R50 at three batch sizes; not yet timed on an accelerator).
"""

from absl import flags

from smallbig_jax import cli
from smallbig_jax.tools import accelerator_check as check
from smallbig_jax.tools.harness import write_report

DEFAULT_CONFIG = "configs/benchmark.py:smallbig50,bf16"

FLAGS = flags.FlagValues()
_CONFIG = cli.define_config_flag(
    FLAGS,
    f"Config (file.py[:arg]) whose model, recipe and BatchNorm mode are checked (default {DEFAULT_CONFIG}).",
    default=DEFAULT_CONFIG,
)
_TINY = flags.DEFINE_boolean(
    "tiny",
    False,
    "The CPU-sized run (with --config=configs/benchmark.py:tiny,bf16): one size of 2 clips per device, 2 timed "
    "steps, input from 4 synthetic videos in the main process.",
    flag_values=FLAGS,
)
_CONVERTED = flags.DEFINE_string(
    "converted", "", "Converted checkpoint (dir or .pth) for the numerics checks.", flag_values=FLAGS
)
_CLIPS = flags.DEFINE_list(
    "clips_per_device", ["8", "16", "32"], "Per-device batches of the speed sweep.", flag_values=FLAGS
)
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per size after warm-up.", flag_values=FLAGS)
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps per size after compilation.", flag_values=FLAGS)
_DATA = cli.define_config_flag(
    FLAGS,
    "Config whose config.data the input pipeline reads (default: synthetic mp4s as long as the config's clip "
    "span at its scale_size, written to a temporary folder).",
    name="data_config",
)
_WORKERS = flags.DEFINE_integer(
    "input_workers", None, "Input worker processes (default: every host core).", flag_values=FLAGS
)
_PEAK = flags.DEFINE_float(
    "peak_tflops", None, "Peak TFLOP/s per device for MFU (default: harness.PEAK_TFLOPS).", flag_values=FLAGS
)
_RESULTS = flags.DEFINE_string(
    "results", "benchmarks/accelerator_checks.jsonl", "JSON-lines file appended to.", flag_values=FLAGS
)
_MARKDOWN = flags.DEFINE_string("markdown", None, "Also write the markdown table to this file.", flag_values=FLAGS)
cli.define_debug_flag(FLAGS)


def main() -> int | None:
    config = cli.config_value(_CONFIG)
    if _TINY.value:
        clips, steps, warmup = [2], 2, 1  # one size: each costs a compile of the train step
        workers = 0 if _WORKERS.value is None else _WORKERS.value
        input_batches, input_videos = 2, 4
    else:
        clips, steps, warmup = [int(c) for c in _CLIPS.value], _STEPS.value, _WARMUP.value
        workers, input_batches, input_videos = _WORKERS.value, 10, 16
    numerics_config = None
    if _CONVERTED.value:
        numerics_config = type(config)(config.to_dict())
        numerics_config.init_from = _CONVERTED.value
    record = check.run(
        config,
        clips_per_device=clips,
        steps_=steps,
        warmup=warmup,
        numerics_config=numerics_config,
        data_config=None if _DATA.value is None else cli.config_value(_DATA).data,
        input_batches=input_batches,
        input_workers=workers,
        input_videos=input_videos,
        peak_tflops=_PEAK.value,
    )
    write_report(record, check.markdown(record), _RESULTS.value, markdown=_MARKDOWN.value, print_record=True)
    return 0 if record["passed"] else 1
