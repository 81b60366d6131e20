r"""The embedded default: SmallBig-23 (the official small ablation net, narrow) on the synthetic axis-of-motion
dataset, on one CPU.

Five classes (still, horizontal, vertical, diagonal, anti-diagonal motion of a random shape over clutter) that need
temporal context but not temporal order (docs/model.md#consequences-worth-knowing).
`smallbig-jax synthetic` writes the data.
Arguments (comma-separated): "res50" swaps in the per-frame C2D baseline of the same width, which cannot relate
frames and stays far below SmallBig (BENCHMARKS.md has the numbers); "smoke" shrinks the run to one epoch; "ci" is
the test suite's accuracy run (a dataset written with `--size=32 --num_train=600`, 28x28 crops, 12 epochs, under
two minutes per model); "tiny" is the test suite's seconds-long run (width 4, 4 frames of 28x28); "dir=PATH" reads
the dataset there; "bf16" computes in bfloat16 (float32 parameters), for a GPU or TPU.

  smallbig-jax synthetic --out data/synthetic
  smallbig-jax train --config configs/synthetic_smallbig.py --workdir workdirs/synthetic
  smallbig-jax train --config configs/synthetic_smallbig.py:res50 --workdir workdirs/synthetic_res50

Hardware: 2 CPU cores. How long the run takes there and the top-1 it reaches on the 200 held-out videos (2 clips x
3 crops; chance is 20%), as last measured: README.md#quick-start.
"""

from smallbig_jax.config import bfloat16, config_args, official_recipe
from smallbig_jax.data.synthetic import CLASSES, data_config

ARGS = {
    "res50": "the per-frame C2D baseline of the same width",
    "smoke": "one epoch",
    "ci": "the test suite's accuracy run",
    "tiny": "the test suite's seconds-long run",
    "dir=PATH": "the dataset's folder (default data/synthetic)",
    "bf16": "bfloat16 compute, float32 parameters",
}


def get_config(arg: str | None = None):
    args = config_args(arg, ARGS)
    data_dir = str(args.get("dir", "data/synthetic"))
    variant = "res50" if "res50" in args else "smallbig23"
    config = official_recipe(
        variant=variant, num_classes=len(CLASSES), num_frames=8, dataset="synthetic", sampling="dense"
    )
    config.data = data_config(data_dir)  # 8 frames at stride 2, 48x48 crops, no flip
    config.data.num_clips, config.data.num_crops = 2, 3  # final test: 2 clips x 3 crops
    config.model.base_width = 8
    config.seed = 0
    config.batch_size = 16
    config.num_epochs = 8
    config.schedule.base_lr = 0.05
    config.schedule.per_epoch = False
    config.schedule.warmup_epochs = 1
    config.batchnorm = "global"
    config.log_every = 10
    config.checkpoint_every = 50
    config.eval_every_epochs = 2
    config.eval_batch_size = 50
    if "smoke" in args:
        config.num_epochs = 1
        config.eval_every_epochs = 1
    if "ci" in args:
        config.data.crop_size = config.data.scale_size = 28
        config.num_epochs = 12
        config.eval_every_epochs = 0
    if "tiny" in args:
        config.data.format = "video"
        config.data.num_frames, config.data.crop_size, config.data.scale_size = 4, 28, 32
        config.data.num_clips, config.data.num_crops = 2, 1
        config.model.base_width = 4
        config.batch_size = 4
        config.num_epochs = 2
        config.log_every = 1
        config.checkpoint_every = 2
        config.eval_every_epochs = 0
        config.eval_batch_size = 4
    if "bf16" in args:  # GPU/TPU: bfloat16 compute, float32 parameters
        config = bfloat16(config)
    return config
