"""Writes a frame-folder or video dataset as ArrayRecord shards through the project's TFDS builder.

One record per video (label, frame count, and JPEG frames or the video file's bytes). Every list line and label
(in ``[0, num_classes)``) is checked first: a bad one stops with ``<list file>:<line>: <what is wrong>`` before
anything is written. Runs in parallel with a progress bar, prints the count per split and writes the videos it
could not read to ``<out>/failed_<split>.txt`` instead of stopping. Example::

  python scripts/prepare_dataset.py --input_format video --num_classes 5 --root data/synthetic/videos \\
      --split train=data/synthetic/train.txt --split val=data/synthetic/val.txt \\
      --config jpeg --out data/synthetic/arrayrecord

Read it back with ``format='arrayrecord', arrayrecord_dir=<out>`` in the data config.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from smallbig_jax import cli  # noqa: E402
from smallbig_jax.data import prepare  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input_format", choices=["frames", "video"], required=True)
    p.add_argument("--num_classes", type=int, required=True, help="labels must be in [0, num_classes)")
    p.add_argument("--root", default="", help="folder the list's names/paths are relative to")
    p.add_argument("--split", action="append", required=True, metavar="NAME=LIST", help="a split and its list file")
    p.add_argument("--config", choices=["jpeg", "video"], default="jpeg", help="store JPEG frames or video bytes")
    p.add_argument("--out", required=True, help="TFDS data dir to write")
    p.add_argument("--template", default="img_{:05d}.jpg")
    p.add_argument("--kinetics_ids", action="store_true")
    p.add_argument("--short_side", type=int, default=0, help="resize frames so the short side is this (jpeg)")
    p.add_argument("--quality", type=int, default=90)
    p.add_argument("--workers", type=int, default=os.cpu_count())
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--overwrite", action="store_true", help="rebuild an existing dataset")
    a = p.parse_args(argv)
    splits = dict(s.split("=", 1) for s in a.split)
    counts = prepare.prepare_dataset(  # a bad list line or label: DataError, before anything is written
        a.out,
        splits,
        input_format=a.input_format,
        num_classes=a.num_classes,
        root=a.root,
        config=a.config,
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


if __name__ == "__main__":
    sys.exit(cli.user_errors_exit(main)())  # bad input: its message and exit status 2
