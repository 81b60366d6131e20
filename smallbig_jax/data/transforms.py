"""Spatial transforms on uint8 clips ``[T, H, W, 3]``, with the official code's geometry and filters, on the host.

Training: the multi-scale crop box is derived in integer pixels of the frame resized to ``train_short_side`` (as
the official ``rawframes_320``) and mapped onto the stored frame, so one ``PIL.Image.resize(box=...)`` per frame
crops and resizes (PIL's bilinear, as the official training) without building the intermediate image; the box
never leaves the frame.

Evaluation (official ``dataset/transforms.py``; docs/protocol.md#exact-test-time-geometry): the
short side goes to ``scale_size`` with the long side truncated (``int(256 * long / short)``), or the frames stay as
they are when the short side already is ``scale_size``; the crops are integer slices of that resized clip. The
three-crop test (``Fntest``) resizes with OpenCV's bilinear (no antialiasing), the single-view validation with PIL's
bilinear, each as the official code does. Clips stay uint8 until :func:`normalize`, the last step (the pipeline
runs it on the device, where it is free and the host-to-device copy is 4x smaller).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from PIL import Image

from smallbig_jax.data.config import MULTISCALE_SCALES

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)

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


def scaled_size(image_h: int, image_w: int, short_side: int | None) -> tuple[int, int]:
    """``(h, w)`` after the official short-side resize: unchanged when ``short_side`` is ``None`` or already the
    short side, else the short side becomes ``short_side`` and the long side ``int(short_side * long / short)``
    (truncated, never rounded up, so the resized frame maps inside the stored one)."""
    if not short_side or min(image_h, image_w) == short_side:
        return image_h, image_w
    if image_w < image_h:
        return short_side * image_h // image_w, short_side
    return short_side, short_side * image_w // image_h


def train_crop_box(
    rng: np.random.Generator,
    image_h: int,
    image_w: int,
    crop_size: int,
    short_side: int | None = None,
    scales: Sequence[float] = MULTISCALE_SCALES,
    max_distort: int = 1,
) -> Box:
    """Multi-scale crop box in source pixels: drawn in integer pixels of the frame resized to ``short_side`` (as
    the official ``rawframes_320``; as stored when ``None``), then mapped onto the stored frame per axis."""
    h, w = scaled_size(image_h, image_w, short_side)
    x, y, cw, ch = multiscale_crop_box(rng, h, w, crop_size, scales, max_distort)
    fx, fy = image_w / w, image_h / h
    return (x * fx, y * fy, min((x + cw) * fx, image_w), min((y + ch) * fy, image_h))


def eval_crop_size(scale_size: int, crop_size: int, num_crops: int) -> int:
    """Side of the evaluation crops: ``crop_size`` for the single centre view, ``scale_size`` for three crops."""
    if num_crops not in (1, 3):
        raise ValueError(f"num_crops must be 1 or 3, got {num_crops}")
    return crop_size if num_crops == 1 else scale_size


def eval_crop_corners(image_h: int, image_w: int, size: int, num_crops: int) -> list[tuple[int, int]]:
    """Top-left corners ``(x, y)`` of the evaluation crops of side ``size`` in a (resized) ``image_h x image_w``
    frame: the centre (``int(round((w - size) / 2))``, Python's round-half-to-even as officially), then with three
    crops the bottom-right and the top-left."""
    if size > min(image_h, image_w):
        raise ValueError(f"a {size}x{size} crop does not fit in a {image_w}x{image_h} frame")
    centre = (int(round((image_w - size) / 2)), int(round((image_h - size) / 2)))
    if num_crops == 1:
        return [centre]
    if num_crops == 3:
        return [centre, (image_w - size, image_h - size), (0, 0)]
    raise ValueError(f"num_crops must be 1 or 3, got {num_crops}")


def eval_resize(frames: np.ndarray, scale_size: int, num_crops: int) -> np.ndarray:
    """The official evaluation resize of a clip: short side to ``scale_size`` (:func:`scaled_size`), with OpenCV's
    bilinear for the three-crop test and PIL's bilinear for the single-view validation. uint8."""
    t, h, w, _ = frames.shape
    out_h, out_w = scaled_size(h, w, scale_size)
    if (out_h, out_w) == (h, w):
        return frames
    out = np.empty((t, out_h, out_w, 3), np.uint8)
    for i in range(t):
        if num_crops == 3:
            out[i] = cv2.resize(frames[i], (out_w, out_h), interpolation=cv2.INTER_LINEAR)
        else:
            out[i] = np.asarray(Image.fromarray(frames[i]).resize((out_w, out_h), Image.Resampling.BILINEAR))
    return out


def crop(frames: np.ndarray, x: int, y: int, size: int) -> np.ndarray:
    """The ``size`` square at ``(x, y)`` of every frame, as a contiguous array."""
    return np.ascontiguousarray(frames[:, y : y + size, x : x + size])


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


def normalize(frames, dtype=np.float32):
    """uint8 ``[..., 3]`` -> ``(x/255 - mean)/std`` in ``dtype``; works on numpy and jax arrays alike."""
    x = frames.astype(np.float32) * np.float32(1 / 255)
    return ((x - IMAGENET_MEAN) / IMAGENET_STD).astype(dtype)
