"""The official training recipe as a ConfigDict, and the one check of a config's values.

Config files in `configs/` start from `official_recipe()` and change what their dataset needs. Loading one imports
this module, the data options (`smallbig_jax.data.config`) and the variant table (`smallbig_jax.variants`), never
JAX, the model or the input pipeline (grain, PyAV, TFDS): a config loads in a fraction of a second (BENCHMARKS.md,
"Loading a config"). `check_config` checks every field against one table of valid ranges (`RULES`) before anything
runs; `REFUSED_ON_RESUME` says which fields a run cannot resume under with another value. The numbers are those of
the official code (docs/protocol.md#training-recipe): 8 GPUs x 8 clips, SGD momentum 0.9, lr 0.01, weight decay
1e-4 on every parameter, cosine decay stepped per epoch over 100 epochs, no warm-up, no label smoothing, no dropout.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections
import numpy as np

from smallbig_jax.data.config import default_data_config
from smallbig_jax.errors import ConfigError
from smallbig_jax.variants import VARIANTS

DTYPES = ("float32", "bfloat16", "float16")  # names of the compute and parameter dtypes a config may ask for
# How the model writes the ops whose fastest form depends on the compiler (smallbig_jax/models/smallbig.py): "auto"
# is "cpu" on a CPU backend and "plain" elsewhere. Named here, not imported, so that a config loads without JAX.
FORMULATIONS = ("auto", "plain", "cpu")


def official_recipe(
    *, variant: str, num_classes: int, num_frames: int, dataset: str, sampling: str
) -> ml_collections.ConfigDict:
    """The recipe of the official `scripts/kinetics.sh` / `main.py` for one model and dataset."""
    config = ml_collections.ConfigDict()
    config.seed = 1  # torch.manual_seed(1) in the official main.py

    config.model = ml_collections.ConfigDict(
        dict(
            variant=variant,
            num_classes=num_classes,
            base_width=64,
            dtype="float32",
            param_dtype="float32",
            formulation="auto",
        )
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


def bfloat16(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config` computing in bfloat16, parameters, optimizer state and BatchNorm statistics in float32 (the configs'
    "bf16" argument): what GPUs with tensor cores and TPUs run fastest. float32 stays the default because it is what
    matches the official PyTorch numbers."""
    config.model.dtype = "bfloat16"
    config.model.param_dtype = "float32"
    return config


def config_args(arg: str | None, allowed: Mapping[str, str]) -> dict[str, str | bool]:
    """A config file's comma-separated argument (`"tiny,dir=D"` after the colon of `--config=file.py:tiny,dir=D`) as
    `{"tiny": True, "dir": "D"}`. `allowed` maps each argument the file takes to what it does; a key written
    `name=VALUE` takes a value, a plain `name` is a switch. Raises `ConfigError` for an unknown or misused argument,
    listing the ones the file takes (a typo such as `tinny` must not silently train another model)."""
    takes_value = {key.partition("=")[0]: "=" in key for key in allowed}
    listed = "; ".join(f"{key}: {what}" for key, what in allowed.items()) or "none"
    out: dict[str, str | bool] = {}
    for item in (arg or "").split(","):
        item = item.strip()
        if not item:
            continue
        name, eq, value = item.partition("=")
        if name not in takes_value:
            near = difflib.get_close_matches(name, list(takes_value), n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ConfigError(f"unknown config argument {name!r}{hint}; this config file takes: {listed}")
        if bool(eq) != takes_value[name]:
            form = f"{name}=VALUE" if takes_value[name] else name
            raise ConfigError(f"config argument {item!r}: expected {form!r}; this config file takes: {listed}")
        out[name] = value if eq else True
    return out


# --- The one config check ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Rule:
    """A field's valid values: `valid(value)` and the same in words for the message."""

    valid: Callable[[Any], bool]
    expected: str


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, (float, np.floating))) and math.isfinite(v)


def integer(low: int, high: int | None = None) -> Rule:
    words = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
    return Rule(lambda v: _is_int(v) and v >= low and (high is None or v <= high), words)


def number(low: float, high: float | None = None, *, low_open: bool = False, high_open: bool = False) -> Rule:
    """A finite real in the interval; `low_open`/`high_open` exclude the bounds."""
    above = (lambda v: v > low) if low_open else (lambda v: v >= low)
    below = (lambda v: True) if high is None else (lambda v: v < high) if high_open else (lambda v: v <= high)
    words = f"a number {'>' if low_open else '>='} {low}"
    if high is not None:
        words = f"a number in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    return Rule(lambda v: _is_number(v) and above(v) and below(v), words)


def one_of(*choices: Any) -> Rule:
    return Rule(lambda v: not isinstance(v, bool) and v in choices, "one of " + ", ".join(map(repr, choices)))


BOOLEAN = Rule(lambda v: isinstance(v, bool), "True or False")
TEXT = Rule(lambda v: isinstance(v, str), "a string")
SCALES = Rule(
    lambda v: isinstance(v, (tuple, list)) and len(v) > 0 and all(_is_number(s) and 0 < s <= 1 for s in v),
    "a non-empty list of numbers in (0, 1]",
)

# Every field of the recipe (`official_recipe`) and of the data config (`default_data_config`): add a row with each
# new field. `check_config` refuses a field that has no row, which catches misspelt fields in config files.
RULES: dict[str, Rule] = {
    "seed": integer(0),
    "dataset": TEXT,
    "model.variant": one_of(*VARIANTS),
    "model.num_classes": integer(1),
    "model.base_width": integer(1),
    "model.dtype": one_of(*DTYPES),
    "model.param_dtype": one_of(*DTYPES),
    "model.formulation": one_of(*FORMULATIONS),
    "batch_size": integer(1),
    "num_epochs": integer(1),
    "optimizer.name": one_of("sgd"),
    "optimizer.momentum": number(0, 1, high_open=True),
    "optimizer.nesterov": BOOLEAN,
    "optimizer.weight_decay": number(0),
    "optimizer.decay_all_params": BOOLEAN,
    "schedule.base_lr": number(0, low_open=True),
    "schedule.decay": one_of("cosine", "constant"),
    "schedule.per_epoch": BOOLEAN,
    "schedule.warmup_epochs": number(0),
    "schedule.end_lr": number(0),
    "label_smoothing": number(0, 1, high_open=True),
    "grad_clip_norm": number(0),
    "grad_accum_steps": integer(1),
    "ema_decay": number(0, 1, high_open=True),
    "batchnorm": one_of("per_device", "global"),
    "params_sharding": one_of("replicate", "fsdp"),
    "init_from": TEXT,
    "log_every": integer(1),
    "checkpoint_every": integer(1),
    "keep_checkpoints": integer(1),
    "eval_every_epochs": integer(0),
    "eval_batch_size": integer(1),
    "eval_average": one_of("softmax", "logits"),
    "final_eval": BOOLEAN,
    "compilation_cache": Rule(lambda v: isinstance(v, str), "'user', 'workdir', '' (off) or a folder"),
    "xla_gpu_flags": Rule(
        lambda v: isinstance(v, str) and all(f.startswith("--xla_") for f in v.split()),
        "space-separated --xla_... flags or ''",
    ),
    "profile_steps": integer(0),
    "data.format": one_of("frames", "video", "arrayrecord"),
    "data.root": TEXT,
    "data.train_list": TEXT,
    "data.val_list": TEXT,
    "data.frame_template": Rule(
        lambda v: isinstance(v, str) and "{" in v, "a str.format template such as 'img_{:05d}.jpg'"
    ),
    "data.kinetics_ids": BOOLEAN,
    "data.arrayrecord_dir": TEXT,
    "data.train_split": TEXT,
    "data.val_split": TEXT,
    "data.num_frames": integer(1),
    "data.stride": integer(1),
    "data.sampling": one_of("dense", "segment"),
    "data.crop_size": integer(1),
    "data.scale_size": integer(1),
    "data.train_short_side": integer(0),
    "data.scales": SCALES,
    "data.max_distort": integer(0),
    "data.flip": BOOLEAN,
    "data.num_clips": integer(1),
    "data.num_crops": one_of(1, 3),
    "data.bad_input": one_of("error", "resample"),
    "data.max_resample": integer(0),
    "data.eval_bad_input": one_of("error", "exclude"),
    "data.worker_count": integer(0),
    "data.worker_buffer_size": integer(1),
    "data.reader_threads": integer(1),
    "data.reader_buffer": integer(1),
    "data.device_prefetch": integer(1),
    "data.dtype": one_of(*DTYPES),
    "data.decode_threads": BOOLEAN,
}

# Rules between fields: (fields named in the message, valid(config), what is expected).
CROSS_RULES: list[tuple[tuple[str, ...], Callable[[Any], bool], str]] = [
    (
        ("batch_size", "grad_accum_steps"),
        lambda c: c.batch_size % c.grad_accum_steps == 0,
        "batch_size divisible by grad_accum_steps",
    ),
    (
        ("data.scale_size", "data.crop_size"),
        lambda c: c.data.scale_size >= c.data.crop_size,
        "data.scale_size >= data.crop_size (evaluation crops are cut from the resized frames)",
    ),
    (
        ("data.sampling", "data.num_clips"),
        lambda c: c.data.sampling != "segment" or c.data.num_clips in (1, 2),
        "data.num_clips 1 or 2 with segment sampling",
    ),
    (
        ("data.format", "data.train_list", "data.val_list"),
        lambda c: c.data.format == "arrayrecord" or bool(c.data.train_list or c.data.val_list),
        "data.train_list or data.val_list set when data.format is 'frames' or 'video'",
    ),
]


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """`{"a.b": value}` for every leaf of a (ConfigDict or plain) nested mapping."""
    if isinstance(tree, ml_collections.ConfigDict):
        tree = tree.to_dict()
    out = {}
    for key, value in tree.items():
        if isinstance(value, (dict, ml_collections.ConfigDict)):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raises `ConfigError` naming every field whose value is outside `RULES` (or that has no rule), before
    anything reads data or compiles."""
    values = flatten(config)
    problems = [
        f"config.{field}={values[field]!r}: expected {rule.expected}"
        for field, rule in RULES.items()
        if field in values and not rule.valid(values[field])
    ]
    problems += [
        f"config.{field}: missing (expected {rule.expected})" for field, rule in RULES.items() if field not in values
    ]
    problems += [
        f"config.{field}={values[field]!r}: not a field of the recipe (misspelt?)"
        for field in values
        if field not in RULES
    ]
    if not problems:  # cross-field rules assume each field is valid on its own
        problems += [
            ", ".join(f"config.{f}={values[f]!r}" for f in fields) + f": expected {expected}"
            for fields, valid, expected in CROSS_RULES
            if not valid(config)
        ]
    if problems:
        raise ConfigError(
            "invalid config: " + problems[0] if len(problems) == 1 else "invalid config:\n  " + "\n  ".join(problems)
        )


# --- What a resume accepts --------------------------------------------------------------------------------------

# Fields (or groups, ending in ".") a run cannot resume under with another value: the checkpoint's state has other
# shapes or means something else (model, optimizer, schedule, loss, EMA, BatchNorm, the training clips), or its data
# position means something else (`seed`: the data order). `num_epochs`, `batch_size` and `grad_accum_steps` may change
# (`train.check_resume` continues in samples, or refuses what cannot be carried, naming it); every other field
# (logging, checkpoint cadence, evaluation, data paths, loader threads) just changes.
# `RESUMABLE` lists the exceptions inside a refused group: `model.formulation` changes how the same parameters are
# computed, not what they are (a checkpoint saved without the field resumes too).
RESUMABLE = ("model.formulation",)
REFUSED_ON_RESUME = (
    "seed",
    "model.",
    "optimizer.",
    "schedule.",
    "label_smoothing",
    "grad_clip_norm",
    "ema_decay",
    "batchnorm",
    "data.num_frames",
    "data.stride",
    "data.sampling",
    "data.crop_size",
    "data.train_short_side",
    "data.scales",
    "data.max_distort",
    "data.flip",
)


def resume_changes(saved: dict, config: ml_collections.ConfigDict) -> tuple[list[str], list[str]]:
    """(refused, accepted) differences between the config saved with a checkpoint and `config`, each as
    `field: old -> new`."""
    old, new = flatten(saved), flatten(json.loads(config.to_json_best_effort()))
    refused, accepted = [], []
    for field in sorted(old.keys() | new.keys()):
        before, after = old.get(field, "(absent)"), new.get(field, "(absent)")
        if before != after:
            refuse = field not in RESUMABLE and any(
                field == p or (p.endswith(".") and field.startswith(p)) for p in REFUSED_ON_RESUME
            )
            (refused if refuse else accepted).append(f"{field}: {before!r} -> {after!r}")
    return refused, accepted
