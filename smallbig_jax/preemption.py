"""Preemption: SIGTERM (or a first Ctrl-C) stops a training run at a point every process agrees on, after a
synchronous, durable checkpoint; the process then exits with `cli.EXIT_PREEMPTED` (75) for the launcher to requeue.

How a signal is heard. Python runs signal handlers only between bytecodes of the main thread, which can sit in an
XLA compile for minutes. So the handlers here do nothing themselves: `signal.set_wakeup_fd` makes the interpreter's
C-level handler write the signal number to a pipe, and a watcher thread reading it hears the signal at once. It logs
the signal with its time and marks the notice; the main thread looks at the notice at its service points: after
every training step and between the batches of every evaluation (validation and the final test), so a pass over a
large validation set does not hold up the save. A signal before the first step of the run (while the loader opens,
the state is built or the first step compiles) has nothing new to save: the watcher says so and exits at once,
without waiting for the compile. A second Ctrl-C aborts without a checkpoint (exit 130).

How several processes agree, without a host round trip per step. `multihost_utils.reached_preemption_sync_point`
(JAX's preemption sync manager, on the coordination service that `jax.distributed.initialize` starts) is a local
check at each service point, free until a notice arrives; the notice is a key in the coordination service that the
signalled process sets, and each process's sync manager then publishes its service-point counter, waits at a
barrier for the others' and takes the largest plus one: the point where all stop, each at the same training step
(which assumes that no process gets two service points ahead of the slowest while that barrier waits, a few
milliseconds: the collectives of every step keep the processes together). It
was chosen over Orbax's preemption policy because it needs no change to how checkpoints are saved, and over a
per-step `process_allgather` of a flag (what this replaced) because that made every step of every run wait for a
host round trip. JAX's own notifier listens to SIGTERM only and its C handler would be replaced by the one here; the
watcher sets the notice key itself, for SIGTERM and Ctrl-C alike. Before the first step the processes agree through
a second key: each process's watcher thread waits on it (one blocking read for the run's life) and exits at once
when it appears; process 0 waits for the others to have seen it, as they lose the coordination service with it.
"""

from __future__ import annotations

import datetime
import logging
import os
import signal
import threading
import time

import jax
from jax._src import distributed as jax_distributed
from jax.experimental import multihost_utils

from smallbig_jax.cli import EXIT_PREEMPTED

log = logging.getLogger(__name__)

EXIT_ABORTED = 130  # 128 + SIGINT, as a shell reports an interrupted command
NOTICE_KEY = "RECEIVED_PREEMPTION_NOTICE"  # the key JAX's preemption sync manager watches
EXIT_NOW_KEY = "smallbig_preempted_before_first_step/"  # + process index: "exit", or "over" when the run ends
SEEN_KEY = "smallbig_preempted_before_first_step_seen/"
NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "SIGINT"}


class Preempted(Exception):
    """Raised at the service point where every process agreed to stop."""


def _client():
    return jax_distributed.global_state.client if jax.process_count() > 1 else None


class Preemption:
    """SIGTERM and SIGINT handling for the life of one training run (a context manager).

    `check()` at each service point raises `Preempted` once every process has agreed to stop there;
    `trained()` after the first training step tells the watcher that a checkpoint is now worth waiting for;
    `newest` is the checkpoint step a signal before that leaves durable (None: none)."""

    def __init__(self, newest: int | None):
        self.newest = newest
        self.signal_name: str | None = None
        self.signal_time: float | None = None  # time.time() of the first signal
        self.signal_clock: float | None = None  # time.perf_counter() of the first signal
        self._noticed = False
        self._trained = False
        self._interrupts = 0
        self._counter = 0
        self._lock = threading.Lock()
        self._previous: dict[int, object] = {}
        self._previous_fd = -1
        self._read_fd = self._write_fd = -1

    def __enter__(self) -> Preemption:
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)
        for sig in NAMES:
            self._previous[sig] = signal.signal(sig, lambda signum, frame: None)  # the watcher does the work
        self._previous_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        threading.Thread(target=self._watch_signals, name="preemption-signals", daemon=True).start()
        self._notice_thread = None
        if _client() is not None:
            self._notice_thread = threading.Thread(target=self._watch_exit_now, name="preemption-notice", daemon=True)
            self._notice_thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._notice_thread is not None:  # not left blocked in the coordination service at interpreter exit
            try:
                _client().key_value_set(EXIT_NOW_KEY + str(jax.process_index()), "over", allow_overwrite=True)
            except Exception as e:  # the service is gone: the thread's read has failed too
                log.debug("ending the notice watcher: %s", e)
            self._notice_thread.join(timeout=10)
        signal.set_wakeup_fd(self._previous_fd)
        for sig, previous in self._previous.items():
            # None: a handler installed outside Python (JAX's notifier); the default is the closest we can restore.
            signal.signal(sig, signal.SIG_DFL if previous is None else previous)
        os.close(self._write_fd)  # ends the watcher's read

    def trained(self) -> None:
        with self._lock:
            self._trained = True

    def check(self) -> None:
        """A service point: raises `Preempted` where every process stops (one process: the first after a signal)."""
        self._counter += 1
        if _client() is None:
            agreed = self._noticed
        else:
            agreed = multihost_utils.reached_preemption_sync_point(self._counter)
        if agreed:
            raise Preempted()

    def durable_line(self, step: int) -> str:
        """The log line once checkpoint `step` is durable (on a process that was not signalled itself, timed from
        the notice the signalled one left in the coordination service)."""
        if self.signal_clock is not None:
            took = time.perf_counter() - self.signal_clock
        else:
            try:
                notice = _client().key_value_try_get(NOTICE_KEY)
            except Exception:  # not found: the notice came another way
                notice = None
            self.signal_name = "preemption notice"
            self.signal_time = datetime.datetime.fromisoformat(notice).timestamp() if notice else time.time()
            took = time.time() - self.signal_time
        return f"{self.signal_name} at {self._when()}: checkpoint {step} durable after {took:.1f} s"

    def _when(self) -> str:
        t = datetime.datetime.fromtimestamp(self.signal_time or time.time(), datetime.UTC)
        return t.isoformat(timespec="seconds")

    def _watch_signals(self) -> None:
        while True:
            try:
                data = os.read(self._read_fd, 1)
            except OSError:
                data = b""
            if not data:  # the write end closed: the run is over
                os.close(self._read_fd)
                return
            self._on_signal(data[0])

    def _on_signal(self, signum: int) -> None:
        if signum not in NAMES:
            return
        if signum == signal.SIGINT:
            self._interrupts += 1
            if self._interrupts > 1:
                log.error("second Ctrl-C: aborting without a checkpoint")
                os._exit(EXIT_ABORTED)
        with self._lock:
            if self._noticed:
                return
            self._noticed = True
            self.signal_name, self.signal_time, self.signal_clock = NAMES[signum], time.time(), time.perf_counter()
            before_first_step = not self._trained
        client = _client()
        if before_first_step:
            if client is not None:
                for i in range(jax.process_count()):
                    client.key_value_set(EXIT_NOW_KEY + str(i), "exit", allow_overwrite=True)
                return  # the notice watcher of this process exits, with the others
            self._exit_before_first_step()
        what = "Ctrl-C" if signum == signal.SIGINT else self.signal_name
        log.warning(
            "%s at %s: checkpointing at the next step boundary (or evaluation batch), then exiting (%d)",
            what,
            self._when(),
            EXIT_PREEMPTED,
        )
        if client is not None:
            client.key_value_set(NOTICE_KEY, datetime.datetime.now(datetime.UTC).isoformat())

    def _watch_exit_now(self) -> None:
        client = _client()
        while True:
            try:
                what = client.blocking_key_value_get(EXIT_NOW_KEY + str(jax.process_index()), 3_600_000)
                break
            except Exception as e:  # a timeout: wait again; anything else: stop watching
                if "DEADLINE_EXCEEDED" not in str(e):
                    return
        if what != "exit":
            return  # the run is over
        with self._lock:
            self._noticed = True
            if self.signal_time is None:
                self.signal_name, self.signal_time = "preemption notice", time.time()
        client.key_value_set(SEEN_KEY + str(jax.process_index()), "1")
        if jax.process_index() == 0:  # the coordination service lives here: the others must have read the key
            for i in range(1, jax.process_count()):
                try:
                    client.blocking_key_value_get(SEEN_KEY + str(i), 10_000)
                except Exception:
                    break
        self._exit_before_first_step()

    def _exit_before_first_step(self) -> None:
        newest = "none" if self.newest is None else f"step {self.newest}"
        log.warning(
            "%s at %s before the first step: nothing new to save (newest checkpoint: %s); exiting (%d) without "
            "waiting for the compile",
            self.signal_name or "SIGTERM",
            self._when(),
            newest,
            EXIT_PREEMPTED,
        )
        logging.shutdown()
        os._exit(EXIT_PREEMPTED)
