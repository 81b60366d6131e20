r"""SmallBig-R101, 8 frames at stride 8, Kinetics-400, official recipe.

Reproduces: the paper's headline Kinetics-400 result, 77.4 top-1 / 93.3 top-5 with 10 clips x 3 crops (spec,
section 7: the 77.4 is confirmed; that it is R101 8x8 is the spec's best reading). 43,414,992 parameters,
105.25 GMACs per view. Official run: 8 GPUs x 8 clips, 100 epochs. Initialise from an ImageNet ResNet-101 (the
official code loads ResNet-50 weights here by mistake; spec, section 2.5).

  python scripts/model_summary.py --config configs/kinetics400_smallbig101_8x8.py
"""

from smallbig_jax.config import official_recipe, runlocal


def get_config(arg: str | None = None):
    config = official_recipe(variant="smallbig101", num_classes=400, num_frames=8, dataset="kinetics400", sampling="dense")
    if arg == "runlocal":
        config = runlocal(config)
    return config
