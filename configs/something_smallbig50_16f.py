r"""SmallBig-R50, 16 frames (TSN segment sampling), Something-Something V1 or V2 (174 classes).

Reproduces: the paper's SmallBig-R50 16-frame Something-Something V1 result, 49.3 / 79.5 top-1 / top-5 with 2 clips
x 3 crops (recalled figures; docs/protocol.md#reported-results). 23,907,566 parameters, 103.26 GMACs per view. No
official script exists for Something-Something: the recipe is main.py's, with flip off (labels name left and right).
The argument picks the dataset: "v1" (default) or "v2"; "runlocal" (or "v2,runlocal") shrinks everything;
"bf16" (e.g. "v2,bf16") computes in bfloat16 with float32 parameters, the setting for GPUs and TPUs.

  smallbig-jax summary --config configs/something_smallbig50_16f.py:v2
"""

from smallbig_jax.config import bfloat16, config_args, official_recipe, runlocal

ARGS = {
    "v1": "Something-Something V1 (the default)",
    "v2": "Something-Something V2",
    "runlocal": "the run shrunk to one CPU",
    "bf16": "bfloat16 compute, float32 parameters",
}


def get_config(arg: str | None = None):
    args = config_args(arg, ARGS)
    version = "v2" if "v2" in args else "v1"
    config = official_recipe(
        variant="smallbig50", num_classes=174, num_frames=16, dataset=f"something_{version}", sampling="segment"
    )
    if "runlocal" in args:
        config = runlocal(config)
    if "bf16" in args:  # GPU/TPU: bfloat16 compute, float32 parameters
        config = bfloat16(config)
    return config
