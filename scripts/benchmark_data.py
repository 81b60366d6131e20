"""`smallbig-jax benchmark_data` (smallbig_jax/commands/benchmark_data.py): kept under its old name."""

import sys

from smallbig_jax.commands import run


def main(argv: list[str] | None = None) -> int:
    return run("benchmark_data", argv)


if __name__ == "__main__":
    sys.exit(main())
