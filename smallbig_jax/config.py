"""The official training recipe as a ConfigDict, and building a model from a config.

Config files in `configs/` start from `official_recipe()` and change what their dataset needs. The numbers are those
of the official code (spec, section 4): 8 GPUs x 8 clips, SGD momentum 0.9, lr 0.01, weight decay 1e-4 on every
parameter, cosine decay stepped per epoch over 100 epochs, no warm-up, no label smoothing, no dropout.
"""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections

from smallbig_jax.data.pipeline import default_data_config
from smallbig_jax.models.smallbig import VARIANTS, SmallBigNet, build_model

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def official_recipe(
    *, variant: str, num_classes: int, num_frames: int, dataset: str, sampling: str
) -> ml_collections.ConfigDict:
    """The recipe of the official `scripts/kinetics.sh` / `main.py` for one model and dataset."""
    config = ml_collections.ConfigDict()
    config.seed = 1  # torch.manual_seed(1) in the official main.py

    config.model = ml_collections.ConfigDict(
        dict(variant=variant, num_classes=num_classes, base_width=64, dtype="float32", param_dtype="float32")
    )

    config.data = default_data_config()  # every field is documented there
    config.data.num_frames = num_frames
    config.data.sampling = sampling  # "dense" (Kinetics) or "segment" (TSN, Something-Something)
    config.data.stride = 8  # dense sampling only; ignored by segment sampling, as officially
    config.data.crop_size = 224
    config.data.scale_size = 256  # short side before the evaluation crops
    config.data.train_short_side = 320  # the official frames were extracted at short side 320
    config.data.scales = (1.0, 0.875, 0.75, 0.66)
    config.data.flip = sampling == "dense"  # off for Something-Something: its labels name left and right
    config.data.num_clips = 10 if sampling == "dense" else 2  # final multi-view test
    config.data.num_crops = 3  # 256x256 crops: centre, top-left, bottom-right
    config.dataset = dataset

    config.batch_size = 64  # global: 8 GPUs x 8 clips
    config.num_epochs = 100
    config.optimizer = ml_collections.ConfigDict(
        dict(name="sgd", momentum=0.9, nesterov=False, weight_decay=1e-4, decay_all_params=True)
    )
    config.schedule = ml_collections.ConfigDict(
        dict(base_lr=0.01, decay="cosine", per_epoch=True, warmup_epochs=0, end_lr=0.0)
    )
    config.label_smoothing = 0.0
    config.grad_clip_norm = 0.0  # 0: no clipping (official)
    config.grad_accum_steps = 1  # micro-batches per step; BatchNorm statistics are per micro-batch
    config.ema_decay = 0.0  # 0: no EMA of the weights; else evaluation uses the EMA weights
    # "per_device": statistics over each device's part of the batch, like the official per-GPU BatchNorm (DDP);
    # "global": over the whole global batch (what a plain jit gives; SyncBN-like, one all-reduce per BN layer).
    config.batchnorm = "per_device"
    config.params_sharding = "replicate"  # or "fsdp" (smallbig_jax/sharding.py)
    config.init_from = ""  # torchvision ImageNet .pth, official SmallBigNet .pth or converted dir
    config.log_every = 20  # steps
    config.checkpoint_every = 1000  # steps; also at every evaluation and at the end
    config.keep_checkpoints = 2  # the last ones; the best by (top1 + top5) / 2 is kept as well
    config.eval_every_epochs = 1  # single-view validation during training; 0: never
    config.eval_batch_size = 64  # views per evaluation step (global)
    config.eval_average = "softmax"  # per-video fusion of view scores: "softmax" or "logits"
    config.final_eval = True  # full multi-view test (num_clips x num_crops) at the end
    # Accelerator defaults (smallbig_jax/runtime.py): compiled programs cached across runs ("user": ~/.cache,
    # "workdir", "" off, or a folder); XLA flags for GPUs; a profiler trace of this many steps (0: none).
    config.compilation_cache = "user"
    config.xla_gpu_flags = "--xla_gpu_enable_latency_hiding_scheduler=true"
    config.profile_steps = 0
    return config


def runlocal(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The same design shrunk to run on one CPU in seconds: narrow network, tiny clips, small batch, one epoch."""
    config.model.base_width = 8
    config.data.crop_size = 64
    config.data.scale_size = 64
    config.batch_size = 4
    config.num_epochs = 1
    return config


def model_from_config(model_config: ml_collections.ConfigDict, seed: int = 0) -> SmallBigNet:
    """A fresh model for `config.model`, with dtype names checked."""
    for key in ("dtype", "param_dtype"):
        if model_config[key] not in DTYPES:
            raise ValueError(f"config.model.{key}={model_config[key]!r}; expected one of {sorted(DTYPES)}")
    if model_config.variant not in VARIANTS:
        raise ValueError(f"config.model.variant={model_config.variant!r}; expected one of {sorted(VARIANTS)}")
    return build_model(
        model_config.variant,
        model_config.num_classes,
        base_width=model_config.base_width,
        dtype=DTYPES[model_config.dtype],
        param_dtype=DTYPES[model_config.param_dtype],
        seed=seed,
    )
