r"""Print parameters, per-stage output shapes and GMACs / XLA GFLOPs per clip of a model at an exact input shape.

  smallbig-jax summary --config configs/kinetics400_smallbig50_8x8.py
  smallbig-jax summary --variant smallbig101 --frames 16 --size 256 --num_classes 400

With --config, the model and input shape (num_frames, crop_size) come from the config; flags given explicitly
override them.
"""

from absl import flags
from ml_collections import config_flags

from smallbig_jax import cli
from smallbig_jax.config import official_recipe
from smallbig_jax.models import VARIANTS
from smallbig_jax.steps import model_from_config
from smallbig_jax.summary import summarize

FLAGS = flags.FlagValues()
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "A config file in configs/ (optional).", lock_config=False, flag_values=FLAGS
)
_VARIANT = flags.DEFINE_enum(
    "variant", "smallbig50", sorted(VARIANTS), "Model variant (without --config).", flag_values=FLAGS
)
_NUM_CLASSES = flags.DEFINE_integer("num_classes", 400, "Classifier size (without --config).", flag_values=FLAGS)
_BASE_WIDTH = flags.DEFINE_integer(
    "base_width", 64, "Stem width; 64 is the paper's (without --config).", flag_values=FLAGS
)
_FRAMES = flags.DEFINE_integer("frames", 8, "Frames per clip.", flag_values=FLAGS)
_SIZE = flags.DEFINE_integer("size", 224, "Crop height and width.", flag_values=FLAGS)
cli.define_debug_flag(FLAGS)


def main() -> int | None:
    if _CONFIG.value is not None:
        config = _CONFIG.value
        frames = _FRAMES.value if FLAGS["frames"].present else config.data.num_frames
        size = _SIZE.value if FLAGS["size"].present else config.data.crop_size
    else:
        config = official_recipe(
            variant=_VARIANT.value,
            num_classes=_NUM_CLASSES.value,
            num_frames=_FRAMES.value,
            sampling="dense",
        )
        config.model.base_width = _BASE_WIDTH.value
        frames, size = _FRAMES.value, _SIZE.value
    print(summarize(model_from_config(config), frames=frames, size=size).format())
