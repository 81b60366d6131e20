"""Decodes every video of a list (or a prepared ArrayRecord split) and reports each broken entry.

Missing files and frame folders, missing frames, corrupt or truncated videos, videos with fewer frames than
the list claims and labels outside ``[0, num_classes)`` are printed as ``<list file>:<line>: <what is wrong>``; the
exit status is 1 if any. A malformed list line or label stops the check at that line. Examples::

  python scripts/check_dataset.py --num_classes 5 --format video --list data/synthetic/train.txt \
      --root data/synthetic/videos
  python scripts/check_dataset.py --num_classes 400 --format frames --list k400_train.txt --root rawframes \
      --kinetics_ids
  python scripts/check_dataset.py --num_classes 5 --format arrayrecord --arrayrecord_dir data/synthetic/arrayrecord \
      --split val
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from smallbig_jax import cli  # noqa: E402
from smallbig_jax.data import check, sources  # noqa: E402
from smallbig_jax.data.lists import DataError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--format", choices=["frames", "video", "arrayrecord"], required=True)
    p.add_argument("--num_classes", type=int, required=True, help="labels must be in [0, num_classes)")
    p.add_argument("--list", help="list file (frames, video)")
    p.add_argument("--root", default="")
    p.add_argument("--template", default="img_{:05d}.jpg")
    p.add_argument("--kinetics_ids", action="store_true")
    p.add_argument("--arrayrecord_dir")
    p.add_argument("--split", default="train")
    p.add_argument("--workers", type=int, default=os.cpu_count())
    p.add_argument("--out", help="also write the broken entries to this file")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    # The fields of a data config that name the list (frames, video) or the ArrayRecord split to check.
    data = {
        "format": a.format,
        "root": a.root,
        "frame_template": a.template,
        "kinetics_ids": a.kinetics_ids,
        "decode_threads": False,
        "arrayrecord_dir": a.arrayrecord_dir,
        f"{a.split}_list": a.list,
        f"{a.split}_split": a.split,
    }
    try:
        source = sources.make_source(data, a.split, a.num_classes)
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


if __name__ == "__main__":
    sys.exit(cli.user_errors_exit(main)())  # bad input: its message and exit status 2
