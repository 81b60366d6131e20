"""Multi-process (multi-host) start-up: one call, `initialize_distributed()`, at the top of every entry point.

JAX runs one process per host (TPU pods, GPU hosts) or per GPU; all processes must call
`jax.distributed.initialize()` before any other JAX call, after which `jax.devices()` lists the devices of every
process and jitted programs over a global `Mesh` run across all of them. This function decides whether to do so and
with which coordinates, from (highest priority first):

1. Explicit arguments `coordinator_address`, `num_processes`, `process_id` (e.g. from command-line flags).
2. Environment variables, as set by `scripts/launch_local.sh`, `scripts/launch_slurm.sh` or by hand:
     SMALLBIG_COORDINATOR    host:port of process 0's coordination service, e.g. 10.0.0.1:1234
     SMALLBIG_NUM_PROCESSES  total number of processes
     SMALLBIG_PROCESS_ID     this process's index, 0 .. num_processes - 1
     SMALLBIG_LOCAL_DEVICE_IDS  optional, comma-separated local device ids this process drives (one process per GPU)
3. `SMALLBIG_DISTRIBUTED=1` with none of the above: `jax.distributed.initialize()` without arguments, which
   auto-detects the cluster: TPU VM pod slices (TPU metadata), SLURM (`SLURM_*` variables from `srun`), Open MPI,
   and Kubernetes-style environments. This is what `scripts/launch_tpu_pod.sh` and `scripts/launch_slurm.sh` set.
   Under SLURM, JAX then drives one GPU per task (`local_device_ids = [SLURM_LOCALID]`): right for one task per
   GPU, wrong for one task per host, so for that `launch_slurm.sh --per-host` also sets
   `SMALLBIG_LOCAL_DEVICE_IDS=0,1,...` (all of the host's GPUs).

With none of these (the CPU quick start, a single GPU host), nothing is initialised and the run is single-process.
`SMALLBIG_DISTRIBUTED=0` forces single-process even when coordinates are present.

Returns a small dict describing the outcome (also useful in logs): initialised or not, process index and count.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax

ENV_FLAG = "SMALLBIG_DISTRIBUTED"
ENV_COORDINATOR = "SMALLBIG_COORDINATOR"
ENV_NUM_PROCESSES = "SMALLBIG_NUM_PROCESSES"
ENV_PROCESS_ID = "SMALLBIG_PROCESS_ID"
ENV_LOCAL_DEVICE_IDS = "SMALLBIG_LOCAL_DEVICE_IDS"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def distributed_settings(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: Sequence[int] | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, Any] | None:
    """The keyword arguments for `jax.distributed.initialize`, or None for a single-process run.

    Raises ValueError for incomplete or inconsistent explicit settings (a coordinator without a process count, an
    id outside 0..count-1), so that a misconfigured launch fails at once instead of waiting for peers.
    """
    env = os.environ if env is None else env
    flag = env.get(ENV_FLAG, "").strip().lower()
    if flag in _FALSE and flag != "":
        return None
    coordinator_address = coordinator_address or env.get(ENV_COORDINATOR) or None
    if num_processes is None and env.get(ENV_NUM_PROCESSES):
        num_processes = int(env[ENV_NUM_PROCESSES])
    if process_id is None and env.get(ENV_PROCESS_ID):
        process_id = int(env[ENV_PROCESS_ID])
    if local_device_ids is None and env.get(ENV_LOCAL_DEVICE_IDS):
        local_device_ids = [int(i) for i in env[ENV_LOCAL_DEVICE_IDS].split(",") if i.strip()]

    explicit = coordinator_address is not None or num_processes is not None or process_id is not None
    if not explicit:
        if flag in _TRUE:  # auto-detection (TPU pod, SLURM, MPI)
            return {} if local_device_ids is None else {"local_device_ids": list(local_device_ids)}
        if flag:
            raise ValueError(f"{ENV_FLAG}={env[ENV_FLAG]!r}; expected 1/0, true/false, yes/no or on/off")
        return None
    missing = [
        name
        for name, value in (
            (ENV_COORDINATOR, coordinator_address),
            (ENV_NUM_PROCESSES, num_processes),
            (ENV_PROCESS_ID, process_id),
        )
        if value is None
    ]
    if missing:
        raise ValueError(
            f"incomplete multi-process settings: {', '.join(missing)} not given (set all three of "
            f"{ENV_COORDINATOR}, {ENV_NUM_PROCESSES}, {ENV_PROCESS_ID}, or only {ENV_FLAG}=1 to auto-detect)"
        )
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise ValueError(f"process id {process_id} is not in 0..{num_processes - 1}")
    kwargs: dict[str, Any] = dict(
        coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
    )
    if local_device_ids is not None:
        kwargs["local_device_ids"] = list(local_device_ids)
    return kwargs


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: Sequence[int] | None = None,
    *,
    initialization_timeout: int | None = None,
) -> dict[str, Any]:
    """Calls `jax.distributed.initialize` when settings (arguments or environment, see the module docstring) ask for
    a multi-process run; a no-op otherwise. Call it once, before any other JAX call.

    `initialization_timeout` (seconds) bounds how long process start-up waits for its peers.
    """
    kwargs = distributed_settings(coordinator_address, num_processes, process_id, local_device_ids)
    if kwargs is None:
        return {"initialized": False, "process_index": 0, "process_count": 1}
    if initialization_timeout is not None:
        kwargs["initialization_timeout"] = initialization_timeout
    jax.distributed.initialize(**kwargs)
    return {
        "initialized": True,
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "auto_detected": not any(k in kwargs for k in ("coordinator_address", "num_processes")),
    }
