"""Pod-grade runs through the user's command (`smallbig-jax train` in subprocesses, tiny synthetic config): SIGTERM to
one rank of a two-process run during its first compile, mid-training and mid-validation, each time both ranks stop
at the same step with exit status 75 and the reruns end bit for bit where a run without signals ends; the goodput
account of a preempted run adds up to its wall time; one run per workdir; no grain worker outlives a kill -9; Ctrl-C
saves like SIGTERM and a second one aborts; a checkpoint save that fails on a full disk stops the run in one line.

The two processes join with jax.distributed on 127.0.0.1, one CPU device each; the runs share the test session's
persistent compilation cache (conftest.py), so only the first compiles."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sys
import threading
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from helpers import REPO, run, run_cli, start_python

from smallbig_jax import checkpointing, cli
from smallbig_jax.data import writers

pytestmark = pytest.mark.xdist_group("preemption")

TOTAL = 8  # 16 videos / batch 4 x 2 epochs; validation after steps 4 and 8
TIMEOUT = 1200  # a loaded 2-core machine; the runs themselves take seconds each once compiled


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("synthetic"))
    writers.write_synthetic_dataset(out, num_train=16, num_val=7, num_frames=8, size=32, workers=1, arrayrecord=False)
    return out


def flags(dataset, *extra):
    # Validation every epoch over the 16 training videos, 2 per batch: 8 batches to stop between.
    return [
        f"--config={os.path.join(REPO, 'configs', 'synthetic_smallbig.py')}:tiny,dir={dataset}",
        "--config.final_eval=False",
        "--config.eval_every_epochs=1",
        "--config.eval_batch_size=2",
        f"--config.data.val_list={os.path.join(dataset, 'train.txt')}",
        *extra,
    ]


class Proc:
    """A `smallbig-jax train` process whose stderr lines are collected, with their arrival times, by a thread."""

    def __init__(self, args, env):
        self.started = time.time()
        self.popen = start_python("-m", "smallbig_jax", "train", *args, env=env)
        self.lines: list[tuple[float, str]] = []
        self.stdout = ""
        self._threads = [threading.Thread(target=self._read, daemon=True), threading.Thread(target=self._out)]
        for t in self._threads:
            t.start()

    def _read(self):
        for line in self.popen.stderr:
            self.lines.append((time.time(), line.rstrip("\n")))

    def _out(self):
        self.stdout = self.popen.stdout.read()

    @property
    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def line_with(self, pattern: str) -> tuple[float, re.Match] | None:
        for t, line in self.lines:
            m = re.search(pattern, line)
            if m:
                return t, m
        return None

    def wait(self) -> int:
        code = self.popen.wait(timeout=TIMEOUT)
        for t in self._threads:
            t.join(timeout=30)
        return code


def train(dataset, workdir, *extra, processes=1, env=None):
    """`processes` train processes on `workdir` (two: joined on a free port)."""
    if processes == 1:
        return [Proc([*flags(dataset, *extra), f"--workdir={workdir}"], env or {})]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [
        Proc(
            [*flags(dataset, *extra), f"--workdir={workdir}"],
            {
                "SMALLBIG_COORDINATOR": f"127.0.0.1:{port}",
                "SMALLBIG_NUM_PROCESSES": str(processes),
                "SMALLBIG_PROCESS_ID": str(i),
                **(env or {}),
            },
        )
        for i in range(processes)
    ]


def train_rows(workdir, split="train"):
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return {}
    rows = {}
    for line in open(path):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if row["split"] == split:
            rows[row["step"]] = row
    return rows


def wait_for(predicate, procs, timeout=TIMEOUT):
    start = time.time()
    while not predicate():
        for p in procs:
            assert p.popen.poll() is None, p.text[-4000:]
        assert time.time() - start < timeout, "timed out"
        time.sleep(0.02)


def finish(procs) -> list[int]:
    try:
        return [p.wait() for p in procs]
    finally:
        for p in procs:
            if p.popen.poll() is None:
                p.popen.kill()


def result_line(proc) -> dict:
    """The JSON line `train` prints (gloo prints its own lines to stdout too)."""
    return json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("{")))


def state_at(workdir, step):
    """The saved state on this process's one device (saved by two processes: orbax needs the target layout)."""
    path = os.path.join(workdir, "checkpoints", str(step), "state")
    checkpointer = ocp.StandardCheckpointer()
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), checkpointer.metadata(path).item_metadata
    )
    return checkpointer.restore(path, target)


def durable_step(proc) -> int:
    found = proc.line_with(r"at \S+: checkpoint (\d+) durable after [\d.]+ s")
    assert found, proc.text[-4000:]
    return int(found[1][1])


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory):
    """Two processes, no signal."""
    workdir = str(tmp_path_factory.mktemp("reference"))
    procs = train(dataset, workdir, processes=2)
    assert finish(procs) == [0, 0], procs[0].text[-3000:] + procs[1].text[-3000:]
    return workdir


def test_sigterm_to_one_rank_stops_both_at_one_step_and_the_reruns_end_bit_for_bit(dataset, reference, tmp_path):
    workdir = str(tmp_path / "run")

    # 1. During the first compile (rank 1 has logged its plan, no step trained): both exit at once, nothing saved.
    procs = train(dataset, workdir, processes=2)
    wait_for(lambda: procs[1].line_with("global batch 4 on 2 devices"), procs)
    procs[1].popen.send_signal(signal.SIGTERM)
    assert finish(procs) == [cli.EXIT_PREEMPTED] * 2, procs[0].text[-3000:] + procs[1].text[-3000:]
    for p in procs:
        assert "before the first step: nothing new to save (newest checkpoint: none)" in p.text, p.text[-3000:]
    assert not train_rows(workdir) and not checkpointing.list_steps(workdir)

    # 2. Mid-training: both save the same step, past the one the signal came after, before the epoch's end.
    procs = train(dataset, workdir, processes=2)
    wait_for(lambda: max(train_rows(workdir), default=0) >= 2, procs)
    procs[1].popen.send_signal(signal.SIGTERM)
    assert finish(procs) == [cli.EXIT_PREEMPTED] * 2, procs[0].text[-3000:] + procs[1].text[-3000:]
    saved = durable_step(procs[0])
    assert durable_step(procs[1]) == saved and 2 <= saved < 4 and checkpointing.list_steps(workdir)[-1] == saved
    assert re.search(r"SIGTERM at \S+: checkpoint \d+ durable after", procs[1].text)
    assert checkpointing.verify(checkpointing._checkpoints_dir(workdir) / str(saved)) is None
    # The goodput account of this preempted run: its phases add up to its wall time, which is the time from the
    # process start to its final line (measured here) within 2%.
    for p in procs:
        at, _ = p.line_with(r"goodput \d+%: ")
        (row,) = [r for r in train_rows(workdir, "goodput").values()][-1:]
        account = result_line(p)["goodput"]
        parts = sum(account[f"{k}_seconds"] for k in ("init", "compile", "input", "train", "checkpoint"))
        parts += account["evaluation_seconds"] + account["close_seconds"]
        assert parts == pytest.approx(account["wall_seconds"], rel=0.02)
        assert account["wall_seconds"] == pytest.approx(at - p.started, rel=0.02)
        assert row["steps_trained"] == saved
    assert account["compile_seconds"] > 0 and account["train_seconds"] > 0 and account["checkpoint_seconds"] > 0

    # 3. Mid-validation (the signal right after step 4's row, as the validation of step 4 starts): both stop
    # between two of its batches, save step 4 without a validation metric; the rerun repeats the validation first.
    procs = train(dataset, workdir, processes=2)
    wait_for(lambda: 4 in train_rows(workdir), procs)
    procs[1].popen.send_signal(signal.SIGTERM)
    assert finish(procs) == [cli.EXIT_PREEMPTED] * 2, procs[0].text[-3000:] + procs[1].text[-3000:]
    assert durable_step(procs[0]) == durable_step(procs[1]) == 4
    for p in procs:
        assert re.search(r"val of step 4 stopped before its batch \d+ by the preemption", p.text), p.text[-3000:]
    assert 4 not in train_rows(workdir, "val")

    # 4. To the end: losses, validation scores and the final state are those of the run without signals.
    procs = train(dataset, workdir, processes=2)
    assert finish(procs) == [0, 0], procs[0].text[-3000:] + procs[1].text[-3000:]
    assert "repeating the validation of step 4, which a preemption interrupted" in procs[0].text
    assert {s: r["loss"] for s, r in train_rows(workdir).items()} == {
        s: r["loss"] for s, r in train_rows(reference).items()
    }
    assert train_rows(workdir, "val") == train_rows(reference, "val")
    for a, b in zip(jax.tree.leaves(state_at(workdir, TOTAL)), jax.tree.leaves(state_at(reference, TOTAL))):
        np.testing.assert_array_equal(a, b)
    assert re.search(r"goodput \d+%: .*; over 3 runs of this workdir: \d+% of [\d.]+ s", procs[0].text)


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rpartition(")")[2].split()[1]) == pid:
                        found.append(int(entry))
            except OSError:
                continue
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def test_one_run_per_workdir_no_orphans_and_ctrl_c(dataset, tmp_path):
    workdir = str(tmp_path / "run")
    many = ["--config.num_epochs=50", "--config.eval_every_epochs=0", "--config.data.worker_count=2"]
    (first,) = train(dataset, workdir, *many, "--config.checkpoint_every=1", "--config.keep_checkpoints=1")
    wait_for(lambda: max(train_rows(workdir), default=0) >= 2, [first])

    # evaluate beside it: the one checkpoint kept is replaced at every step, yet each evaluation reads a whole one.
    for _ in range(2):
        evaluated = run_cli("evaluate", *flags(dataset), f"--workdir={workdir}", timeout=TIMEOUT)
        assert evaluated.returncode == 0, evaluated.stderr[-3000:]
        assert re.search(r"^top-1 [\d.]+  top-5 [\d.]+  over \d+ videos", evaluated.stdout, re.M), evaluated.stdout
    assert first.popen.poll() is None, first.text[-3000:]

    # A second train on the workdir: refused in one line naming the holder; the first trains on.
    (second,) = train(dataset, workdir, *many)
    assert finish([second]) == [cli.EXIT_USER_ERROR]
    holder = f"(pid {first.popen.pid} on host {socket.gethostname()}, since "
    assert second.lines[0][1].startswith(f"error: {workdir} is in use by another train run {holder}"), second.text
    reached = max(train_rows(workdir))
    wait_for(lambda: max(train_rows(workdir)) >= reached + 2, [first])

    # kill -9: the grain workers follow their parent.
    workers = children(first.popen.pid)
    assert len(workers) >= 2, workers
    first.popen.send_signal(signal.SIGKILL)
    assert finish([first]) == [-signal.SIGKILL]
    killed_at = max(train_rows(workdir))
    deadline = time.time() + 10
    while any(alive(w) for w in workers) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(alive(w) for w in workers), [w for w in workers if alive(w)]

    # The dead run's lock is taken over; Ctrl-C saves like SIGTERM (exit 75).
    (third,) = train(dataset, workdir, *many[:2])
    assert third.line_with(f"taking over the workdir lock of pid {first.popen.pid}") or third.popen.poll() is None
    resumed = checkpointing.list_steps(workdir)[-1]
    wait_for(lambda: max(train_rows(workdir)) >= resumed + 1 and third.line_with(r"step \d+/"), [third])
    third.popen.send_signal(signal.SIGINT)
    assert finish([third]) == [cli.EXIT_PREEMPTED], third.text[-3000:]
    assert f"taking over the workdir lock of pid {first.popen.pid} on host" in third.text
    saved = durable_step(third)
    assert re.search(rf"SIGINT at \S+: checkpoint {saved} durable after", third.text)
    assert checkpointing.list_steps(workdir)[-1] == saved > resumed
    # Goodput: the steps the killed run trained after its last checkpoint are counted as lost (and trained again).
    account = result_line(third)["goodput"]
    assert account["lost_steps"] == killed_at - resumed and (account["lost_seconds"] > 0) == (killed_at > resumed)
    assert checkpointing.verify(checkpointing._checkpoints_dir(workdir) / str(saved)) is None

    # A second Ctrl-C aborts at once, without a checkpoint.
    (fourth,) = train(dataset, workdir, *many[:2])
    wait_for(lambda: fourth.line_with(r"step \d+/"), [fourth])
    fourth.popen.send_signal(signal.SIGINT)
    time.sleep(0.05)
    fourth.popen.send_signal(signal.SIGINT)
    assert finish([fourth]) == [130], fourth.text[-3000:]
    assert "second Ctrl-C: aborting without a checkpoint" in fourth.text


def test_a_failed_checkpoint_save_stops_the_run_in_one_line(dataset, tmp_path):
    """A full disk: the workdir on a 1.5 MB tmpfs, mounted in a private mount namespace (`unshare`), holds the first
    checkpoint (0.6 MB) but not the next. The run stops at the step of the failed save (its save is asynchronous: at
    the latest one step later) with `error: <path>: No space left on device` and exit status 2."""
    mount = tmp_path / "disk"
    mount.mkdir()
    workdir = mount / "run"
    args = [*flags(dataset, "--config.eval_every_epochs=0", "--config.keep_checkpoints=1"), f"--workdir={workdir}"]
    script = (
        f"mount -t tmpfs -o size=1536k tmpfs {mount} && "
        f"{sys.executable} -m smallbig_jax train {' '.join(args)}; status=$?; "
        f"cp {workdir}/metrics.jsonl {tmp_path}/metrics.jsonl; exit $status"
    )
    out = run(["unshare", "--user", "--map-root-user", "--mount", "bash", "-c", script], timeout=TIMEOUT)
    assert out.returncode == cli.EXIT_USER_ERROR, out.stderr[:3000] + out.stderr[-3000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "No space left on device" in errors[0], out.stderr[-4000:]
    failed = int(re.search(r"the checkpoint of step (\d+) was not saved", errors[0])[1])
    assert errors[0].startswith(f"error: {workdir}/checkpoints/"), errors[0]
    trained = max(json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl"))
    assert failed <= trained <= failed + 1 < TOTAL


def test_goodput_moves_compilation_out_of_its_phase_and_sums_to_the_wall_time(monkeypatch):
    """The account's arithmetic, with a clock stepped by hand: 2 s of init, then 6 s in the train phase, 3 s of it a
    compilation JAX reported and 1 s a checkpoint inside it; the summary of a second run adds both."""
    from smallbig_jax import goodput

    now = [100.0]
    monkeypatch.setattr(goodput.time, "perf_counter", lambda: now[0])
    monkeypatch.setattr(goodput.time, "time", lambda: now[0])
    account = goodput.Goodput(started=98.0)
    try:
        with account.phase("train"):
            now[0] += 1
            goodput._on_duration(goodput.COMPILE_EVENTS[2], 3.0)
            goodput._on_event(goodput.CACHE_HIT_EVENT)
            now[0] += 3
            with account.phase("checkpoint"):
                now[0] += 1
            now[0] += 1
        row = account.row()
    finally:
        account.close()
    assert (row["init_seconds"], row["compile_seconds"], row["train_seconds"], row["checkpoint_seconds"]) == (
        2.0,
        3.0,
        2.0,
        1.0,
    )
    assert row["wall_seconds"] == 8.0 == sum(row[f"{p}_seconds"] for p in goodput.PHASES)
    assert row["cache_hits"] == 1
    line = goodput.summary(row, [row])
    assert line.startswith("goodput 25%: training 2.0 s of 8.0 s (init 2.0 s, compile 3.0 s (1 cache hits),")
    assert line.endswith("; over 2 runs of this workdir: 25% of 16.0 s")
