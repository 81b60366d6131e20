r"""SmallBig-R50, 8 frames at stride 8, Kinetics-400: the official `scripts/kinetics.sh` recipe.

Reproduces: the paper's SmallBig-R50 on Kinetics-400 (about 76.3 top-1 / 92.5 top-5 with 10 clips x 3 crops;
docs/protocol.md#reported-results marks the per-model figures as recalled, not checked). 24,370,640 parameters,
51.97 GMACs per view. Hardware of the official run: 8 GPUs x 8 clips, 100 epochs.

  smallbig-jax summary --config configs/kinetics400_smallbig50_8x8.py
  smallbig-jax summary --config configs/kinetics400_smallbig50_8x8.py:runlocal

Arguments (comma-separated): "runlocal" shrinks the run to one CPU; "bf16" computes in bfloat16 (float32 parameters),
the setting for GPUs and TPUs:

  smallbig-jax train --config configs/kinetics400_smallbig50_8x8.py:bf16 --workdir gs://bucket/run
"""

from smallbig_jax.config import bfloat16, config_args, official_recipe, runlocal

ARGS = {"runlocal": "the run shrunk to one CPU", "bf16": "bfloat16 compute, float32 parameters"}


def get_config(arg: str | None = None):
    config = official_recipe(
        variant="smallbig50", num_classes=400, num_frames=8, dataset="kinetics400", sampling="dense"
    )
    args = config_args(arg, ARGS)
    if "runlocal" in args:
        config = runlocal(config)
    if "bf16" in args:  # GPU/TPU: bfloat16 compute, float32 parameters
        config = bfloat16(config)
    return config
