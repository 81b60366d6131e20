r"""The quick-start job until training lands: build SmallBig-R50, summarise it, classify a clip.

  python scripts/demo.py [--variant smallbig50] [--frames 8] [--size 224]
"""

import time

import jax
import jax.numpy as jnp
from absl import app, flags
from flax import nnx

from smallbig_jax.models import VARIANTS, build_model
from smallbig_jax.summary import summarize

_VARIANT = flags.DEFINE_enum("variant", "smallbig50", sorted(VARIANTS), "Model variant.")
_FRAMES = flags.DEFINE_integer("frames", 8, "Frames per clip.")
_SIZE = flags.DEFINE_integer("size", 224, "Crop size.")


def main(argv):
    del argv
    model = build_model(_VARIANT.value, num_classes=400)
    print(summarize(model, frames=_FRAMES.value, size=_SIZE.value).format())
    model.eval()
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda state, clips: nnx.merge(graphdef, state)(clips))
    clips = jax.random.normal(jax.random.key(0), (1, _FRAMES.value, _SIZE.value, _SIZE.value, 3), jnp.float32)
    start = time.perf_counter()
    compiled = forward.lower(state, clips).compile()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    logits = jax.block_until_ready(compiled(state, clips))
    print(
        f"forward pass on a random clip {list(clips.shape)} ({jax.devices()[0].platform}): logits {list(logits.shape)}, "
        f"top class {int(jnp.argmax(logits[0]))}; compile {compile_s:.1f} s, run {time.perf_counter() - start:.2f} s"
    )


if __name__ == "__main__":
    app.run(main)
