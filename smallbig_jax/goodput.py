"""Where a training run's wall time went (goodput): initialisation, compilation (with persistent-cache hits), waiting
for input, training steps, checkpoint saves, evaluation, closing, and the steps lost to a preemption (trained by an
earlier run after its last checkpoint, then trained again).

The loop times each phase it enters (`Goodput.phase`); JAX reports the time of each trace, lowering and XLA compile
(`jax.monitoring`), which is moved from the phase it happened in to `compile`. The phases tile the run from the
process start to the final line, so their sum is its wall time (a test holds them to 2%). Every run writes its
account as a `goodput` row of `metrics.jsonl` (and TensorBoard scalars `goodput/...`; with each log line, the
account so far as `goodput_so_far`); the next run of the workdir reads the earlier runs' rows and reports the whole
job: "goodput 87%: ..." counts training steps that were kept.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator

import jax

PHASES = ("init", "compile", "input", "train", "checkpoint", "evaluation", "close")
COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"
SPLIT = "goodput"  # the split of a run's final account in metrics.jsonl
PARTIAL = "goodput_so_far"  # the account so far, written with every log line (a killed run leaves no final one)

_active: Goodput | None = None


def _on_duration(event: str, seconds: float, **kwargs) -> None:
    if _active is not None and event in COMPILE_EVENTS and threading.current_thread() is threading.main_thread():
        _active.compiled(seconds)


def _on_event(event: str, **kwargs) -> None:
    if _active is not None and event == CACHE_HIT_EVENT:
        _active.cache_hits += 1


jax.monitoring.register_event_duration_secs_listener(_on_duration)
jax.monitoring.register_event_listener(_on_event)


def process_start_time() -> float:
    """`time.time()` when this process started (Linux), else now."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rpartition(")")[2].split()[19])
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, StopIteration):
        return time.time()


class Goodput:
    """The account of one run, from `started` (a `time.time()`, default now) to `finish()`."""

    def __init__(self, started: float | None = None):
        global _active
        self.started = started or time.time()
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.lost_seconds = 0.0
        self.cache_hits = 0
        self.steps_trained = 0
        self.lost_steps = 0
        self._begin = time.perf_counter() - (time.time() - self.started)
        self._mark = self._begin
        self._phase = "init"
        self._compiled_in_phase = 0.0
        _active = self

    def compiled(self, seconds: float) -> None:
        self.seconds["compile"] += seconds
        self._compiled_in_phase += seconds

    def _switch(self, phase: str) -> str:
        now = time.perf_counter()
        self.seconds[self._phase] += now - self._mark - self._compiled_in_phase
        self._mark, self._compiled_in_phase = now, 0.0
        previous, self._phase = self._phase, phase
        return previous

    def switch(self, phase: str) -> None:
        """From now on, time counts to `phase` (the run's closing, until the account is written)."""
        self._switch(phase)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time spent inside counts to `name` (less the compilation in it), then to the phase around it again."""
        previous = self._switch(name)
        try:
            yield
        finally:
            self._switch(previous)

    def add_lost(self, steps: int, seconds: float) -> None:
        """Steps an earlier run trained after its last checkpoint, trained again by this one."""
        self.lost_steps += steps
        self.lost_seconds += seconds

    def wall(self) -> float:
        return time.perf_counter() - self._begin

    def row(self) -> dict[str, float]:
        """The account so far (seconds per phase, the wall time, cache hits, steps) for metrics.jsonl."""
        self._switch(self._phase)
        return {
            **{f"{k}_seconds": round(v, 3) for k, v in self.seconds.items()},
            "lost_seconds": round(self.lost_seconds, 3),
            "wall_seconds": round(self.wall(), 3),
            "run_started": self.started,
            "cache_hits": self.cache_hits,
            "steps_trained": self.steps_trained,
            "lost_steps": self.lost_steps,
        }

    def close(self) -> None:
        global _active
        if _active is self:
            _active = None


def earlier_runs(workdir: str) -> tuple[list[dict], int]:
    """(the last goodput row of every earlier run in `workdir`'s metrics.jsonl, the last step any of them trained):
    read before a resumed run drops the rows of the steps it trains again."""
    path = os.path.join(workdir, "metrics.jsonl")
    runs: dict[float, dict] = {}
    last_step = 0
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue  # a line cut by a kill
                if row.get("split") in (SPLIT, PARTIAL) and "run_started" in row:
                    runs[row["run_started"]] = row
                elif row.get("split") == "train":
                    last_step = max(last_step, int(row["step"]))
    return list(runs.values()), last_step


def summary(row: dict, earlier: list[dict]) -> str:
    """The final line: this run's goodput (training time over wall time) and its phases, which add up to the wall
    time; the steps of earlier runs lost to a preemption; with earlier runs, the whole job's goodput (training time
    that was kept, over the wall time of every run)."""
    parts = ", ".join(
        f"{name} {row[f'{name}_seconds']:.1f} s" + (f" ({row['cache_hits']} cache hits)" if name == "compile" else "")
        for name in PHASES
        if name != "train"
    )
    wall = row["wall_seconds"]
    line = f"goodput {100 * row['train_seconds'] / wall:.0f}%: training {row['train_seconds']:.1f} s of {wall:.1f} s"
    line += f" ({parts})"
    if row["lost_steps"]:
        line += f"; {row['lost_steps']} steps ({row['lost_seconds']:.1f} s) of an earlier run lost and trained again"
    if earlier:
        runs = [*earlier, row]
        job_wall = sum(r["wall_seconds"] for r in runs)
        job_train = sum(r["train_seconds"] - r["lost_seconds"] for r in runs)
        line += f"; over {len(runs)} runs of this workdir: {100 * job_train / job_wall:.0f}% of {job_wall:.1f} s"
    return line
