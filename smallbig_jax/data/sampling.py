"""Temporal sampling: which frames of a video make a clip (0-based indices), as the official code does.

* Dense (Kinetics, ``dataset/kinetics.py``): ``T`` frames at stride ``s`` from a random start. A clip spans
  ``T*s`` frames; if the video is shorter the stride drops until the span fits; if ``N <= T`` the stride is 1
  and indices past the end are clamped to the last frame.
* Segment / TSN (Something-Something, ``dataset/something_something.py``): ``T`` equal segments; training takes
  a random frame in each, evaluation the segment centres (and, for the second test clip, the segment starts).
* Multi-view test: Kinetics takes ``num_clips`` starts at ``linspace(0, max(1, N - T*s) - 1)`` with indices
  wrapping modulo ``N``; Something-Something takes 2 clips (centres, then starts).

The official code is 1-based (``img_00001.jpg``); these functions are 0-based and the sources add the offset.
Every function is pure: randomness only comes from the ``np.random.Generator`` passed in.
"""

from __future__ import annotations

import numpy as np


def dense_stride(num_frames: int, length: int, stride: int) -> int:
    """The official stride for a video of ``num_frames``: reduced until ``length*stride`` fits, at least 1."""
    s = stride
    while s > 1 and length * s > num_frames:
        s -= 1
    return s


def dense_train_indices(rng: np.random.Generator, num_frames: int, length: int, stride: int) -> np.ndarray:
    """Dense training clip: ``length`` frames at the (possibly reduced) stride from a uniform random start."""
    s = dense_stride(num_frames, length, stride)
    start = int(rng.integers(0, max(num_frames - length * s, 0) + 1))
    return np.minimum(start + s * np.arange(length), num_frames - 1)


def dense_center_indices(num_frames: int, length: int, stride: int) -> np.ndarray:
    """Single-clip evaluation: the dense clip centred in the video (the official val uses a random start, a bug)."""
    s = dense_stride(num_frames, length, stride)
    start = max(num_frames - length * s, 0) // 2
    return np.minimum(start + s * np.arange(length), num_frames - 1)


def dense_multiclip_indices(num_frames: int, length: int, stride: int, num_clips: int) -> np.ndarray:
    """Kinetics multi-clip test: ``[num_clips, length]``, starts spread evenly, indices wrap modulo ``N``.
    One clip is the centred clip (the official ``linspace`` would start it at frame 0)."""
    if num_clips == 1:
        return dense_center_indices(num_frames, length, stride)[None]
    starts = np.linspace(0, max(1, num_frames - length * stride) - 1, num_clips).astype(np.int64)
    return (starts[:, None] + stride * np.arange(length)[None, :]) % num_frames


def segment_train_indices(rng: np.random.Generator, num_frames: int, length: int) -> np.ndarray:
    """TSN training clip: one uniformly random frame in each of ``length`` equal segments. For a video shorter
    than ``length`` frames the official code repeats frame 0; this takes sorted random frames instead."""
    seg = num_frames // length
    if seg > 0:
        return np.arange(length) * seg + rng.integers(0, seg, size=length)
    return np.sort(rng.integers(0, num_frames, size=length))


def segment_center_indices(num_frames: int, length: int) -> np.ndarray:
    """TSN evaluation clip: the centre frame of each segment."""
    seg = num_frames / length
    return np.minimum((seg / 2 + seg * np.arange(length)).astype(np.int64), num_frames - 1)


def segment_start_indices(num_frames: int, length: int) -> np.ndarray:
    """Second Something-Something test clip: the first frame of each segment."""
    seg = num_frames / length
    return np.minimum((seg * np.arange(length)).astype(np.int64), num_frames - 1)


def segment_multiclip_indices(num_frames: int, length: int, num_clips: int) -> np.ndarray:
    """Something-Something test clips ``[num_clips, length]``: centres, then starts (``num_clips`` in 1, 2)."""
    if num_clips not in (1, 2):
        raise ValueError(f"segment sampling has 1 or 2 test clips, got {num_clips}")
    clips = [segment_center_indices(num_frames, length), segment_start_indices(num_frames, length)]
    return np.stack(clips[:num_clips])


def train_indices(rng: np.random.Generator, num_frames: int, sampling: str, length: int, stride: int) -> np.ndarray:
    """Training clip indices for ``sampling`` in ``'dense'``, ``'segment'``."""
    if sampling == "dense":
        return dense_train_indices(rng, num_frames, length, stride)
    if sampling == "segment":
        return segment_train_indices(rng, num_frames, length)
    raise ValueError(f"unknown sampling {sampling!r}")


def eval_indices(num_frames: int, sampling: str, length: int, stride: int, num_clips: int) -> np.ndarray:
    """Evaluation clip indices ``[num_clips, length]`` for ``sampling`` in ``'dense'``, ``'segment'``."""
    if sampling == "dense":
        return dense_multiclip_indices(num_frames, length, stride, num_clips)
    if sampling == "segment":
        return segment_multiclip_indices(num_frames, length, num_clips)
    raise ValueError(f"unknown sampling {sampling!r}")
