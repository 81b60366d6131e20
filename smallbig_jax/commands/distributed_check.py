r"""Checks a multi-process launch end to end: start-up, a global batch across processes, a jitted reduction and a
data-parallel forward of a narrow SmallBigNet. Every process prints one JSON line; all must agree.

  scripts/launch_local.sh -n 2 -- smallbig-jax distributed_check      # two processes on 127.0.0.1, CPU
  scripts/launch_slurm.sh --command "smallbig-jax distributed_check"   # on a cluster, before a long job

Each process contributes `--clips_per_process` clips whose values depend on the process index, so the global sum
is only right if every process's data arrived; the forward pass uses the same weights everywhere (seed 0) and its
logits are gathered to every process.
"""

import json

import jax
import numpy as np
from absl import flags
from flax import nnx
from jax.experimental import multihost_utils

from smallbig_jax import cli
from smallbig_jax.distributed import initialize_distributed
from smallbig_jax.models import build_model
from smallbig_jax.sharding import batch_sharding, make_mesh, replicated

FLAGS = flags.FlagValues()
_CLIPS = flags.DEFINE_integer(
    "clips_per_process", 2, "Clips of the global batch that each process provides.", flag_values=FLAGS
)
_TIMEOUT = flags.DEFINE_integer(
    "init_timeout", 60, "Seconds to wait for the other processes at start-up.", flag_values=FLAGS
)
cli.define_debug_flag(FLAGS)


def main() -> int | None:
    info = initialize_distributed(initialization_timeout=_TIMEOUT.value)

    mesh = make_mesh()
    n_proc, index = jax.process_count(), jax.process_index()
    per_process = _CLIPS.value
    if per_process % jax.local_device_count():
        raise ValueError(f"--clips_per_process {per_process} is not a multiple of {jax.local_device_count()} devices")
    shape = (per_process, 2, 16, 16, 3)  # [N, T, H, W, C] clips of this process
    local = np.full(shape, float(index + 1), np.float32) + np.arange(np.prod(shape), dtype=np.float32).reshape(
        shape
    ) / np.prod(shape)
    clips = jax.make_array_from_process_local_data(batch_sharding(mesh), local)

    total = jax.jit(lambda x: x.sum(), out_shardings=replicated(mesh))(clips)
    model = build_model("smallbig23", 5, base_width=4, seed=0)
    model.eval()
    graphdef, state = nnx.split(model)
    state = jax.device_put(state, replicated(mesh))
    forward = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x), out_shardings=replicated(mesh))
    logits = forward(state, clips)
    gathered = multihost_utils.process_allgather(clips.addressable_shards[0].data.sum(), tiled=False)

    # The expected sum, computed by every process for the whole global batch from the same formula.
    fraction = np.arange(np.prod(shape), dtype=np.float64).sum() / np.prod(shape)
    expected = sum((i + 1) * np.prod(shape) + fraction for i in range(n_proc))
    print(
        json.dumps(
            dict(
                process_index=index,
                process_count=n_proc,
                initialized=info["initialized"],
                global_devices=jax.device_count(),
                local_devices=jax.local_device_count(),
                global_batch=int(clips.shape[0]),
                global_sum=float(total),
                expected_sum=float(expected),
                logits_sum=float(np.asarray(logits).sum()),
                logits_shape=list(logits.shape),
                first_shard_sums=[float(v) for v in np.asarray(gathered).ravel()],
            )
        ),
        flush=True,
    )
    multihost_utils.sync_global_devices("distributed_check done")
