"""`smallbig-jax accelerator_check` (smallbig_jax/commands/accelerator_check.py): kept under its old name."""

import sys

from smallbig_jax.commands import run


def main(argv: list[str] | None = None) -> int:
    return run("accelerator_check", argv)


if __name__ == "__main__":
    sys.exit(main())
