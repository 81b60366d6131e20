r"""Same-run step time of a two-process training run (jax.distributed on 127.0.0.1, one CPU device each, the tiny
synthetic config), for checkouts side by side: what the per-step preemption round trip cost (issue 21).

  git worktree add /tmp/before ced9de4   # the checkout before issue 21, which had the round trip
  python benchmarks/two_process_step_time.py --repo . --round_trip --repo /tmp/before --rounds 2

`--round_trip` adds this checkout run with the preemption sync point replaced by the per-step `process_allgather`
it replaced (patched into the processes at start, the code unchanged): the round trip's cost in the same tree.
Each round runs every variant once, in turn (so all see the same machine load), with 40 steps logged every 10;
a step's time is the wall time between two log lines over 10, the first interval (compilation) left out. Prints the
median and the load average for each. The data is written once, to a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time

LINE = re.compile(r"step (\d+)/\d+ ")
ROUND_TRIP = "round trip"
# `smallbig-jax` with every step's agreement on a preemption made by a host round trip over all processes, as
# before issue 21 (no process is signalled here, so the flag gathered is 0).
WITH_ROUND_TRIP = """
import sys
import numpy as np
from jax.experimental import multihost_utils
multihost_utils.reached_preemption_sync_point = lambda step: bool(multihost_utils.process_allgather(np.int32(0)).max())
from smallbig_jax import commands
sys.exit(commands.main())
"""


def run_once(repo: str, data: str, workdir: str, round_trip: bool = False) -> list[float]:
    """Seconds per step of each logged interval after the first, from process 0's log lines."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [
        sys.executable,
        *(["-c", WITH_ROUND_TRIP] if round_trip else ["-m", "smallbig_jax"]),
        "train",
        f"--config={os.path.join(repo, 'configs', 'synthetic_smallbig.py')}:tiny,dir={data}",
        f"--workdir={workdir}",
        "--config.final_eval=False",
        "--config.num_epochs=10",
        "--config.log_every=10",
        "--config.checkpoint_every=1000",
    ]
    procs = []
    for i in range(2):
        env = {
            **os.environ,
            "PYTHONPATH": os.path.abspath(repo),
            "JAX_PLATFORMS": "cpu",
            "SMALLBIG_COORDINATOR": f"127.0.0.1:{port}",
            "SMALLBIG_NUM_PROCESSES": "2",
            "SMALLBIG_PROCESS_ID": str(i),
        }
        # In the checkout: `python -m` puts the working directory first on sys.path, before PYTHONPATH.
        procs.append(
            subprocess.Popen(command, env=env, cwd=repo, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        )
    times = []
    for line in procs[0].stderr:
        m = LINE.search(line)
        if m:
            times.append((int(m[1]), time.perf_counter()))
    for p in procs:
        p.wait()
        if p.returncode:
            raise SystemExit(f"{repo}: a process exited {p.returncode}")
    return [(t1 - t0) / (s1 - s0) for (s0, t0), (s1, t1) in zip(times[1:], times[2:])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", action="append", required=True, help="a checkout to time (repeat)")
    parser.add_argument(
        "--round_trip", action="store_true", help="also the first checkout with the per-step allgather put back"
    )
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    variants = [(r, False) for r in args.repo] + [(args.repo[0], True)] * args.round_trip
    names = [f"{r} ({ROUND_TRIP})" if rt else r for r, rt in variants]
    per_variant: dict[str, list[float]] = {n: [] for n in names}
    loads: dict[str, list[float]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "data")
        subprocess.run(
            [sys.executable, "-m", "smallbig_jax", "synthetic", f"--out={data}", "--num_train=16", "--num_val=7",
             "--num_frames=8", "--size=32", "--no_arrayrecord"],
            env={**os.environ, "PYTHONPATH": os.path.abspath(args.repo[0])}, cwd=args.repo[0],
            check=True, capture_output=True,
        )  # fmt: skip
        for k in range(args.rounds):
            for i, (name, (repo, round_trip)) in enumerate(zip(names, variants)):
                loads[name].append(os.getloadavg()[0])
                per_variant[name] += run_once(repo, data, os.path.join(tmp, f"run{k}_{i}"), round_trip)
    for name in names:
        steps = per_variant[name]
        print(
            f"{name}: median {1000 * statistics.median(steps):.1f} ms/step over {len(steps)} intervals of 10 steps "
            f"(min {1000 * min(steps):.1f}, max {1000 * max(steps):.1f}); "
            f"load average {statistics.mean(loads[name]):.1f}"
        )


if __name__ == "__main__":
    main()
