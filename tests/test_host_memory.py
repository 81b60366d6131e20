"""Entry points restart once with glibc keeping freed memory, and freed memory is then reused without page faults."""

from __future__ import annotations

import platform
import sys
import textwrap

from helpers import run_python

from smallbig_jax.host_memory import OPT_OUT, TUNABLES

ON_GLIBC = sys.platform == "linux" and platform.libc_ver()[0] == "glibc"

SCRIPT = textwrap.dedent(
    """
    import os, resource
    print("started", flush=True)
    from smallbig_jax.host_memory import keep_freed_host_memory
    keep_freed_host_memory()
    import numpy as np

    def faults_of_a_fresh_50_mb_array():
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        a = np.ones(50_000_000 // 8)
        del a
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    faults_of_a_fresh_50_mb_array()  # the first one faults in any case
    print(os.getpid(), os.environ.get("GLIBC_TUNABLES"), faults_of_a_fresh_50_mb_array(), "--flag" in os.sys.argv)
    """
)


def run(tmp_path, **env_changes) -> list[str]:
    script = tmp_path / "entry.py"
    script.write_text(SCRIPT)
    out = run_python(
        "-u", script, "--flag", env=env_changes, drop=("GLIBC_TUNABLES", OPT_OUT, "JAX_PLATFORMS"), check=True
    )
    return out.stdout.split("\n")


def test_restart_sets_the_tunables_once_keeps_arguments_and_stops_page_faults(tmp_path):
    lines = run(tmp_path)
    if not ON_GLIBC:
        assert lines[-2].split()[1] == "None"
        return
    assert lines.count("started") == 2  # the original process and its one restart
    _, tunables, faults, kept_flag = lines[-2].split()
    assert tunables == TUNABLES and kept_flag == "True"
    assert int(faults) == 0  # the second 50 MB array reuses the first one's pages
    default = run(tmp_path, **{OPT_OUT: "0"})
    assert default.count("started") == 1
    _, tunables, faults, _ = default[-2].split()
    assert tunables == "None" and int(faults) > 100  # glibc's default: mmap per large block, faulted in every time


def test_no_restart_where_jax_computes_on_an_accelerator(tmp_path):
    lines = run(tmp_path, JAX_PLATFORMS="cuda,cpu")
    assert lines.count("started") == 1 and lines[-2].split()[1] == "None"


def test_settings_of_the_user_win(tmp_path):
    lines = run(tmp_path, GLIBC_TUNABLES="glibc.malloc.arena_max=2")
    assert lines.count("started") == 1
    assert lines[-2].split()[1] == "glibc.malloc.arena_max=2"
