"""Writes a frame-folder or video dataset as ArrayRecord shards through the project's TFDS builder.

One record per video (label, frame count, and JPEG frames or the video file's bytes). Every list line and label
(in ``[0, num_classes)``) is checked first: a bad one stops with ``<list file>:<line>: <what is wrong>`` before
anything is written. Runs in parallel with a progress bar, prints the count per split and writes the videos it
could not read to ``<out>/failed_<split>.txt`` instead of stopping. Example::

  smallbig-jax prepare --input_format video --num_classes 5 --root data/synthetic/videos \\
      --split train=data/synthetic/train.txt --split val=data/synthetic/val.txt \\
      --storage jpeg --out data/synthetic/arrayrecord

Read it back with ``format='arrayrecord', arrayrecord_dir=<out>`` in the data config. There is no config to take:
the lists, labels and storage named here are what is written (``--storage`` is the TFDS builder config,
``small_big_video/<storage>``).
"""

from __future__ import annotations

import os

from absl import flags

from smallbig_jax import cli
from smallbig_jax.data import prepare

FLAGS = flags.FlagValues()
flags.DEFINE_enum("input_format", None, ["frames", "video"], "frame folders or video files", flag_values=FLAGS)
flags.DEFINE_integer("num_classes", None, "labels must be in [0, num_classes)", flag_values=FLAGS)
flags.DEFINE_string("root", "", "folder the list's names/paths are relative to", flag_values=FLAGS)
flags.DEFINE_multi_string(
    "split", None, "NAME=LIST: a split and its list file (repeat for each split)", flag_values=FLAGS
)
flags.DEFINE_enum("storage", "jpeg", ["jpeg", "video"], "store JPEG frames or video bytes", flag_values=FLAGS)
flags.DEFINE_string("out", None, "TFDS data dir to write", flag_values=FLAGS)
flags.DEFINE_string("template", "img_{:05d}.jpg", "frame file names in a folder", flag_values=FLAGS)
flags.DEFINE_bool("kinetics_ids", False, "list names are Kinetics ids", flag_values=FLAGS)
flags.DEFINE_integer("short_side", 0, "resize frames so the short side is this (jpeg; 0: keep)", flag_values=FLAGS)
flags.DEFINE_integer("quality", 90, "JPEG quality", flag_values=FLAGS)
flags.DEFINE_integer("workers", os.cpu_count(), "worker processes", flag_values=FLAGS)
flags.DEFINE_bool("quiet", False, "no progress bar", flag_values=FLAGS)
flags.DEFINE_bool("overwrite", False, "rebuild an existing dataset", flag_values=FLAGS)
flags.mark_flags_as_required(["input_format", "num_classes", "split", "out"], flag_values=FLAGS)
cli.define_debug_flag(FLAGS)


def main() -> int:
    a = FLAGS
    splits = dict(s.split("=", 1) for s in a.split)
    counts = prepare.prepare_dataset(  # a bad list line or label: DataError, before anything is written
        a.out,
        splits,
        input_format=a.input_format,
        num_classes=a.num_classes,
        root=a.root,
        config=a.storage,
        template=a.template,
        kinetics_ids=a.kinetics_ids,
        short_side=a.short_side or None,
        quality=a.quality,
        workers=a.workers,
        progress=not a.quiet,
        overwrite=a.overwrite,
    )
    for split, (ok, failed) in counts.items():
        print(
            f"{split}: {ok} videos written, {failed} unreadable"
            + (f" (listed in {os.path.join(a.out, f'failed_{split}.txt')})" if failed else "")
        )
    return 0
