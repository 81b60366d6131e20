"""`smallbig-jax convert` (smallbig_jax/commands/convert.py): kept under its old name."""

import sys

from smallbig_jax.commands import run


def main(argv: list[str] | None = None) -> int:
    return run("convert", argv)


if __name__ == "__main__":
    sys.exit(main())
