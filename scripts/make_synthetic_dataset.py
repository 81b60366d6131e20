"""Writes the embedded synthetic dataset: real mp4 files, list files and the ArrayRecord (TFDS) form.

Five classes, the axis of motion of a shape (still, horizontal, vertical, diagonal, anti-diagonal): they need
temporal context but not temporal order, which SmallBigNet cannot see (docs/model.md#consequences-worth-knowing).
Deterministic in ``--seed``; 1,200 videos of 16 frames at 64x80 in about 10 seconds on 2 cores::

  python scripts/make_synthetic_dataset.py --out data/synthetic

Read it with ``smallbig_jax.data.synthetic.data_config("data/synthetic")``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from smallbig_jax import cli  # noqa: E402
from smallbig_jax.data import synthetic, writers  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="data/synthetic")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num_train", type=int, default=1000)
    p.add_argument("--num_val", type=int, default=200)
    p.add_argument("--num_frames", type=int, default=16)
    p.add_argument("--size", type=int, default=64, help="frame height (the width is 5/4 of it)")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--no_arrayrecord", action="store_true")
    p.add_argument(
        "--if_missing",
        action="store_true",
        help="do nothing if --out already holds this dataset (same generator version and arguments)",
    )
    a = p.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(cli.user_errors_exit(main)())  # bad input: its message and exit status 2
