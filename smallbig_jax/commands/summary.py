r"""Print parameters, per-stage output shapes and GMACs / XLA GFLOPs per clip of a model at an exact input shape.

  smallbig-jax summary                                                  # SmallBig-R50 at 8x224x224
  smallbig-jax summary --config=configs/kinetics400_smallbig50_8x8.py
  smallbig-jax summary --config=configs/benchmark.py:smallbig101 --config.data.num_frames=16 \
      --config.data.crop_size=256

The model and the input shape (config.data.num_frames, crop_size) are the config's (default
`configs/benchmark.py:smallbig50`, whose docstring lists the other models).
"""

from absl import flags

from smallbig_jax import cli
from smallbig_jax.steps import model_from_config
from smallbig_jax.summary import summarize

DEFAULT_CONFIG = "configs/benchmark.py:smallbig50"

FLAGS = flags.FlagValues()
_CONFIG = cli.define_config_flag(
    FLAGS,
    f"A config file (file.py[:arg]) whose model is summarised (default {DEFAULT_CONFIG}).",
    default=DEFAULT_CONFIG,
)
cli.define_debug_flag(FLAGS)


def main() -> int | None:
    config = cli.config_value(_CONFIG)
    print(summarize(model_from_config(config), frames=config.data.num_frames, size=config.data.crop_size).format())
