"""The official test-time protocol, written from `docs/protocol.md#exact-test-time-geometry`,
independently of `smallbig_jax.data`: the tests compare the project's evaluation views with these.

It follows the official code's shapes and order of operations: frame indices are 1-based (`img_00001.jpg`), the T
frames of a clip are stacked into one H x W x 3T array, resized once with `cv2.resize(..., INTER_LINEAR)` (three-crop
test) or frame by frame with PIL's bilinear (single-view validation), and the crops are slices of that array.
"""

from __future__ import annotations

import os

import cv2
import numpy as np
from PIL import Image


def resized_wh(w: int, h: int, size: int) -> tuple[int, int]:
    """(width, height) of the official GroupScale: unchanged if the short side is `size`, else short side `size`
    and long side `int(size * long / short)`."""
    if min(w, h) == size:
        return w, h
    if w < h:
        return size, int(size * h / w)
    return int(size * w / h), size


def fntest_resize(stacked: np.ndarray, size: int) -> np.ndarray:
    """Three-crop test resize of an H x W x 3T array: OpenCV's bilinear."""
    h, w = stacked.shape[:2]
    ow, oh = resized_wh(w, h, size)
    if (ow, oh) == (w, h):
        return stacked
    return cv2.resize(stacked, (ow, oh), interpolation=cv2.INTER_LINEAR)


def val_resize(images: list[Image.Image], size: int) -> list[Image.Image]:
    """Single-view validation resize of each PIL frame: PIL's bilinear."""
    w, h = images[0].size
    ow, oh = resized_wh(w, h, size)
    if (ow, oh) == (w, h):
        return images
    return [im.resize((ow, oh), Image.BILINEAR) for im in images]


def centre_corner(w: int, h: int, size: int) -> tuple[int, int]:
    """GroupCenterCrop: `x1 = int(round((w - size) / 2.))` with Python's round (halves to even)."""
    return int(round((w - size) / 2.0)), int(round((h - size) / 2.0))


def fntest_corners(w: int, h: int, size: int) -> list[tuple[int, int]]:
    """The three test crops in the official order: centre, bottom-right (CornerCrop2), top-left (CornerCrop1)."""
    return [centre_corner(w, h, size), (w - size, h - size), (0, 0)]


def kinetics_test_indices(num_frames: int, length: int, stride: int, num_clips: int) -> list[list[int]]:
    """1-based frames of the Kinetics test clips: starts at `linspace(0, max(1, N - T*stride) - 1, num_clips)`
    (64 = 8 x 8 in the official script), frames wrapping modulo N."""
    starts = np.linspace(0, max(1, num_frames - length * stride) - 1, num_clips)
    return [[(int(s) + stride * i) % num_frames + 1 for i in range(length)] for s in starts]


def something_test_indices(num_frames: int, length: int) -> list[list[int]]:
    """1-based frames of the two Something-Something test clips: segment centres, then segment starts."""
    tick = num_frames / length
    centres = [int(tick / 2.0 + tick * x) + 1 for x in range(length)]
    starts = [int(tick * x) + 1 for x in range(length)]
    return [centres, starts]


def read_frame(folder: str, template: str, index: int) -> np.ndarray:
    """A 1-based frame as the official loader reads it: PIL, converted to RGB."""
    return np.asarray(Image.open(os.path.join(folder, template.format(index))).convert("RGB"))


def reference_views(
    folder: str,
    num_frames: int,
    *,
    sampling: str,
    length: int,
    stride: int = 8,
    num_clips: int,
    num_crops: int = 3,
    scale_size: int = 256,
    crop_size: int = 224,
    template: str = "img_{:05d}.jpg",
) -> list[dict]:
    """Every view of one video, clip-major then crop: `{"indices" (1-based), "corner" (x, y) in the resized frame,
    "pixels" uint8 [T, size, size, 3]}`."""
    if sampling == "dense":
        clips = kinetics_test_indices(num_frames, length, stride, num_clips)
    else:
        clips = something_test_indices(num_frames, length)[:num_clips]
    views = []
    for indices in clips:
        frames = [read_frame(folder, template, k) for k in indices]
        if num_crops == 3:
            stacked = fntest_resize(np.concatenate(frames, axis=2), scale_size)
            h, w = stacked.shape[:2]
            size, corners = scale_size, fntest_corners(w, h, scale_size)
            clip = stacked.reshape(h, w, length, 3).transpose(2, 0, 1, 3)
        else:
            resized = val_resize([Image.fromarray(f) for f in frames], scale_size)
            clip = np.stack([np.asarray(im) for im in resized])
            h, w = clip.shape[1:3]
            size, corners = crop_size, [centre_corner(w, h, crop_size)]
        for x, y in corners:
            views.append({"indices": indices, "corner": (x, y), "pixels": clip[:, y : y + size, x : x + size]})
    return views
