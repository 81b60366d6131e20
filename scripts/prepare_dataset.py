"""`smallbig-jax prepare` (smallbig_jax/commands/prepare.py): kept under its old name."""

import sys

from smallbig_jax.commands import run


def main(argv: list[str] | None = None) -> int:
    return run("prepare", argv)


if __name__ == "__main__":
    sys.exit(main())
