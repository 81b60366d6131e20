"""The one process pool of the dataset tools (`prepare`, `check`, the synthetic dataset's writer): results in input
order, as they complete."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from smallbig_jax.data.workers import die_with_parent


def parallel_map(
    work: Callable[[Any], Any],
    items: Iterable[Any],
    *,
    workers: int,
    initializer: Callable[..., None] | None = None,
    initargs: tuple = (),
) -> Iterator[Any]:
    """`work(item)` for each item, in order, in `workers` processes that each ran `initializer(*initargs)` first
    (and `die_with_parent`: no worker outlives this process); in this process when `workers` <= 1. `work` and
    `initializer` are module-level functions (they are pickled).

    A pool that fails loudly (BrokenProcessPool) if a worker dies, where multiprocessing.Pool would respawn workers
    forever; "spawn": safe whatever threads the parent (tfds, JAX) has started."""
    items = list(items)
    if workers <= 1:
        if initializer is not None:
            initializer(*initargs)
        yield from map(work, items)
        return
    chunk = max(1, min(16, len(items) // (4 * workers) or 1))
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=_init_worker, initargs=(initializer, *initargs)
    ) as pool:
        yield from pool.map(work, items, chunksize=chunk)


def _init_worker(initializer: Callable[..., None] | None, *initargs: Any) -> None:
    die_with_parent()
    if initializer is not None:
        initializer(*initargs)
