"""One training run per workdir: process 0 holds an exclusive lock on `<workdir>/train.lock` for the run's life.

The lock is `fcntl.flock` on a file that names its holder (`pid host time`); a second `train` on the workdir is
refused with `WorkdirBusyError` naming them. The kernel drops the lock when its process ends, however it ends
(`kill -9` included), so the lock file of a dead run is taken over, and said so; the file is deleted when the run
ends. Object-store workdirs (`gs://...`) have no such lock: a warning says so.
"""

from __future__ import annotations

import datetime
import fcntl
import logging
import os
import socket

from smallbig_jax.errors import WorkdirBusyError

log = logging.getLogger(__name__)

LOCK_FILE = "train.lock"


class WorkdirLock:
    """`with WorkdirLock(workdir):` holds the workdir for one run (process 0; a no-op on the others)."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.path = os.path.join(workdir, LOCK_FILE)
        self.enabled = enabled and "://" not in workdir
        if enabled and not self.enabled:
            log.warning("%s is on an object store: nothing stops a second run from writing there too", workdir)
        self._fd: int | None = None
        self._created = False

    def __enter__(self) -> WorkdirLock:
        if not self.enabled:
            return self
        self._created = not os.path.exists(os.path.dirname(self.path))
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").split()
                os.close(fd)
                pid, host, since = (holder + ["?", "?", "?"])[:3]
                raise WorkdirBusyError(
                    f"{os.path.dirname(self.path)} is in use by another train run (pid {pid} on host {host}, since "
                    f"{since}); wait for it to end, stop it, or use another --workdir"
                ) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:  # not a file that its holder deleted while this process opened it
                break
            os.close(fd)
        stale = os.pread(fd, 200, 0).decode(errors="replace").split()
        if stale:
            log.warning(
                "taking over the workdir lock of pid %s on host %s, which is no longer running",
                *(stale + ["?", "?"])[:2],
            )
        now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()} {now}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.unlink(self.path)  # under the lock: a run waiting to open it sees the inode change and retries
            os.close(self._fd)
            self._fd = None
            if self._created and not os.listdir(os.path.dirname(self.path)):
                os.rmdir(os.path.dirname(self.path))  # refused before it wrote anything: as it was
