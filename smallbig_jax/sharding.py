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
SLICE = "slice"  # outermost axis of a multi-slice mesh: data parallel over the data-centre network (DCN)
FSDP_MIN_SIZE = 2**18  # arrays smaller than this stay replicated: gathering them costs more than it saves


def make_mesh(
    devices: Sequence[jax.Device] | None = None, *, num_devices: int | None = None, num_slices: int = 1
) -> Mesh:
    """The 1-D 'data' mesh over `devices` (default: all devices of all processes), or over the first `num_devices`
    of them. The one place a mesh is made: training, evaluation, the benchmarks and the checks take theirs here.

    With `num_slices` > 1 (several TPU slices joined by the data-centre network) the mesh is 2-D, ('slice', 'data'):
    the outer axis crosses the slices (devices grouped by their `slice_index`), 'data' stays within a slice, so that
    FSDP's gathers stay on the fast links inside a slice and only the gradient reduction crosses slices."""
    devices = list(jax.devices() if devices is None else devices)
    if num_devices is not None:
        if not 1 <= num_devices <= len(devices):
            raise ValueError(f"asked for {num_devices} devices, {len(devices)} available ({devices[0].platform})")
        devices = devices[:num_devices]
    if num_slices == 1:
        return Mesh(np.asarray(devices), (DATA,))
    if len(devices) % num_slices:
        raise ValueError(f"{len(devices)} devices do not split into {num_slices} slices")
    devices = sorted(devices, key=lambda d: getattr(d, "slice_index", 0))  # stable: each slice keeps its order
    return Mesh(np.asarray(devices).reshape(num_slices, -1), (SLICE, DATA))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """The one batch sharding: the leading (batch) dimension split over every device, along 'data' (and over 'slice'
    outside it on a multi-slice mesh). The loaders, the steps, the benchmarks and the checks all place their batches
    with it."""
    return NamedSharding(mesh, P(tuple(mesh.axis_names) if SLICE in mesh.axis_names else DATA))


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
