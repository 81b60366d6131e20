"""Shared fixtures for the data tests (names prefixed ``sbdata_``): tiny videos written as frame folders and mp4.

Frame ``t`` of every fixture video encodes its index in the green channel's mean (``20 + 12*t``), and a
horizontal ramp in red and a vertical ramp in blue, so tests can tell which frame, crop and flip they got.

The longest tests are collected first, so that the two pytest-xdist workers of ``make test`` start on them and
fill the rest of the time with the short ones. One persistent JAX compilation cache, new for each pytest run, is
shared by the workers and by the training processes that tests start: compilation is most of the suite's time, and
many tests compile the same tiny training step.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
import pytest


def pytest_configure(config):
    """The controller makes the run's compilation cache folder; xdist workers get it through `workerinput`, the
    processes tests start through the environment (jax reads these variables when it is imported)."""
    if hasattr(config, "workerinput"):
        cache_dir = config.workerinput["jax_cache_dir"]
    else:
        cache_dir = config.jax_cache_dir = tempfile.mkdtemp(prefix="smallbig_jax_cache_")
    os.environ.update(
        {
            "JAX_COMPILATION_CACHE_DIR": cache_dir,
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "1",  # the heavy programs only
            "JAX_COMPILATION_CACHE_MAX_SIZE": str(
                8 << 30
            ),  # any limit turns on the cache's file lock (parallel writers)
        }
    )


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: pytest without xdist must not reject it
def pytest_configure_node(node):  # on the controller, for each worker
    node.workerinput["jax_cache_dir"] = node.config.jax_cache_dir


def pytest_unconfigure(config):
    if not hasattr(config, "workerinput"):
        shutil.rmtree(config.jax_cache_dir, ignore_errors=True)


SBDATA_FRAMES, SBDATA_H, SBDATA_W, SBDATA_VIDEOS = 16, 48, 64, 12


def sbdata_video(num_frames: int = SBDATA_FRAMES, h: int = SBDATA_H, w: int = SBDATA_W) -> np.ndarray:
    """``[T, H, W, 3]`` uint8: red = x ramp, green = 20 + 12*t, blue = y ramp."""
    v = np.zeros((num_frames, h, w, 3), np.uint8)
    v[..., 0] = np.linspace(0, 255, w).astype(np.uint8)[None, None, :]
    v[..., 1] = (20 + 12 * np.arange(num_frames))[:, None, None]
    v[..., 2] = np.linspace(0, 255, h).astype(np.uint8)[None, :, None]
    return v


def sbdata_frame_ids(clip: np.ndarray) -> np.ndarray:
    """Frame index of each frame of a decoded fixture clip, from the green channel."""
    return np.round((clip[..., 1].reshape(len(clip), -1).mean(1) - 20) / 12).astype(int)


@pytest.fixture(scope="session")
def sbdata_dir(tmp_path_factory) -> str:
    """A folder with ``frames/`` + ``frames.txt`` and ``videos/`` + ``videos.txt`` (12 videos, labels v % 3)."""
    from smallbig_jax.data import lists, writers

    root = str(tmp_path_factory.mktemp("sbdata"))
    video = sbdata_video()
    frame_rows, video_rows = [], []
    for v in range(SBDATA_VIDEOS):
        name = f"vid{v:02d}"
        writers.write_frame_folder(os.path.join(root, "frames", name), video)
        writers.write_mp4(os.path.join(root, "videos", name + ".mp4"), video)
        frame_rows.append((name, SBDATA_FRAMES, v % 3))
        video_rows.append((name + ".mp4", v % 3))
    lists.write_frame_list(os.path.join(root, "frames.txt"), frame_rows)
    lists.write_video_list(os.path.join(root, "videos.txt"), video_rows)
    return root


LONGEST_FIRST = ("test_synthetic_task.py", "test_train_run.py", "test_train.py", "test_faults.py", "test_elastic.py")


def pytest_collection_modifyitems(items):
    def rank(item):
        name = os.path.basename(str(item.fspath))
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order within each module is kept
