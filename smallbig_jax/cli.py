"""What the command-line entry points share: quiet library logs, and a user error (bad data, config, checkpoint or
conversion input, or a diverged loss) ending in its one message and exit status 2 instead of a traceback.

`--debug` (scripts built on absl flags) or the environment variable `SMALLBIG_DEBUG=1` (every script) shows the
full traceback and the libraries' INFO logs (orbax, TFDS, absl) again.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable

from absl import flags

from smallbig_jax.errors import USER_ERRORS

DEBUG_ENV = "SMALLBIG_DEBUG"
EXIT_USER_ERROR = 2


def debug_requested() -> bool:
    if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
        return True
    return bool(flags.FLAGS.is_parsed() and "debug" in flags.FLAGS and flags.FLAGS.debug)


def quiet_library_logs() -> None:
    """Orbax, TFDS and absl report every step of their work at INFO; the project's own INFO logs stay."""
    logging.getLogger("smallbig_jax").setLevel(logging.INFO)
    if not debug_requested():
        logging.getLogger("absl").setLevel(logging.WARNING)
        logging.getLogger("tensorflow_datasets").setLevel(logging.WARNING)
        logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # "Unable to initialize backend 'tpu'"


def user_errors_exit(main: Callable) -> Callable:
    """`main` with its library logs quieted and a user error printed as `error: <message>` (exit status 2)."""

    @functools.wraps(main)
    def wrapped(*args, **kwargs):
        quiet_library_logs()
        try:
            return main(*args, **kwargs)
        except Exception as e:
            if debug_requested() or not isinstance(e, USER_ERRORS):
                raise
            print(f"error: {e}\n({DEBUG_ENV}=1 shows the full traceback)", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)

    return wrapped


def define_debug_flag() -> None:
    """`--debug` for scripts that use absl flags."""
    flags.DEFINE_bool("debug", False, f"Full tracebacks and library INFO logs (or set {DEBUG_ENV}=1).")
