r"""What `config.remat` costs on the CPU: the training run's own train step with each remat policy, same run,
timed in turns (one step of each policy per round), so that load on the machine falls on all of them alike.

  python benchmarks/remat_cpu.py                                   # runlocal SmallBig-R50 (width 8, 8x64x64), 4 clips
  python benchmarks/remat_cpu.py --config configs/kinetics400_smallbig50_8x8.py:runlocal --rounds 5

Printed: compile seconds and the median step time of each policy, and the ratio to "none" (BENCHMARKS.md, "Compiled
for TPU and GPU targets without them").
"""

from __future__ import annotations

import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from smallbig_jax import cli, sharding, steps
from smallbig_jax.config import REMAT
from smallbig_jax.tools.harness import STEPS_PER_EPOCH

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/kinetics400_smallbig50_8x8.py:runlocal", "Config file[:arg]."
)
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Timed rounds (one step of every policy each) after one warm-up.")
_POLICIES = flags.DEFINE_list("policies", list(REMAT), "Remat policies to compare.")


def main(_):
    mesh = sharding.make_mesh(num_devices=1)
    runs = {}
    for policy in _POLICIES.value:
        config = type(_CONFIG.value)(_CONFIG.value.to_dict())
        config.remat = policy
        setup = steps.train_setup(config, mesh, STEPS_PER_EPOCH)
        n, t, s = config.batch_size, config.data.num_frames, config.data.crop_size
        rng = np.random.default_rng(0)
        batch = {"clip": rng.standard_normal((n, t, s, s, 3), np.float32), "label": np.zeros((n,), np.int32)}
        batch = jax.device_put(batch, sharding.batch_sharding(mesh))
        start = time.perf_counter()
        compiled = setup.train_step.lower(setup.state, batch).compile()
        runs[policy] = dict(step=compiled, state=setup.state, batch=batch, compile_s=time.perf_counter() - start)
        runs[policy]["times"] = []
    for round_ in range(_ROUNDS.value + 1):
        for run in runs.values():
            start = time.perf_counter()
            run["state"], metrics = run["step"](run["state"], run["batch"])
            jax.block_until_ready(metrics)
            if round_:
                run["times"].append(time.perf_counter() - start)
    base = float(np.median(runs[_POLICIES.value[0]]["times"]))
    for policy, run in runs.items():
        median = float(np.median(run["times"]))
        print(
            f"remat={policy:<18} compile {run['compile_s']:6.1f} s   step {median * 1e3:8.1f} ms   x{median / base:.2f}"
        )


if __name__ == "__main__":
    cli.choose_jax_platforms()  # the aot extra's TPU and CUDA plugins left out on a CPU-only machine
    app.run(main)
