"""`smallbig-jax distributed_check` (smallbig_jax/commands/distributed_check.py): kept under its old name."""

import sys

from smallbig_jax.commands import run


def main(argv: list[str] | None = None) -> int:
    return run("distributed_check", argv)


if __name__ == "__main__":
    sys.exit(main())
