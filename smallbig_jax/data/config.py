"""Every data option with its default and its rule, side by side, without loading the input pipeline (grain, PyAV,
JAX): a config file builds its data config from `default_data_config()` in a fraction of a second, and
`smallbig_jax.config.check_config` checks it against `DATA_RULES` and `DATA_CROSS_RULES`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ml_collections

from smallbig_jax.rules import BOOLEAN, DTYPES, SCALES, TEXT, Rule, integer, one_of

# The official multi-scale crop's scales (`GroupMultiScaleCrop`, docs/protocol.md#training-recipe).
MULTISCALE_SCALES = (1.0, 0.875, 0.75, 0.66)

# Every data option: name -> (default, rule). A new option is one row here.
FIELDS: dict[str, tuple[Any, Rule]] = {
    "format": ("arrayrecord", one_of("frames", "video", "arrayrecord")),
    "root": ("", TEXT),
    "train_list": ("", TEXT),
    "val_list": ("", TEXT),
    "frame_template": (
        "img_{:05d}.jpg",
        Rule(lambda v: isinstance(v, str) and "{" in v, "a str.format template such as 'img_{:05d}.jpg'"),
    ),
    "kinetics_ids": (False, BOOLEAN),
    "arrayrecord_dir": ("", TEXT),
    "train_split": ("train", TEXT),
    "val_split": ("val", TEXT),
    "num_frames": (8, integer(1)),
    "stride": (8, integer(1)),
    "sampling": ("dense", one_of("dense", "segment")),
    "crop_size": (224, integer(1)),
    "scale_size": (256, integer(1)),
    "train_short_side": (0, integer(0)),
    "scales": (MULTISCALE_SCALES, SCALES),
    "max_distort": (1, integer(0)),
    "flip": (True, BOOLEAN),
    "num_clips": (1, integer(1)),
    "num_crops": (1, one_of(1, 3)),
    "bad_input": ("error", one_of("error", "resample")),
    "max_resample": (10, integer(0)),
    "eval_bad_input": ("error", one_of("error", "exclude")),
    "worker_count": (0, integer(0)),
    "worker_buffer_size": (2, integer(1)),
    "reader_threads": (2, integer(1)),
    "reader_buffer": (2, integer(1)),
    "device_prefetch": (2, integer(1)),
    "dtype": ("float32", one_of(*DTYPES)),
    "decode_threads": (False, BOOLEAN),
}

# The rules of the data options as `config.RULES` names them.
DATA_RULES: dict[str, Rule] = {f"data.{field}": rule for field, (_, rule) in FIELDS.items()}

# Rules between data options: (fields named in the message, valid(data config), what is expected).
DATA_CROSS_RULES: list[tuple[tuple[str, ...], Callable[[Any], bool], str]] = [
    (
        ("data.scale_size", "data.crop_size"),
        lambda d: d.scale_size >= d.crop_size,
        "data.scale_size >= data.crop_size (evaluation crops are cut from the resized frames)",
    ),
    (
        ("data.sampling", "data.num_clips"),
        lambda d: d.sampling != "segment" or d.num_clips in (1, 2),
        "data.num_clips 1 or 2 with segment sampling",
    ),
    (
        ("data.format", "data.train_list", "data.val_list"),
        lambda d: d.format == "arrayrecord" or bool(d.train_list or d.val_list),
        "data.train_list or data.val_list set when data.format is 'frames' or 'video'",
    ),
]


def default_data_config() -> ml_collections.ConfigDict:
    """Every data option and its default (Kinetics-style dense 8x8, 224 crops). Fields:

    * ``format``: 'frames' (frame folders), 'video' (files decoded by PyAV) or 'arrayrecord' (prepared TFDS).
    * ``root``, ``train_list``, ``val_list``: list files and the folder their names are relative to
      (frames/video). ``frame_template`` (1-based), ``kinetics_ids`` (folders named by the 11-char YouTube ID).
    * ``arrayrecord_dir``, ``train_split``, ``val_split``: the prepared dataset and its split names.
    * ``num_frames`` (T), ``stride``, ``sampling`` ('dense' Kinetics / 'segment' Something-Something).
    * ``crop_size``, ``scale_size`` (eval short side), ``train_short_side`` (0: as stored; 320 mimics the
      official rawframes_320), ``scales``, ``max_distort``, ``flip`` (off for Something-Something).
    * ``num_clips``, ``num_crops`` (1 or 3): eval views per video.
    * ``bad_input`` ('error'|'resample'), ``max_resample``, ``eval_bad_input`` ('error'|'exclude').
    * ``worker_count``, ``worker_buffer_size`` (grain worker processes and batches queued per worker),
      ``reader_threads``, ``reader_buffer`` (threads computing batches in each process, batches they may hold),
      ``device_prefetch`` (global batches on the devices ahead), ``dtype``, ``decode_threads`` (PyAV threads).
    """
    c = ml_collections.ConfigDict()
    for field, (default, _) in FIELDS.items():  # assigned in order: the saved config lists them so
        c[field] = default
    return c
