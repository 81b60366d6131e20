"""The embedded synthetic dataset: classes that need temporal context but not temporal order.

SmallBigNet cannot tell a clip from its reversal (docs/model.md#consequences-worth-knowing), so the classes are the
*axis* of motion of a shape: still, horizontal, vertical, diagonal and anti-diagonal. The shape moves back and forth
(a triangle wave) along its axis, so every class looks the same in a single frame and played backwards: a per-frame
model with temporal average pooling stays near chance, a model that relates frames (SmallBig's big views) does not.
Shape (square, disc, cross), bright colour, size, position, speed, phase and amplitude of the moving shape, and the
dark background's colour and 1-3 static clutter rectangles are random. Everything is deterministic in the seed.

This module draws the clips and says how to read the dataset (`data_config`) without loading PyAV or TFDS, so that
a config file can use it; `smallbig_jax.data.writers.write_synthetic_dataset` writes the dataset to disk.
"""

from __future__ import annotations

import json
import os

import ml_collections
import numpy as np

from smallbig_jax.data.config import default_data_config

GENERATOR_VERSION = 2  # bumped whenever make_video changes what it draws
CLASSES = ("still", "horizontal", "vertical", "diagonal", "antidiagonal")
_AXES = {1: (1.0, 0.0), 2: (0.0, 1.0), 3: (0.7071, 0.7071), 4: (0.7071, -0.7071)}


def make_video(rng: np.random.Generator, label: int, num_frames: int = 16, size: int = 64) -> np.ndarray:
    """One clip ``[T, size, 5 * size // 4, 3]`` uint8 of class ``label``: a landscape frame, so that the three
    test crops of the official protocol see different parts of the background."""
    height, width = size, 5 * size // 4
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    frame0 = np.empty((height, width, 3), np.float32)
    frame0[:] = rng.integers(0, 80, 3)  # A dark background...
    for _ in range(int(rng.integers(1, 4))):  # ...with 1-3 static clutter rectangles of any colour.
        x0, y0 = int(rng.integers(width)), int(rng.integers(height))
        w, h = rng.integers(3, size // 3, 2)
        frame0[y0 : y0 + h, x0 : x0 + w] = rng.integers(0, 256, 3)
    radius = float(rng.uniform(size * 0.08, size * 0.12))
    colour = rng.integers(150, 256, 3).astype(np.float32)
    kind = int(rng.integers(3))
    # Back and forth along the axis: amplitude 20-30% of the height, 12-20 frames per period, so consecutive frames
    # at stride 2 are one to two radii apart (a temporal window sees a streak, a single frame does not).
    amp = float(rng.uniform(size * 0.2, size * 0.3)) if label else 0.0
    period = float(rng.uniform(12, 20))
    phase = float(rng.uniform(0, 1))
    # The shape stays in the central square: the validation crop is that square, the side test crops cut 10% of it.
    margin = radius + 1 + amp * 0.75
    cx, cy = (width - height) / 2 + rng.uniform(margin, height - margin), rng.uniform(margin, height - margin)
    ax, ay = _AXES.get(label, (0.0, 0.0))
    video = np.empty((num_frames, height, width, 3), np.uint8)
    noise = rng.standard_normal((num_frames, height, width, 3), dtype=np.float32) * 6
    for t in range(num_frames):
        u = (t / period + phase) % 1.0
        tri = 4 * abs(u - 0.5) - 1  # Triangle wave in [-1, 1].
        px, py = cx + amp * tri * ax, cy + amp * tri * ay
        dx, dy = np.abs(xx - px), np.abs(yy - py)
        if kind == 0:
            mask = (dx <= radius) & (dy <= radius)
        elif kind == 1:
            mask = dx * dx + dy * dy <= radius * radius
        else:
            mask = ((dx <= radius) & (dy <= radius / 3)) | ((dy <= radius) & (dx <= radius / 3))
        frame = frame0.copy()
        frame[mask] = colour
        video[t] = np.clip(frame + noise[t], 0, 255).astype(np.uint8)
    return video


def description(
    *,
    seed: int = 0,
    num_train: int = 1000,
    num_val: int = 200,
    num_frames: int = 16,
    size: int = 64,
    arrayrecord: bool = True,
) -> dict:
    """What ``dataset.json`` records: the generator version and the arguments a dataset is written with (these, with
    their defaults, are the arguments of ``writers.write_synthetic_dataset`` and ``is_written``)."""
    return {
        "generator": GENERATOR_VERSION,
        "seed": seed,
        "train": num_train,
        "val": num_val,
        "num_frames": num_frames,
        "size": size,
        "arrayrecord": arrayrecord,
    }


def is_written(out: str, **arguments) -> bool:
    """Whether ``out`` holds a complete dataset written by this generator version with these arguments."""
    try:
        with open(os.path.join(out, "dataset.json")) as f:
            return json.load(f) == description(**arguments)
    except (OSError, ValueError):
        return False


def data_config(out: str, fmt: str = "arrayrecord") -> ml_collections.ConfigDict:
    """The data config that reads the synthetic dataset at ``out`` (``fmt``: 'video' or 'arrayrecord')."""
    c = default_data_config()
    c.format = fmt
    c.root = os.path.join(out, "videos")
    c.train_list, c.val_list = os.path.join(out, "train.txt"), os.path.join(out, "val.txt")
    c.arrayrecord_dir = os.path.join(out, "arrayrecord")
    c.num_frames, c.stride, c.sampling = 8, 2, "dense"
    # Frames resized to 48 pixels high (48x60), trained on multi-scale crops of that, evaluated on 48x48 crops of
    # it: the centre one in validation, centre + bottom-right + top-left in the final test (official protocol).
    c.crop_size = c.scale_size = 48
    c.flip = False  # A mirror image swaps the diagonal and anti-diagonal classes.
    return c
