"""Scans every video of a source and reports each one that cannot be read (file, list line, reason)."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import sys

import av
import numpy as np
from tqdm import tqdm

from smallbig_jax.data.workers import die_with_parent
from smallbig_jax.errors import DataError

_SOURCE = {}


def _init(source) -> None:
    die_with_parent()
    _SOURCE["s"] = source


def check_one(source, i: int) -> str:
    """'' if every frame of video ``i`` decodes, else the error message (it names the file and list line)."""
    try:
        frames, _ = source.load(i, lambda n: np.arange(n))
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
            return f"{source[i]['where']}: unexpected frames of shape {frames.shape}"
        return ""
    except (DataError, OSError, av.error.FFmpegError) as err:
        return str(err)


def _work(i: int) -> tuple[int, str]:
    return i, check_one(_SOURCE["s"], i)


def check_source(source, workers: int = 1, progress: bool = True) -> list[str]:
    """Error messages of every unreadable video of ``source``, in list order (decodes all frames)."""
    n = len(source)
    if workers <= 1:
        results = ((i, check_one(source, i)) for i in range(n))
        return [err for _, err in tqdm(results, total=n, disable=not progress, file=sys.stderr) if err]
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init, initargs=(source,)) as pool:
        results = pool.map(_work, range(n), chunksize=max(1, min(16, n // (4 * workers) or 1)))
        return [err for _, err in tqdm(results, total=n, disable=not progress, file=sys.stderr) if err]
