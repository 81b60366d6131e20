r"""On a new accelerator, run this first: numerics on the device, speed at 8/16/32 clips per device, input pipeline.

  smallbig-jax accelerator_check                       # SmallBig-R50 8x224, bfloat16, all local devices
  smallbig-jax accelerator_check --converted converted/smallbig50_k400   # numerics with converted weights
  smallbig-jax accelerator_check --data_config configs/kinetics400_smallbig50_8x8.py   # your dataset's input
  smallbig-jax accelerator_check --tiny                # about a minute on a CPU: the same code path, tiny

What it checks and the bounds it holds the device to: `smallbig_jax/accelerator_check.py`. It prints a markdown
table (the one BENCHMARKS.md takes, `--markdown` also writes it to a file) and one JSON record, appended to
`--results`. Exits 1 if a numerics check fails. Meant to take under 8 minutes on one GPU or one TPU host (most of it
compiling SmallBig-R50 at three batch sizes; not yet timed on an accelerator).
"""

import json
import pathlib
import sys

from absl import flags

from smallbig_jax import accelerator_check as check
from smallbig_jax import cli
from smallbig_jax.benchmark import load_config
from smallbig_jax.config import official_recipe

FLAGS = flags.FlagValues()
_CONFIG = flags.DEFINE_string(
    "config",
    "configs/kinetics400_smallbig50_8x8.py:bf16",
    "Config (file.py[:arg]) whose model, recipe and BatchNorm mode are checked.",
    flag_values=FLAGS,
)
_TINY = flags.DEFINE_boolean(
    "tiny", False, "A tiny SmallBig-23 at 2x64x64, 2 clips per device: the CI run.", flag_values=FLAGS
)
_CONVERTED = flags.DEFINE_string(
    "converted", "", "Converted checkpoint (dir or .pth) for the numerics checks.", flag_values=FLAGS
)
_CLIPS = flags.DEFINE_list(
    "clips_per_device", ["8", "16", "32"], "Per-device batches of the speed sweep.", flag_values=FLAGS
)
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per size after warm-up.", flag_values=FLAGS)
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps per size after compilation.", flag_values=FLAGS)
_DATA = flags.DEFINE_string(
    "data_config",
    None,
    "Config whose config.data the input pipeline reads (default: "
    "synthetic mp4s, 64 frames of 256x256, written to a temporary folder).",
    flag_values=FLAGS,
)
_WORKERS = flags.DEFINE_integer(
    "input_workers", None, "Input worker processes (default: every host core).", flag_values=FLAGS
)
_PEAK = flags.DEFINE_float(
    "peak_tflops", None, "Peak TFLOP/s per device for MFU (default: benchmark.PEAK_TFLOPS).", flag_values=FLAGS
)
_RESULTS = flags.DEFINE_string(
    "results", "benchmarks/accelerator_checks.jsonl", "JSON-lines file appended to.", flag_values=FLAGS
)
_MARKDOWN = flags.DEFINE_string("markdown", None, "Also write the markdown table to this file.", flag_values=FLAGS)
cli.define_debug_flag(FLAGS)


def tiny_config():
    """SmallBig-23, width 4, 5 classes, 2 frames of 64x64, bfloat16: every part of the check, on a CPU, in about a
    minute (mostly compiling). 64 px rather than 32: at 32 px, 2 clips give layer4's BatchNorm 4 values per channel,
    whose statistics amplify rounding (the update check then differs by 6e-3 between two correct programs)."""
    config = official_recipe(variant="smallbig23", num_classes=5, num_frames=2, sampling="dense")
    config.model.base_width, config.model.dtype = 4, "bfloat16"
    config.data.crop_size = 64
    return config


def main() -> int | None:
    if _TINY.value:
        config = tiny_config()
        clips, steps, warmup = [2], 2, 1  # one size: each costs a compile of the train step
        synthetic = dict(num_videos=4, num_frames=8, size=64, frames=2, stride=2, crop=64)
        workers = 0 if _WORKERS.value is None else _WORKERS.value
        input_batches = 2
    else:
        config = load_config(_CONFIG.value)
        clips, steps, warmup = [int(c) for c in _CLIPS.value], _STEPS.value, _WARMUP.value
        synthetic = dict(
            num_videos=16,
            num_frames=64,
            size=256,
            frames=config.data.num_frames,
            stride=config.data.stride,
            crop=config.data.crop_size,
        )
        workers, input_batches = _WORKERS.value, 10
    numerics_config = None
    if _CONVERTED.value:
        numerics_config = type(config)(config.to_dict())
        numerics_config.init_from = _CONVERTED.value
    data_config = load_config(_DATA.value).data if _DATA.value else None
    record = check.run(
        config,
        clips_per_device=clips,
        steps_=steps,
        warmup=warmup,
        numerics_config=numerics_config,
        data_config=data_config,
        input_batches=input_batches,
        input_workers=workers,
        synthetic=synthetic,
        peak_tflops=_PEAK.value,
    )
    record["command"] = " ".join(["python", *sys.orig_argv[1:]])  # as typed (-m smallbig_jax, a script...)
    table = check.markdown(record)
    print(table)
    if _MARKDOWN.value:
        pathlib.Path(_MARKDOWN.value).write_text(table + "\n")
    path = pathlib.Path(_RESULTS.value)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps(record))
    print(f"appended to {path}")
    return 0 if record["passed"] else 1
