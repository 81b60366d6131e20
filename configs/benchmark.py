r"""The models the benchmark and the accelerator check time when no training config is given: the official recipe
(SGD momentum, weight decay on every parameter, per-device BatchNorm; `config.official_recipe`) for a variant at
400 classes and 8 frames of 224x224, float32, with no dataset (the tools feed random clips).

Arguments (comma-separated): a variant name (`smallbig50` when none is given; any of
`smallbig_jax/variants.py`); "tiny" is the CPU-sized model of the tests and of the accelerator check's CPU run
(SmallBig-23 unless a variant is named, width 4, 5 classes, 2 frames of 64x64 at stride 4; 64 px rather than 32: at
32 px, 2 clips give layer4's BatchNorm 4 values per channel, whose statistics amplify rounding, and the check's
update bound then fails between two correct programs); "bf16" computes in bfloat16 (float32 parameters). Any other
shape is an override:

  smallbig-jax benchmark --config=configs/benchmark.py:smallbig50            # SmallBig-R50, 8x224x224, float32
  smallbig-jax benchmark --config=configs/benchmark.py:tiny --config.model.dtype=bfloat16
  smallbig-jax benchmark --config=configs/benchmark.py:smallbig101 --config.data.num_frames=16 \
      --config.data.crop_size=256 --config.model.base_width=8
  smallbig-jax accelerator_check --config=configs/benchmark.py:smallbig50,bf16
  smallbig-jax summary --config=configs/benchmark.py:smallbig101 --config.data.num_frames=16
"""

from smallbig_jax.config import bfloat16, config_args, official_recipe
from smallbig_jax.variants import VARIANTS

ARGS = {
    **{name: f"the {name} variant" for name in VARIANTS},
    "tiny": "SmallBig-23, width 4, 5 classes, 2 frames of 64x64 (a CPU run in seconds)",
    "bf16": "bfloat16 compute, float32 parameters",
}


def get_config(arg: str | None = None):
    args = config_args(arg, ARGS)
    variants = [name for name in args if name in VARIANTS]
    variant = variants[-1] if variants else "smallbig23" if "tiny" in args else "smallbig50"
    config = official_recipe(
        variant=variant,
        num_classes=5 if "tiny" in args else 400,
        num_frames=2 if "tiny" in args else 8,
        dataset="benchmark",
        sampling="dense",
    )
    if "tiny" in args:
        config.model.base_width = 4
        config.data.stride = 4  # a clip spans 8 frames
        config.data.crop_size = config.data.scale_size = config.data.train_short_side = 64
    if "bf16" in args:
        config = bfloat16(config)
    return config
