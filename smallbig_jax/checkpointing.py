"""Orbax checkpoints of a training run: model, BatchNorm statistics, optimizer (and EMA) state, step, the input
pipeline's iterator state and the config, in `<workdir>/checkpoints/<step>/`.

Saves are asynchronous; orbax writes each into a temporary directory and renames it only when complete, so a run
killed at any moment (kill -9 during a save included) leaves the previous checkpoint as the latest restorable
one. Kept: the last `keep` checkpoints plus the best by evaluation metric. Restoring takes target shardings, so a
run saved on 8 devices resumes on 1 or 4 (or with FSDP instead of replication).
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

BEST_METRIC = "top1_top5_mean"


def make_manager(workdir: str, *, keep: int = 2, save_every: int = 0, async_save: bool = True) -> ocp.CheckpointManager:
    """A manager for `<workdir>/checkpoints`: last `keep` checkpoints plus the best by `BEST_METRIC`."""
    policy = ocp.checkpoint_managers.AnyPreservationPolicy(
        [
            ocp.checkpoint_managers.LatestN(keep),
            ocp.checkpoint_managers.BestN(get_metric_fn=lambda m: m[BEST_METRIC], n=1, keep_checkpoints_without_metrics=False),
        ]
    )
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=max(save_every, 1),
        preservation_policy=policy,
        enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True,
    )
    directory = workdir if "://" in workdir else os.path.abspath(workdir)  # orbax wants absolute local paths
    return ocp.CheckpointManager(
        epath.Path(directory) / "checkpoints", options=options, item_names=("state", "data", "config")
    )


def save(
    manager: ocp.CheckpointManager,
    step: int,
    state: Any,
    data_state: dict | None,
    config: ml_collections.ConfigDict,
    metrics: dict[str, float] | None = None,
    force: bool = False,
) -> bool:
    """Starts an (asynchronous) save of `state` at `step`; every process must call it."""
    return manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(data_state or {}),
            config=ocp.args.JsonSave(json.loads(config.to_json_best_effort())),
        ),
        metrics=metrics,
        force=force,
    )


def restore(manager: ocp.CheckpointManager, abstract_state: Any, step: int | None = None) -> tuple[Any, dict, int]:
    """(state, data iterator state, step) of checkpoint `step` (default latest), laid out as `abstract_state`
    (a pytree of `jax.ShapeDtypeStruct` with target shardings)."""
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {manager.directory}")
    restored = manager.restore(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()),
    )
    return restored.state, dict(restored.data or {}), step


def abstract_like(state: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)


def size_bytes(manager: ocp.CheckpointManager, step: int) -> int:
    """Bytes on disk of checkpoint `step` (local directories only; 0 elsewhere)."""
    root = os.path.join(str(manager.directory), str(step))
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(root) for f in files)
