"""The device mesh and where arrays live on it.

One mesh axis, 'data', over every device of every process. Batches are split along it. Parameters, BatchNorm
statistics and optimizer state are replicated (`params_sharding='replicate'`, the default, as DDP does) or split
along their largest divisible axis (`'fsdp'`: each device keeps 1/D of every large array, and XLA gathers it for
the forward and backward; worth it for SmallBig-R101 and up on accelerators with little memory).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA = "data"
FSDP_MIN_SIZE = 2**18  # arrays smaller than this stay replicated: gathering them costs more than it saves


def make_mesh(devices: Sequence[jax.Device] | None = None, *, num_devices: int | None = None) -> Mesh:
    """The 1-D 'data' mesh over `devices` (default: all devices of all processes), or over the first `num_devices`
    of them. The one place a mesh is made: training, evaluation, the benchmarks and the checks take theirs here."""
    devices = list(jax.devices() if devices is None else devices)
    if num_devices is not None:
        if not 1 <= num_devices <= len(devices):
            raise ValueError(f"asked for {num_devices} devices, {len(devices)} available ({devices[0].platform})")
        devices = devices[:num_devices]
    return Mesh(np.asarray(devices), (DATA,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """The one batch sharding: the leading (batch) dimension split over the mesh's 'data' axis. The loaders, the
    steps, the benchmarks and the checks all place their batches with it."""
    return NamedSharding(mesh, P(DATA))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device of `mesh`."""
    return NamedSharding(mesh, P())


def _fsdp_spec(shape: tuple[int, ...], size: int) -> P:
    if int(np.prod(shape)) < FSDP_MIN_SIZE:
        return P()
    for axis in np.argsort(shape)[::-1]:
        if shape[axis] % size == 0:
            spec = [None] * len(shape)
            spec[axis] = DATA
            return P(*spec)
    return P()


def state_shardings(abstract_state: Any, mesh: Mesh, strategy: str = "replicate") -> Any:
    """A sharding for every array of a (possibly abstract) pytree of model/optimizer state: `strategy` 'fsdp' or
    'replicate' (`config.params_sharding`, checked by `config.check_config`)."""
    if strategy == "fsdp":
        size = mesh.shape[DATA]
        return jax.tree.map(lambda x: NamedSharding(mesh, _fsdp_spec(x.shape, size)), abstract_state)
    return jax.tree.map(lambda _: replicated(mesh), abstract_state)
