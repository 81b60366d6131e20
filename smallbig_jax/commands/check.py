"""Decodes every video of a list (or a prepared ArrayRecord split) and reports each broken entry.

Missing files and frame folders, missing frames, corrupt or truncated videos, videos with fewer frames than
the list claims and labels outside ``[0, num_classes)`` are printed as ``<list file>:<line>: <what is wrong>``; the
exit status is 1 if any. A malformed list line or label stops the check at that line. The dataset is the split
`--split` of a training config's `config.data` (`--config`, with its `model.num_classes`), or, before there is a
config, the one the flags name. Examples::

  smallbig-jax check --config=configs/synthetic_smallbig.py --split=val

  smallbig-jax check --num_classes 5 --format video --list data/synthetic/train.txt \
      --root data/synthetic/videos
  smallbig-jax check --num_classes 400 --format frames --list k400_train.txt --root rawframes \
      --kinetics_ids
  smallbig-jax check --num_classes 5 --format arrayrecord --arrayrecord_dir data/synthetic/arrayrecord \
      --split val
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

from smallbig_jax import cli
from smallbig_jax.data import check, sources
from smallbig_jax.data.config import default_data_config
from smallbig_jax.data.lists import DataError

FLAGS = flags.FlagValues()
_CONFIG = cli.define_config_flag(
    FLAGS, "A training config whose dataset is checked (then the flags below but --split are not needed)."
)
flags.DEFINE_enum("format", None, ["frames", "video", "arrayrecord"], "how the dataset is stored", flag_values=FLAGS)
flags.DEFINE_integer("num_classes", None, "labels must be in [0, num_classes)", flag_values=FLAGS)
flags.DEFINE_string("list", None, "list file (frames, video)", flag_values=FLAGS)
flags.DEFINE_string("root", "", "folder the list's names/paths are relative to", flag_values=FLAGS)
flags.DEFINE_string("template", "img_{:05d}.jpg", "frame file names in a folder", flag_values=FLAGS)
flags.DEFINE_bool("kinetics_ids", False, "list names are Kinetics ids", flag_values=FLAGS)
flags.DEFINE_string("arrayrecord_dir", None, "prepared dataset (arrayrecord)", flag_values=FLAGS)
flags.DEFINE_string("split", "train", "split name", flag_values=FLAGS)
flags.DEFINE_integer("workers", os.cpu_count(), "worker processes", flag_values=FLAGS)
flags.DEFINE_string("out", None, "also write the broken entries to this file", flag_values=FLAGS)
flags.DEFINE_bool("quiet", False, "no progress bar", flag_values=FLAGS)
cli.define_debug_flag(FLAGS)


def main() -> int:
    a = FLAGS
    if _CONFIG.value is not None:
        config = cli.config_value(_CONFIG)
        data, num_classes = config.data, config.model.num_classes
    else:
        if a.format is None or a.num_classes is None:
            raise app.UsageError("give --config, or --format and --num_classes (and the dataset's flags)")
        # The data config the flags name: the list (frames, video) or the ArrayRecord split to check.
        data, num_classes = default_data_config(), a.num_classes
        data.update(format=a.format, root=a.root, frame_template=a.template, kinetics_ids=a.kinetics_ids)
        data.arrayrecord_dir = a.arrayrecord_dir or ""
        data[f"{a.split}_list"], data[f"{a.split}_split"] = a.list or "", a.split
    try:
        source = sources.make_source(data, a.split, num_classes)
    except DataError as err:  # A malformed list line: nothing else can be checked before it is fixed.
        print(err)
        return 1
    broken = check.check_source(source, a.workers, progress=not a.quiet)
    for line in broken:
        print(line)
    if a.out:
        with open(a.out, "w") as f:
            f.writelines(line + "\n" for line in broken)
    print(f"{len(source) - len(broken)} of {len(source)} videos readable, {len(broken)} broken", file=sys.stderr)
    return 1 if broken else 0
