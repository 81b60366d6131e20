"""What the command-line entry points share: quiet library logs, and a user error (bad data, config, checkpoint or
conversion input, or a diverged loss) ending in its one message and exit status 2 instead of a traceback.

`--debug` (every command) or the environment variable `SMALLBIG_DEBUG=1` shows the full traceback and the libraries'
INFO logs (orbax, TFDS, absl) again.

Every command parses its own absl flags (`FlagValues`, one per command module: commands share flag names such as
`--num_classes`, and tests call several in one process) with `run_command`: `--help` prints the command's docstring
and flags, a flag spelled with dashes (`--num-classes`) is read as its underscore spelling, and a bad flag ends in
one message and exit status 2 like any other user error.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
from collections.abc import Callable

from absl import app, flags

from smallbig_jax.errors import USER_ERRORS

DEBUG_ENV = "SMALLBIG_DEBUG"
EXIT_USER_ERROR = 2
# A training run stopped by a preemption (SIGTERM, Ctrl-C) after saving its checkpoint: BSD's EX_TEMPFAIL, "try
# again later". The launchers (scripts/launch_*.sh) requeue a job that exits with it.
EXIT_PREEMPTED = 75
HELP = ("-h", "--help", "-?", "--helpshort", "--helpfull")

_debug_flag = False  # --debug of the command running in this process


def exit_on_early_preemption() -> None:
    """Until a training run installs its own handling (`smallbig_jax.preemption`), SIGTERM and Ctrl-C stop the
    process at once with `EXIT_PREEMPTED`: there is nothing to save yet (imports, start-up)."""

    def stop(signum, frame):
        del frame
        print(f"{signal.Signals(signum).name} before the run started: nothing to save; exiting", file=sys.stderr)
        os._exit(EXIT_PREEMPTED)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


def debug_requested() -> bool:
    return _debug_flag or os.environ.get(DEBUG_ENV, "") not in ("", "0")


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


def define_debug_flag(flag_values: flags.FlagValues) -> None:
    """`--debug`, which every command takes."""
    flags.DEFINE_bool(
        "debug", False, f"Full tracebacks and library INFO logs (or set {DEBUG_ENV}=1).", flag_values=flag_values
    )


def underscored(args: list[str]) -> list[str]:
    """`--num-classes=3` -> `--num_classes=3`: absl flags are spelled with underscores; the dashed spelling that
    some commands used to take keeps working. Values are left as they are."""
    out = []
    for a in args:
        if a.startswith("--"):
            name, eq, value = a[2:].partition("=")
            a = "--" + name.replace("-", "_") + eq + value
        out.append(a)
    return out


def run_command(
    prog: str, doc: str, flag_values: flags.FlagValues, main: Callable[[], int | None], args: list[str]
) -> int:
    """Parses `args` (the command line after the command's name) into `flag_values` afresh, then runs `main` under
    `user_errors_exit`. Returns main's exit status (0 for None); `--help` prints `doc` and the flags."""
    global _debug_flag
    if any(a in HELP for a in args):
        print(f"usage: {prog} [flags]\n\n{doc.strip()}\n\nflags:\n{flag_values.get_help()}")
        return 0
    flag_values.unparse_flags()
    try:
        rest = flag_values([prog, *underscored(args)])
        if len(rest) > 1:
            raise app.UsageError(f"unexpected arguments {' '.join(rest[1:])} (flags are --name=value)")
    except (flags.Error, app.UsageError) as e:
        print(f"error: {e}\n(`{prog} --help` lists the flags)", file=sys.stderr)
        return EXIT_USER_ERROR
    _debug_flag = flag_values["debug"].value
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()  # absl's own logging and grain's workers read the global flags
    try:
        status = user_errors_exit(main)()
    except app.UsageError as e:
        print(f"error: {e}\n(`{prog} --help` lists the flags)", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0 if status is None else int(status)
