"""No worker process outlives the process that started it: the grain workers of training and evaluation, and the
process pools of `prepare`, `check` and `synthetic`, call `die_with_parent` first.

The worker watches its parent id in a thread and exits when it changes (the parent died: by a signal, `kill -9`
included, or a crash, and the worker was handed to init or a subreaper). Linux's `PR_SET_PDEATHSIG` would be faster
but fires when the *thread* that started the worker ends, not its process: grain's workers are started by the
loader's prefetch thread, which ends and is started again while the process lives on.
"""

from __future__ import annotations

import os
import threading

POLL_SECONDS = 0.25


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        threading.Event().wait(POLL_SECONDS)
    os._exit(1)


def die_with_parent(*_: object) -> None:
    """Makes this worker exit within `POLL_SECONDS` of its parent's death. Takes and ignores any arguments, so that it
    serves as grain's `worker_init_fn(index, count)` and as a pool's initializer alike."""
    threading.Thread(target=_watch, args=(os.getppid(),), name="die-with-parent", daemon=True).start()
