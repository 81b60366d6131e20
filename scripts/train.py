"""`smallbig-jax train` (smallbig_jax/commands/train.py): kept under its old name."""

import sys

from smallbig_jax.commands import run


def main(argv: list[str] | None = None) -> int:
    return run("train", argv)


if __name__ == "__main__":
    sys.exit(main())
