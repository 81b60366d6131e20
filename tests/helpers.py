"""The one way the tests start another process: a command (`run_cli`), a Python script or code string
(`run_python`), a launcher or other program (`run`), or a process that runs beside the test (`start`,
`start_python`).

Each runs this checkout's package (and can import the modules of `tests/`) on the CPU, with the test run's
environment (the shared compilation cache of conftest.py) plus the variables a test adds (`env`) and without those
it names (`drop`). A test that calls one of them is marked `slow` by conftest.py, so `make test-fast` leaves it out.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(REPO, "tests")


def python_env(env: dict[str, str] | None = None, drop: Sequence[str] = ()) -> dict[str, str]:
    """The test run's environment with this checkout and `tests/` first on PYTHONPATH and JAX on the CPU, less the
    variables in `drop` (names or name prefixes), plus `env`."""
    path = [REPO, TESTS] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
    base = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": os.pathsep.join(path)}
    return {**{k: v for k, v in base.items() if not k.startswith(tuple(drop))}, **(env or {})}


def run(
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    drop: Sequence[str] = (),
    cwd: str = REPO,
    timeout: float = 600,
    check: bool = False,
) -> subprocess.CompletedProcess:
    """`argv` run to the end, its output captured as text."""
    return subprocess.run(
        [str(a) for a in argv],
        env=python_env(env, drop),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
    )


def run_python(*args, **kwargs) -> subprocess.CompletedProcess:
    """`python *args` (a script, `-c code`, `-m module`), like `run`."""
    return run([sys.executable, *args], **kwargs)


def run_cli(*args, **kwargs) -> subprocess.CompletedProcess:
    """`smallbig-jax *args` (as `python -m smallbig_jax`), like `run`."""
    return run_python("-m", "smallbig_jax", *args, **kwargs)


def start(
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    drop: Sequence[str] = (),
    cwd: str = REPO,
    merge_stderr: bool = False,
) -> subprocess.Popen:
    """`argv` started beside the test, stdout and stderr piped as text (`merge_stderr`: both into stdout)."""
    return subprocess.Popen(
        [str(a) for a in argv],
        env=python_env(env, drop),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
        text=True,
    )


def start_python(*args, **kwargs) -> subprocess.Popen:
    """`python *args` started beside the test, like `start`."""
    return start([sys.executable, *args], **kwargs)
