r"""SmallBig-R101, 8 frames at stride 8, Kinetics-400, official recipe.

Reproduces: the paper's headline Kinetics-400 result, 77.4 top-1 / 93.3 top-5 with 10 clips x 3 crops
(docs/protocol.md#reported-results: the 77.4 is confirmed; that it is R101 8x8 is the most likely reading).
43,414,992 parameters, 105.25 GMACs per view. Official run: 8 GPUs x 8 clips, 100 epochs. Initialise from an
ImageNet ResNet-101 (the official code loads ResNet-50 weights here by mistake;
docs/model.md#quirks-and-bugs-of-the-official-code).

  smallbig-jax summary --config configs/kinetics400_smallbig101_8x8.py

Arguments (comma-separated): "runlocal" shrinks the run to one CPU; "bf16" computes in bfloat16 (float32 parameters),
the setting for GPUs and TPUs:

  smallbig-jax train --config configs/kinetics400_smallbig101_8x8.py:bf16 --workdir gs://bucket/run
"""

from smallbig_jax.config import bfloat16, config_args, official_recipe, runlocal

ARGS = {"runlocal": "the run shrunk to one CPU", "bf16": "bfloat16 compute, float32 parameters"}


def get_config(arg: str | None = None):
    config = official_recipe(
        variant="smallbig101", num_classes=400, num_frames=8, dataset="kinetics400", sampling="dense"
    )
    args = config_args(arg, ARGS)
    if "runlocal" in args:
        config = runlocal(config)
    if "bf16" in args:  # GPU/TPU: bfloat16 compute, float32 parameters
        config = bfloat16(config)
    return config
