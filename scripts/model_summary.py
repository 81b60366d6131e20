"""`smallbig-jax summary` (smallbig_jax/commands/summary.py): kept under its old name."""

import sys

from smallbig_jax.commands import run


def main(argv: list[str] | None = None) -> int:
    return run("summary", argv)


if __name__ == "__main__":
    sys.exit(main())
