"""This host's grain batches -> global ``jax.Array`` batches on a mesh, prefetched, resumable.

`DeviceIterator` is what the loaders of :mod:`smallbig_jax.data.pipeline` return. It is made of one part per job:

* `GlobalBatcher`: a host batch (this process's rows, numpy) -> one global ``jax.Array`` per field, the batch
  dimension sharded over the mesh, the uint8 clip normalised on the devices;
* `Prefetcher`: a thread that keeps the next batches ready and hands every failure to the consumer (never hangs);
* `BadInputLog`: this host's unreadable videos, resampled ones counted per epoch, excluded ones by name and reason;
* `DeviceIterator` itself: the stream's position and its state (grain's iterator state plus the global stream
  position), which a checkpoint saves and a resumed run restores, also under another number of hosts or workers.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from smallbig_jax.data import transforms
from smallbig_jax.sharding import batch_sharding

log = logging.getLogger(__name__)


class GlobalBatcher:
    """Host batches -> global ``jax.Array`` batches on ``mesh``; ``clip`` normalised on the devices into ``dtype``.
    ``bad_index`` (host bookkeeping) is dropped."""

    def __init__(self, mesh: Mesh, dtype: str = "float32"):
        self.sharding = batch_sharding(mesh)
        out = NamedSharding(mesh, PartitionSpec(*self.sharding.spec, None, None, None, None))
        self._normalize = jax.jit(lambda x: transforms.normalize(x, jnp.dtype(dtype)), out_shardings=out)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        out = {}
        for k, x in batch.items():
            if k == "bad_index":
                continue
            arr = jax.make_array_from_process_local_data(self.sharding, np.asarray(x))
            out[k] = self._normalize(arr) if k == "clip" else arr
        return out


class Prefetcher:
    """Calls ``produce()`` in a thread, keeping up to ``size`` results ready. `get` returns the next result, None once
    ``produce`` raised StopIteration, or the exception it raised (returned, not raised: the consumer decides)."""

    def __init__(self, produce: Callable[[], Any], size: int):
        self._produce = produce
        self._queue: queue.Queue = queue.Queue(max(1, size))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    item = self._produce()
                except StopIteration:
                    self._put(None)
                    return
                self._put(item)
        except BaseException as err:  # Hand every failure to the consumer: never hang.
            self._put(err)

    def _put(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def get(self) -> Any:
        return self._queue.get()

    def stop(self) -> None:
        """Stops the thread; results not yet taken are dropped."""
        self._stop.set()
        self._thread.join()


class BadInputLog:
    """This host's unreadable videos: resampled ones counted per epoch (``bad_inputs[epoch][name]``, the count logged
    when the stream crosses into the next epoch) and, in evaluation, excluded ones (``excluded[name] = reason``)."""

    def __init__(self, source, epoch_size: int | None, explain: Callable[[int], str] | None):
        self._source, self._epoch_size, self._explain = source, epoch_size, explain
        self.bad_inputs: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
        self.excluded: dict[str, str] = {}

    def record(self, position: int, batch_size: int, bad: np.ndarray | None, broken: np.ndarray | None) -> None:
        """Accounts for the batch at global stream ``position``: ``bad`` the resampled videos' indices (-1: none),
        ``broken`` the indices of videos excluded from evaluation."""
        for v in [] if broken is None else sorted(set(int(v) for v in broken)):
            name = self._source.name(v)
            if name not in self.excluded:
                reason = self._explain(v) if self._explain else ""
                for where in (name, name.split(" ", 1)[0]):  # the reason's own `file:line: `, already in the name
                    reason = reason.removeprefix(f"{where}: ")
                self.excluded[name] = reason
        if self._epoch_size is None:
            return
        epoch = position // self._epoch_size
        for v in [] if bad is None else bad[bad >= 0]:
            self.bad_inputs[epoch][self._source.name(int(v))] += 1
        next_epoch = (position + batch_size) // self._epoch_size
        if next_epoch > epoch and self.bad_inputs.get(epoch):
            names = self.bad_inputs[epoch]
            log.warning(
                "epoch %d on this host: %d unreadable videos, %d replacements (each video is logged with its "
                "reason the first time it fails)",
                epoch,
                len(names),
                sum(names.values()),
            )

    def log_excluded(self) -> None:
        if self.excluded:
            log.warning(
                "evaluation: %d unreadable videos excluded on this host: %s",
                len(self.excluded),
                "; ".join(f"{name}: {why}" for name, why in sorted(self.excluded.items())),
            )


class DeviceIterator:
    """This host's grain batches as global ``jax.Array`` batches on ``mesh`` (batch dim sharded), prefetched by a
    thread, with a resumable state. ``epoch_size`` (training) counts resampled videos per epoch; ``explain`` (video
    index -> reason, evaluation) names why an excluded video could not be evaluated; ``restart`` (stream position ->
    this host's dataset from there, training) lets `set_state` resume under another layout."""

    def __init__(
        self,
        host_ds: grain.IterDataset,
        source,
        *,
        mesh: Mesh,
        global_batch_size: int,
        prefetch: int = 2,
        dtype: str = "float32",
        epoch_size: int | None = None,
        restart: Callable[[int], grain.IterDataset] | None = None,
        layout: dict[str, int] | None = None,
        explain: Callable[[int], str] | None = None,
    ):
        self._ds, self._source, self._restart = host_ds, source, restart
        self._layout = dict(layout or {}, global_batch_size=global_batch_size, start_position=0)
        self._global_batch, self._prefetch_size = global_batch_size, prefetch
        self._to_global = GlobalBatcher(mesh, dtype)
        self._log = BadInputLog(source, epoch_size, explain)
        self._it = iter(host_ds)
        self._state = self._it.get_state()
        self._prefetcher: Prefetcher | None = None
        self.steps = 0
        self.position = 0  # Global stream position of the next batch's first example.

    @property
    def bad_inputs(self) -> dict[int, collections.Counter]:
        """Resampled videos per epoch on this host: ``{epoch: {name: times}}``."""
        return self._log.bad_inputs

    @property
    def excluded(self) -> dict[str, str]:
        """Evaluation: broken videos left out (``eval_bad_input='exclude'``) on this host, name -> reason."""
        return self._log.excluded

    @property
    def source(self):
        """The random-access source the batches are read from (``len``, ``source[i]["name"]``)."""
        return self._source

    @property
    def num_videos(self) -> int:
        return len(self._source)

    def _next_host_batch(self) -> tuple[Any, tuple[np.ndarray | None, np.ndarray | None], dict[str, jax.Array]]:
        """(grain's state after it, its bookkeeping, the global batch): what the prefetch thread produces."""
        batch = next(self._it)
        broken = batch["video_index"][batch["broken"]] if "broken" in batch else None
        return self._it.get_state(), (batch.get("bad_index"), broken), self._to_global(batch)

    def _stop_prefetch(self) -> None:
        if self._prefetcher is not None:
            self._prefetcher.stop()
            self._prefetcher = None

    def _reset_iterator(self) -> None:
        """A fresh grain iterator at ``self._state`` (the old one's worker processes are shut down)."""
        self._it.close()
        self._it = iter(self._ds)
        self._it.set_state(self._state)

    def close(self) -> None:
        """Stops the prefetch thread and grain's workers; prefetched batches are dropped, the state is kept, and
        iterating again resumes right after the last batch returned."""
        self._stop_prefetch()
        self._reset_iterator()

    def __iter__(self) -> Iterator[dict[str, jax.Array]]:
        return self

    def __next__(self) -> dict[str, jax.Array]:
        if self._prefetcher is None:
            self._prefetcher = Prefetcher(self._next_host_batch, self._prefetch_size)
        item = self._prefetcher.get()
        if item is None or isinstance(item, BaseException):
            self._prefetcher = None  # its thread has ended
            if item is None:
                self._log.log_excluded()
                raise StopIteration
            raise item
        state, (bad, broken), batch = item
        self._state = state
        self._log.record(self.position, self._global_batch, bad, broken)
        self.steps += 1
        self.position += self._global_batch
        return batch

    def get_state(self) -> dict[str, Any]:
        """State after the last batch returned (JSON-serialisable; save it next to the model): grain's iterator
        state, the step, the global stream position, and the layout (hosts, workers, batch) grain's state is for."""
        return {"grain": self._state, "steps": self.steps, "position": self.position, "layout": dict(self._layout)}

    def set_state(self, state: dict[str, Any]) -> None:
        """Resumes at ``state``: the next batch is the one that followed it.

        With the layout the state was saved under, grain's own state is restored. With another number of hosts or
        workers (or another global batch size), training restarts the stream at the saved global position, so the
        examples that follow are still exactly those that would have come next (grouped into the new batches)."""
        self._stop_prefetch()
        self.steps, self.position = int(state["steps"]), int(state.get("position", 0))
        if state.get("layout") in (None, self._layout) or self._restart is None:
            self._state = state["grain"]
            self._reset_iterator()
            return
        self._it.close()
        self._ds = self._restart(self.position)
        self._layout["start_position"] = self.position
        self._it = iter(self._ds)
        self._state = self._it.get_state()
