"""The one way the tests start a fresh Python process: a command (`run_cli`), a script or a code string
(`run_python`), or a process that runs beside the test (`start_python`).

Each runs this checkout's package (and can import the modules of `tests/`) on the CPU, with the test run's
environment (the shared compilation cache of conftest.py) plus the variables a test adds. A test that calls one of
them is marked `slow` by conftest.py, so `make test-fast` leaves it out.
"""

from __future__ import annotations

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(REPO, "tests")


def python_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The test run's environment with this checkout and `tests/` first on PYTHONPATH, JAX on the CPU, and `extra`."""
    path = [REPO, TESTS] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
    return {**os.environ, "JAX_PLATFORMS": "cpu", **(extra or {}), "PYTHONPATH": os.pathsep.join(path)}


def run_python(
    *args: str, env: dict[str, str] | None = None, cwd: str = REPO, timeout: float = 600, check: bool = False
) -> subprocess.CompletedProcess:
    """`python *args` to the end, its output captured as text; `env`: variables added to `python_env`'s."""
    return subprocess.run(
        [sys.executable, *map(str, args)],
        env=python_env(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
    )


def run_cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    """`smallbig-jax *args` (as `python -m smallbig_jax`), like `run_python`."""
    return run_python("-m", "smallbig_jax", *args, **kwargs)


def start_python(
    *args: str, env: dict[str, str] | None = None, cwd: str = REPO, merge_stderr: bool = False
) -> subprocess.Popen:
    """`python *args` started beside the test, stdout and stderr piped as text (`merge_stderr`: into stdout)."""
    return subprocess.Popen(
        [sys.executable, *map(str, args)],
        env=python_env(env),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
        text=True,
    )
