"""Accelerator defaults of a training run: the persistent compilation cache, XLA's GPU flags and a `jax.profiler`
trace of a few steps. (Computing in bfloat16 is a config setting: `smallbig_jax.config.bfloat16`.)

- `config.compilation_cache`: "user" (default) keeps compiled programs in `$XDG_CACHE_HOME/smallbig_jax/xla`
  (`~/.cache/...`), shared by every run of the user on the host, so a resumed or repeated run skips compiling (tens
  of seconds for SmallBig-R50's train step); "workdir" keeps them in `<workdir>/xla_cache`, next to the checkpoints
  (it follows the run to another machine of the same kind); "" turns the cache off; any other value is a folder.
  A cache folder set before the run (`JAX_COMPILATION_CACHE_DIR`, `jax.config`) is left as it is.
- `config.xla_gpu_flags`: appended to `XLA_FLAGS` before the backend starts, unless `XLA_FLAGS` already sets the
  same flag. The default, `--xla_gpu_enable_latency_hiding_scheduler=true`, is the flag JAX's "GPU performance tips"
  (docs.jax.dev, gpu_performance_tips) and NVIDIA's JAX-Toolbox images set: it lets XLA overlap the data-parallel
  gradient all-reduce with the backward's convolutions. The same page's other flag, `--xla_gpu_triton_gemm_any`, is
  left out: it concerns matmuls, and this model's FLOPs are convolutions (cuDNN on GPU). Neither has been measured
  here (no GPU was available). XLA's CPU and TPU backends accept and ignore `xla_gpu_*` flags.
- `config.profile_steps = N`: a `jax.profiler` trace of N training steps, starting two steps after the run's first
  (so that compilation is not in it), into `<workdir>/tensorboard`: `tensorboard --logdir <workdir>/tensorboard`,
  Profile tab (needs the `tensorboard-plugin-profile` package where TensorBoard runs).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import ml_collections
from jax._src import xla_bridge

log = logging.getLogger(__name__)

COMPILATION_CACHE_MODES = ("user", "workdir", "")
DEFAULT_XLA_GPU_FLAGS = "--xla_gpu_enable_latency_hiding_scheduler=true"


def compilation_cache_dir(setting: str, workdir: str | None) -> str | None:
    """The folder `config.compilation_cache` names (None: off)."""
    if setting == "":
        return None
    if setting == "user":
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        return os.path.join(base, "smallbig_jax", "xla")
    if setting == "workdir":
        if not workdir:
            raise ValueError("config.compilation_cache='workdir' needs a workdir")
        return os.path.join(workdir, "xla_cache")
    return setting


def merged_xla_flags(current: str, extra: str) -> str:
    """`current` XLA_FLAGS plus each flag of `extra` whose name `current` does not set already."""
    names = {f.split("=", 1)[0] for f in current.split()}
    added = [f for f in extra.split() if f.split("=", 1)[0] not in names]
    return " ".join([*current.split(), *added])


def configure(config: ml_collections.ConfigDict, workdir: str | None) -> dict[str, Any]:
    """Applies the compilation cache and the XLA GPU flags of `config` to this process; returns what was set."""
    applied: dict[str, Any] = {}
    flags = config.get("xla_gpu_flags", "")
    if flags:
        if xla_bridge.backends_are_initialized():  # XLA_FLAGS are read once, when the backend starts
            log.debug("config.xla_gpu_flags not applied: the JAX backend was started before the run")
        else:
            os.environ["XLA_FLAGS"] = merged_xla_flags(os.environ.get("XLA_FLAGS", ""), flags)
            applied["XLA_FLAGS"] = os.environ["XLA_FLAGS"]
    folder = compilation_cache_dir(config.get("compilation_cache", ""), workdir)
    if jax.config.jax_compilation_cache_dir:
        applied["compilation_cache"] = jax.config.jax_compilation_cache_dir
        if folder and folder != jax.config.jax_compilation_cache_dir:
            log.debug(
                "compilation cache: keeping %s (set before the run) over %s", applied["compilation_cache"], folder
            )
    elif folder:
        jax.config.update("jax_compilation_cache_dir", folder)
        applied["compilation_cache"] = folder
    return applied


class StepProfiler:
    """A `jax.profiler` trace of `num_steps` training steps from step `first_step + 2`: `before(step)` and
    `after(step, outputs)` around each step; `close()` ends a trace cut short."""

    def __init__(self, num_steps: int, logdir: str, first_step: int):
        self.start = first_step + 2
        self.stop = self.start + num_steps - 1 if num_steps else None
        self.logdir = logdir
        self.active = False
        self._annotation = None

    def before(self, step: int) -> None:
        if self.stop is None:
            return
        if step == self.start:
            jax.profiler.start_trace(self.logdir)
            self.active = True
            log.info("profiling steps %d-%d into %s", self.start, self.stop, self.logdir)
        if self.active:
            self._annotation = jax.profiler.StepTraceAnnotation("train", step_num=step)
            self._annotation.__enter__()

    def after(self, step: int, outputs: Any) -> None:
        if not self.active:
            return
        self._annotation.__exit__(None, None, None)
        if step == self.stop:
            jax.block_until_ready(outputs)  # the device's work for the last step belongs in the trace
            self.close()

    def close(self) -> None:
        if self.active:
            jax.profiler.stop_trace()
            self.active = False
