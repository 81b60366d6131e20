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

import difflib
import errno
import functools
import importlib.util
import logging
import os
import re
import signal
import sys
import traceback
import types
from collections.abc import Callable, Mapping
from typing import Any

from absl import app, flags
from ml_collections.config_flags import config_flags  # its _ConfigFlag: the module, not the package

from smallbig_jax.config import check_config
from smallbig_jax.errors import USER_ERRORS, ConfigError
from smallbig_jax.host_memory import accelerators_attached

DEBUG_ENV = "SMALLBIG_DEBUG"
EXIT_USER_ERROR = 2
# A training run stopped by a preemption (SIGTERM, Ctrl-C) after saving its checkpoint: BSD's EX_TEMPFAIL, "try
# again later". The launchers (scripts/launch_*.sh) requeue a job that exits with it.
EXIT_PREEMPTED = 75
HELP = ("-h", "--help", "-?", "--helpshort", "--helpfull")
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

_debug_flag = False  # --debug of the command running in this process
# The command line being parsed (`run_command` fills it): config_flags finds the `--config.<field>` overrides in it,
# rather than in sys.argv, so that a command run in-process (tests, `commands.run`) takes its own overrides.
_command_line: list[str] = []
# (id(FlagValues), flag name) -> the config file a command loads when the flag is not given.
_default_configs: dict[tuple[int, str], str] = {}


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


# The machine's errors a user fixes (a full disk, a read-only or foreign folder, a file where a folder should be):
# errno -> what to do. They end as `error: <path>: <what>` like bad input, not as a traceback.
MACHINE_ERRORS = {
    errno.ENOSPC: "no space left on the device: free space there or choose another folder",
    errno.EDQUOT: "disk quota exceeded: free space there or choose another folder",
    errno.EROFS: "read-only file system: choose a writable folder",
    errno.EACCES: "permission denied: this user cannot write (or read) there",
    errno.EPERM: "operation not permitted: this user cannot write (or read) there",
    errno.ENOTDIR: "not a folder: a file is where a folder should be",
    errno.EISDIR: "is a folder, where a file is expected",
    errno.EEXIST: "already exists",  # + as a file or a folder: see machine_error_message
    errno.ENOENT: "no such file or folder",
}


def machine_error_message(error: OSError) -> str | None:
    """`<path>: <what to do>` for an `OSError` a user can fix (`MACHINE_ERRORS`), else None (a traceback)."""
    what = MACHINE_ERRORS.get(error.errno)
    if what is None:
        return None
    path = error.filename
    if path is None:
        return what
    if error.errno == errno.EEXIST and os.path.lexists(str(path)):
        what += " as a folder" if os.path.isdir(str(path)) else " as a file, where a folder should be"
    if error.filename2 is not None:
        path = f"{path} -> {error.filename2}"
    return f"{path}: {what}"


def error_text(error: BaseException) -> str:
    """What `error: ...` says about a user error: a machine error's path and fix, else its message, without the
    terminal colour codes that some libraries' messages carry (torch's)."""
    message = machine_error_message(error) if isinstance(error, OSError) else None
    return ANSI_ESCAPE.sub("", message or str(error))


def user_errors_exit(main: Callable) -> Callable:
    """`main` with its library logs quieted and a user error printed as `error: <message>` (exit status 2)."""

    @functools.wraps(main)
    def wrapped(*args, **kwargs):
        quiet_library_logs()
        try:
            return main(*args, **kwargs)
        except Exception as e:
            message = machine_error_message(e) if isinstance(e, OSError) else None
            if debug_requested() or not (isinstance(e, USER_ERRORS) or message):
                raise
            print(f"error: {error_text(e)}\n({DEBUG_ENV}=1 shows the full traceback)", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)

    return wrapped


# --- --config=<file.py>[:arg] and its --config.<field>=<value> overrides -----------------------------------------


def _failing_line(path: str, error: BaseException) -> str:
    """`:<line>` of the deepest frame of `error`'s traceback in the file `path`, or ''."""
    lines = [f.lineno for f in traceback.extract_tb(error.__traceback__) if os.path.abspath(f.filename) == path]
    return f":{lines[-1]}" if lines else ""


def load_config_file(argument: str) -> Any:
    """`get_config(arg)` of `path.py:arg` (ml_collections' convention; `get_config()` without a colon), every
    problem of the file (missing, a folder, unreadable, a syntax error, an exception, an unknown argument) a
    one-line `ConfigError` naming the file (and line)."""
    path, colon, arg = argument.partition(":")
    if not os.path.exists(path):
        raise ConfigError(f"config file {path}: no such file")
    if os.path.isdir(path):
        raise ConfigError(f"config file {path}: is a folder, not a config file (configs/*.py)")
    where = os.path.abspath(path)
    try:
        spec = importlib.util.spec_from_file_location(f"config_file_{abs(hash(where))}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        get_config = getattr(module, "get_config", None)
        if not callable(get_config):
            raise ConfigError(f"config file {path}: defines no get_config(arg) function")
        return get_config(arg) if colon else get_config()
    except ConfigError as e:
        raise ConfigError(f"config {argument}: {e}") from e
    except SyntaxError as e:
        raise ConfigError(f"config file {path}:{e.lineno}: {e.msg} (the file does not parse)") from e
    except OSError as e:
        raise ConfigError(f"config file {path}: {e.strerror or e}") from e
    except Exception as e:  # a config file that raises: one line that names it, --debug shows the traceback
        raise ConfigError(f"config {argument}{_failing_line(where, e)}: {type(e).__name__}: {e}") from e


def _field_paths(config: Any, prefix: str = "") -> list[str]:
    """Every field of a (nested) config as a dotted path, its sub-configs included."""
    out = []
    for key, value in config.items():
        out.append(prefix + key)
        if isinstance(value, Mapping) or hasattr(value, "items") and callable(value.items):
            out += _field_paths(value, f"{prefix}{key}.")
    return out


def unknown_field_error(config: Any, field: str, flag: str = "config") -> ConfigError | None:
    """`ConfigError` for a `--config.<field>` override that names no field of `config`, with the nearest field."""
    paths = _field_paths(config)
    if re.sub(r"\[[^]]*\]", "", field) in paths:
        return None
    near = difflib.get_close_matches(field, paths, n=1, cutoff=0.6)
    if not near:  # a mistyped leaf name under another parent: compare the last part alone
        leaves = {p.rsplit(".", 1)[-1]: p for p in paths}
        near = [leaves[m] for m in difflib.get_close_matches(field.rsplit(".", 1)[-1], list(leaves), n=1)]
    if near:
        hint = f"; did you mean --{flag}.{near[0]}?"
    else:  # nothing close: the fields at the level the path stops matching
        parent = field.rsplit(".", 1)[0] if "." in field else ""
        while parent and parent not in paths:
            parent = parent.rsplit(".", 1)[0] if "." in parent else ""
        depth = parent.count(".") + 1 if parent else 0
        level = [p for p in paths if p.startswith(f"{parent}.") or not parent]
        hint = "; its fields" + (f" under {parent}" if parent else "") + ": "
        hint += ", ".join(p for p in level if p.count(".") == depth)
    return ConfigError(f"--{flag}.{field}: the config has no field {field!r}{hint}")


class _LoadedConfigParser(flags.ArgumentParser):
    """Hands `_CheckedConfigFlag` the config it loaded (one load per parse), locked like ml_collections' parser."""

    def __init__(self, lock_config: bool):
        self.lock_config = lock_config
        self.loaded: Any = None

    def parse(self, argument: str) -> Any:
        config, self.loaded = (self.loaded if self.loaded is not None else load_config_file(argument)), None
        if self.lock_config and callable(getattr(config, "lock", None)):
            config.lock()
        return config

    def flag_type(self) -> str:
        return "config object"


class _CheckedConfigFlag(config_flags._ConfigFlag):
    """ml_collections' config-file flag whose problems (the file, its argument, an unknown `--config.<field>`) are
    kept as `error` instead of escaping absl's parsing as a traceback: `config_value` raises it."""

    error: ConfigError | None = None

    def _parse(self, argument: str) -> Any:
        self.error = None
        try:
            config = load_config_file(argument)
            for field in self._GetOverrides(self._GetArgv()):
                unknown = unknown_field_error(config, field, self.name)
                if unknown is not None:
                    raise unknown
        except ConfigError as e:
            self.error = e
            for field in self._GetOverrides(self._GetArgv()):  # absl must still accept the override flags
                if f"{self.name}.{field}" not in self.flag_values:
                    placeholder = flags.Flag(
                        flags.ArgumentParser(), None, f"{self.name}.{field}", None, "(config not loaded)", boolean=True
                    )
                    placeholder.allow_override = True  # a later parse in this process defines the real flag
                    flags.DEFINE_flag(placeholder, self.flag_values)
            return self.error  # not None, which a required --config would report instead; config_value raises it
        self.parser.loaded = config
        return super()._parse(argument)


class ConfigHolder:
    """What `define_config_flag` returns: `.value` is the loaded config with its overrides (`config_value`)."""

    def __init__(self, flag: _CheckedConfigFlag):
        self.flag = flag

    @property
    def value(self) -> Any:
        return config_value(self)

    @property
    def present(self) -> bool:
        return bool(self.flag.present)


def choose_jax_platforms(keep_cuda_compiler: bool = False) -> None:
    """On a machine without the accelerator of an installed JAX plugin (the `aot` extra's libtpu and CUDA plugin on a
    CPU-only machine), leave that plugin out before JAX starts, so that a command prints and does what it does
    without it: no TPU or CUDA probe, no warnings, no slower start. Without such a plugin nothing changes;
    `JAX_PLATFORMS` set by the user wins; a machine with the TPU chips or NVIDIA GPU that a plugin serves keeps it.
    The choice goes into the environment (read when JAX is imported, and by the processes this one starts).
    `keep_cuda_compiler`: `smallbig-jax compile`, which compiles for GPUs with the CUDA plugin without one."""
    has_tpu = importlib.util.find_spec("libtpu") is not None
    has_cuda = importlib.util.find_spec("jax_plugins") is not None and (
        importlib.util.find_spec("jax_plugins.xla_cuda12") is not None
    )
    if not (has_tpu or has_cuda):
        return
    tpu_attached, gpu_attached = accelerators_attached()
    if not os.environ.get("JAX_PLATFORMS") and ((has_tpu and not tpu_attached) or (has_cuda and not gpu_attached)):
        platforms = ["tpu"] * (has_tpu and tpu_attached) + ["cuda"] * (has_cuda and gpu_attached) + ["cpu"]
        os.environ["JAX_PLATFORMS"] = ",".join(platforms)
        if "jax" in sys.modules:  # imported already (a test process): before its backends start
            sys.modules["jax"].config.update("jax_platforms", os.environ["JAX_PLATFORMS"])
    if has_cuda and not gpu_attached and not keep_cuda_compiler:
        # `import jax` loads the CUDA plugin's kernels and JAX initialises every PJRT plugin it finds, whatever the
        # platforms; their CUDA libraries log "Could not find cuda drivers" on a machine without them. As if absent:
        sys.modules["jax_cuda12_plugin"] = None  # an ImportError for JAX's optional imports of its kernels
        sys.modules["jax_plugins.xla_cuda12"] = types.SimpleNamespace(initialize=lambda: None)  # found, a no-op


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
    lock_config: bool = True,
) -> ConfigHolder:
    """`--config=file.py[:arg]` (the file's `get_config(arg)`) with `--config.<field>=<value>` overrides: how every
    command that takes a config loads it (ml_collections' `config_flags`; the config is locked: an override must
    name an existing field). A command given no `--config` loads `default` (a path relative to the working
    directory, as any `--config`) when there is one. `name` names a second config flag (its overrides
    `--<name>.<field>`). Read it with `config_value` (or the holder's `.value`): a broken file, an unknown argument
    or field is a one-line `ConfigError` there."""
    if default is not None:
        _default_configs[id(flag_values), name] = default
    flag = _CheckedConfigFlag(
        parser=_LoadedConfigParser(lock_config),
        serializer=flags.ArgumentSerializer(),
        name=name,
        default=None,
        help_string=help_string,
        flag_values=flag_values,
        sys_argv=_command_line,
    )
    flags.DEFINE_flag(flag, flag_values)
    return ConfigHolder(flag)


def config_value(holder: ConfigHolder) -> Any:
    """The config the command line gave (None if `--config` was not given), checked against `config.RULES`: the
    edge where every command's config is validated. A missing or broken config file, an unknown config argument or
    `--config.<field>`, or a bad value raise their one-line `ConfigError` here."""
    if holder.flag.error is not None:
        raise holder.flag.error
    config = holder.flag.value
    if config is not None:
        check_config(config)
    return config


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
        rest = flag_values(list(_command_line))
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
