"""What the command-line entry points share: quiet library logs, and a user error (bad data, config, checkpoint or
conversion input, or a diverged loss) ending in its one message and exit status 2 instead of a traceback.

`--debug` (every command) or the environment variable `SMALLBIG_DEBUG=1` shows the full traceback and the libraries'
INFO logs (orbax, TFDS, absl) again.

Every command parses its own absl flags (`FlagValues`, one per command module: commands share flag names such as
`--num_classes`, and tests call several in one process) with `run_command`: `--help` prints the command's docstring
and flags, and a bad flag ends in one message and exit status 2 like any other user error. A command that takes a
config defines it with `define_config_flag` (ml_collections' `--config=file.py[:arg]` plus `--config.<field>=<value>`
overrides) and reads it with `config_value`.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from smallbig_jax.errors import USER_ERRORS

DEBUG_ENV = "SMALLBIG_DEBUG"
EXIT_USER_ERROR = 2
HELP = ("-h", "--help", "-?", "--helpshort", "--helpfull")

_debug_flag = False  # --debug of the command running in this process
# The command line being parsed (`run_command` fills it): config_flags finds the `--config.<field>` overrides in it,
# rather than in sys.argv, so that a command run in-process (tests, `commands.run`) takes its own overrides.
_command_line: list[str] = []
# (id(FlagValues), flag name) -> the config file a command loads when the flag is not given.
_default_configs: dict[tuple[int, str], str] = {}


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


def define_config_flag(
    flag_values: flags.FlagValues,
    help_string: str = "A config file in configs/ (file.py[:arg]).",
    *,
    default: str | None = None,
    name: str = "config",
) -> flags.FlagHolder:
    """`--config=file.py[:arg]` (the file's `get_config(arg)`) with `--config.<field>=<value>` overrides: how every
    command that takes a config loads it (ml_collections' `config_flags`; the config is locked: an override must
    name an existing field). A command given no `--config` loads `default` (a path relative to the working
    directory, as any `--config`) when there is one. `name` names a second config flag (its overrides
    `--<name>.<field>`)."""
    if default is not None:
        _default_configs[id(flag_values), name] = default
    return config_flags.DEFINE_config_file(
        name, None, help_string, flag_values=flag_values, lock_config=True, sys_argv=_command_line
    )


def config_value(holder: flags.FlagHolder) -> ml_collections.ConfigDict:
    """The config a `define_config_flag` flag loaded, overrides applied."""
    return holder.value


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
    for (owner, name), default in _default_configs.items():
        if owner == id(flag_values) and not any(a == f"--{name}" or a.startswith(f"--{name}=") for a in args):
            args = [f"--{name}={default}", *args]
    _command_line[:] = [prog, *args]
    try:
        rest = flag_values([prog, *args])
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
