"""Host memory for XLA:CPU: let glibc keep freed memory instead of handing it back to the kernel at every step.

XLA:CPU allocates a step's temporaries afresh at every execution (6 GB for the SmallBig-R50 train step at batch 2).
glibc serves blocks that large with `mmap` and unmaps them when they are freed, so every step faults its 6 GB back
in page by page, and the kernel time spent zeroing fresh pages is a large part of the step. With glibc told to serve
everything from one heap (`mmap_max=0`, `arena_max=1`) and never to shrink it (`trim_threshold`), the second and
later steps reuse the same pages and do not fault (gain measured in BENCHMARKS.md). The cost is that the process
keeps its peak memory until it exits, which a training or benchmark process does anyway.

glibc reads these settings only when a process starts (`GLIBC_TUNABLES`; `mallopt` cannot set a trim threshold
above 2 GB), so `keep_freed_host_memory` restarts the process once with them set. It does so only where JAX will
compute on the CPU: with accelerators the temporaries live in device memory, and the settings would only cost the
input pipeline, which runs slower under them (BENCHMARKS.md).
"""

from __future__ import annotations

import glob
import importlib.util
import os
import pathlib
import platform
import sys

TUNABLES = "glibc.malloc.mmap_max=0:glibc.malloc.arena_max=1:glibc.malloc.trim_threshold=68719476736"
OPT_OUT = "SMALLBIG_KEEP_HOST_MEMORY"  # set to 0 to run with glibc's defaults
ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "jax_rocm7_plugin", "libtpu")


def accelerators_attached() -> tuple[bool, bool]:
    """(a TPU chip, a GPU) attached to this machine, seen as JAX itself looks (jax/_src/hardware_utils.py: a PCI
    device of Google's vendor id, a /dev/nvidia* node), without importing JAX."""
    tpu = any(pathlib.Path(p).read_text().strip() == "0x1ae0" for p in glob.glob("/sys/bus/pci/devices/*/vendor"))
    gpu = any(os.path.exists(d) for d in ("/dev/nvidia0", "/dev/nvidiactl", "/dev/dxg", "/dev/kfd"))
    return tpu, gpu


def computes_on_cpu() -> bool:
    """Whether JAX's default backend will be the CPU, decided without initialising JAX: `JAX_PLATFORMS` if set,
    else whether no GPU or TPU plugin is installed whose hardware is attached (the `aot` extra's plugins on a
    CPU-only machine leave it on the CPU)."""
    platforms = os.environ.get("JAX_PLATFORMS", "").strip()
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    tpu, gpu = accelerators_attached()
    plugins = [name for name in ACCELERATOR_PLUGINS if importlib.util.find_spec(name)]
    return not any(tpu if name == "libtpu" else gpu for name in plugins)


def keep_freed_host_memory() -> None:
    """Restarts this process (same pid, same arguments) with `TUNABLES` in its environment, once.

    Call it first thing in an entry point, before other work. Nothing happens when the process already has
    `GLIBC_TUNABLES` (set by the restart, or by the user, whose settings win), when `SMALLBIG_KEEP_HOST_MEMORY=0`,
    when JAX will not compute on the CPU, or off Linux/glibc. Child processes (data workers) inherit the settings.
    """
    if os.environ.get(OPT_OUT, "1") == "0" or "GLIBC_TUNABLES" in os.environ or not computes_on_cpu():
        return
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return
    os.environ["GLIBC_TUNABLES"] = TUNABLES
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, sys.orig_argv)
