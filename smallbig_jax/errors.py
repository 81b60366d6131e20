"""The errors that bad input raises, in one light module (no JAX, orbax, grain or PyAV): each message names the file,
line, key or field and what was expected.

The modules that raise them import them from here (`smallbig_jax.data.lists.DataError`,
`smallbig_jax.config.ConfigError`, ... are these classes), and the command-line entry points print the message of
any of `USER_ERRORS` instead of a traceback (`smallbig_jax.cli`) without loading the libraries behind them.
"""

from __future__ import annotations


class DataError(RuntimeError):
    """A bad input (missing file, corrupt video, bad list line), with the file and line it came from."""


class ConfigError(ValueError):
    """A config value outside its valid range, or a config a checkpoint cannot resume under; the message names the
    field(s), the value(s) and what is expected."""


class CheckpointError(RuntimeError):
    """No checkpoint that can be restored where one is needed; the message names the folder, steps and problems."""


class ConversionError(ValueError):
    """A checkpoint that cannot be converted; `problems` lists every reason, one per line of the message."""

    def __init__(self, summary: str, problems: list[str] | None = None):
        self.summary = summary
        self.problems = list(problems or [])
        lines = [summary] + [f"  - {p}" for p in self.problems]
        super().__init__("\n".join(lines))


class CheckpointFormatError(ValueError):
    """A directory that is not a converted checkpoint, or one whose state does not fit its config."""


class WorkdirBusyError(RuntimeError):
    """A workdir that another running `train` holds (its pid and host named)."""


# What the entry points report as `error: <message>` (exit status 2). FloatingPointError: the training loss diverged.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError,
    CheckpointError,
    DataError,
    ConversionError,
    CheckpointFormatError,
    FileNotFoundError,
    FileExistsError,
    FloatingPointError,
    WorkdirBusyError,
)
