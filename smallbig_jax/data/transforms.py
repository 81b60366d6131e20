"""Spatial transforms on uint8 clips ``[T, H, W, 3]``, as the official code does them, on the host with PIL.

Crops are computed as boxes in the coordinates of the stored frames and applied together with the resize in
one ``PIL.Image.resize(box=...)`` call per frame, so a "resize the short side to 256, then crop" never builds
the intermediate full-size image. Clips stay uint8 until :func:`normalize`, the last step (the pipeline runs it
on the device, where it is free and the host-to-device copy is 4x smaller).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
MULTISCALE_SCALES = (1.0, 0.875, 0.75, 0.66)

Box = tuple[float, float, float, float]  # (left, top, right, bottom) in source pixels.


def fix_offsets(image_w: int, image_h: int, crop_w: int, crop_h: int) -> list[tuple[int, int]]:
    """The 13 fixed crop offsets of ``GroupMultiScaleCrop`` (``fix_crop`` and ``more_fix_crop``)."""
    ws, hs = (image_w - crop_w) // 4, (image_h - crop_h) // 4
    return [
        (0, 0),
        (4 * ws, 0),
        (0, 4 * hs),
        (4 * ws, 4 * hs),
        (2 * ws, 2 * hs),
        (0, 2 * hs),
        (4 * ws, 2 * hs),
        (2 * ws, 4 * hs),
        (2 * ws, 0),
        (ws, hs),
        (3 * ws, hs),
        (ws, 3 * hs),
        (3 * ws, 3 * hs),
    ]


def multiscale_crop_box(
    rng: np.random.Generator,
    image_h: int,
    image_w: int,
    crop_size: int,
    scales: Sequence[float] = MULTISCALE_SCALES,
    max_distort: int = 1,
) -> tuple[int, int, int, int]:
    """Official multi-scale crop: ``(x, y, w, h)`` with sides ``int(short*scale)`` (snapped to ``crop_size``
    within 3 px), the w and h scale indices at most ``max_distort`` apart, and one of 13 fixed offsets."""
    base = min(image_w, image_h)
    sizes = [int(base * s) for s in scales]
    sizes = [crop_size if abs(x - crop_size) < 3 else x for x in sizes]
    pairs = [(w, h) for i, h in enumerate(sizes) for j, w in enumerate(sizes) if abs(i - j) <= max_distort]
    crop_w, crop_h = pairs[int(rng.integers(len(pairs)))]
    crop_w, crop_h = min(crop_w, image_w), min(crop_h, image_h)
    offsets = fix_offsets(image_w, image_h, crop_w, crop_h)
    x, y = offsets[int(rng.integers(len(offsets)))]
    return x, y, crop_w, crop_h


def short_side_scale(image_h: int, image_w: int, short_side: int | None) -> float:
    """Factor that brings the short side to ``short_side`` (1 when ``None``)."""
    return 1.0 if not short_side else short_side / min(image_h, image_w)


def train_crop_box(
    rng: np.random.Generator,
    image_h: int,
    image_w: int,
    crop_size: int,
    short_side: int | None = None,
    scales: Sequence[float] = MULTISCALE_SCALES,
    max_distort: int = 1,
) -> Box:
    """Multi-scale crop box in source pixels, for frames first resized to ``short_side`` (as the official
    ``rawframes_320``) when given."""
    f = short_side_scale(image_h, image_w, short_side)
    h, w = round(image_h * f), round(image_w * f)
    x, y, cw, ch = multiscale_crop_box(rng, h, w, crop_size, scales, max_distort)
    return (x / f, y / f, (x + cw) / f, (y + ch) / f)


def eval_crop_boxes(image_h: int, image_w: int, scale_size: int, crop_size: int, num_crops: int) -> list[Box]:
    """Evaluation crop boxes in source pixels after resizing the short side to ``scale_size``.

    ``num_crops=1``: the centre ``crop_size`` square (official validation). ``num_crops=3``: ``scale_size``
    squares at the centre, bottom-right and top-left (official ``Fntest``)."""
    f = short_side_scale(image_h, image_w, scale_size)
    h, w = round(image_h * f), round(image_w * f)
    if num_crops == 1:
        c = min(crop_size, h, w)
        pos = [((w - c) // 2, (h - c) // 2)]
    elif num_crops == 3:
        c = min(scale_size, h, w)
        pos = [((w - c) // 2, (h - c) // 2), (w - c, h - c), (0, 0)]
    else:
        raise ValueError(f"num_crops must be 1 or 3, got {num_crops}")
    return [(x / f, y / f, (x + c) / f, (y + c) / f) for x, y in pos]


def resize_crop(frames: np.ndarray, box: Box, out_size: int, flip: bool = False) -> np.ndarray:
    """Crops ``box`` from every frame, resizes it (PIL bilinear) to ``out_size`` squared and, with ``flip``,
    mirrors it horizontally (in PIL: 3x cheaper than a numpy copy of the reversed array). uint8."""
    t, h, w, _ = frames.shape
    out = np.empty((t, out_size, out_size, 3), np.uint8)
    whole = tuple(box) == (0, 0, w, h) and h == w == out_size
    for i in range(t):
        if whole and not flip:
            out[i] = frames[i]
            continue
        img = Image.fromarray(frames[i])
        if not whole:
            img = img.resize((out_size, out_size), Image.Resampling.BILINEAR, box=box)
        if flip:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        out[i] = np.asarray(img)
    return out


def flip(frames: np.ndarray) -> np.ndarray:
    """Horizontal flip of a ``[T, H, W, C]`` clip."""
    return np.ascontiguousarray(frames[:, :, ::-1])


def normalize(frames, dtype=np.float32):
    """uint8 ``[..., 3]`` -> ``(x/255 - mean)/std`` in ``dtype``; works on numpy and jax arrays alike."""
    x = frames.astype(np.float32) * np.float32(1 / 255)
    return ((x - IMAGENET_MEAN) / IMAGENET_STD).astype(dtype)
