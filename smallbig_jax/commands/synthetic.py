"""Writes the embedded synthetic dataset: real mp4 files, list files and the ArrayRecord (TFDS) form.

Five classes, the axis of motion of a shape (still, horizontal, vertical, diagonal, anti-diagonal): they need
temporal context but not temporal order, which SmallBigNet cannot see (docs/model.md#consequences-worth-knowing).
Deterministic in ``--seed``; 1,200 videos of 16 frames at 64x80 in about 10 seconds on 2 cores::

  smallbig-jax synthetic --out data/synthetic

Read it with ``smallbig_jax.data.synthetic.data_config("data/synthetic")``.
"""

from __future__ import annotations

import os
import time

from absl import flags

from smallbig_jax import cli
from smallbig_jax.data import synthetic, writers

FLAGS = flags.FlagValues()
flags.DEFINE_string("out", "data/synthetic", "folder to write", flag_values=FLAGS)
flags.DEFINE_integer("seed", 0, "generator seed", flag_values=FLAGS)
flags.DEFINE_integer("num_train", 1000, "training videos", flag_values=FLAGS)
flags.DEFINE_integer("num_val", 200, "validation videos", flag_values=FLAGS)
flags.DEFINE_integer("num_frames", 16, "frames per video", flag_values=FLAGS)
flags.DEFINE_integer("size", 64, "frame height (the width is 5/4 of it)", flag_values=FLAGS)
flags.DEFINE_integer("workers", min(2, os.cpu_count() or 1), "worker processes", flag_values=FLAGS)
flags.DEFINE_bool("no_arrayrecord", False, "skip the ArrayRecord form", flag_values=FLAGS)
flags.DEFINE_bool(
    "if_missing",
    False,
    "do nothing if --out already holds this dataset (same generator version and arguments)",
    flag_values=FLAGS,
)
cli.define_debug_flag(FLAGS)


def main() -> int:
    a = FLAGS
    shape = dict(
        seed=a.seed,
        num_train=a.num_train,
        num_val=a.num_val,
        num_frames=a.num_frames,
        size=a.size,
        arrayrecord=not a.no_arrayrecord,
    )
    if a.if_missing and synthetic.is_written(a.out, **shape):
        print(f"{a.out} already holds the synthetic dataset")
        return 0
    t = time.time()
    counts = writers.write_synthetic_dataset(a.out, **shape, workers=a.workers)
    print(f"wrote {counts} videos ({', '.join(synthetic.CLASSES)}) to {a.out} in {time.time() - t:.1f} s")
    return 0
