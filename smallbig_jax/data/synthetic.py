"""The embedded synthetic dataset: classes that need temporal context but not temporal order.

SmallBigNet cannot tell a clip from its reversal (spec, section 9), so the classes are the *axis* of motion of
a shape: still, horizontal, vertical, diagonal and anti-diagonal. The shape moves back and forth (a triangle
wave) along its axis, so every class looks the same in a single frame and played backwards: a per-frame model
with temporal average pooling stays near chance, a model that relates frames (SmallBig's big views) does not.
Shape (square, disc, cross), colour, size, position, speed, phase, amplitude and background clutter are random.
Everything is deterministic in the seed.
"""

from __future__ import annotations

import os

import av
import numpy as np

CLASSES = ("still", "horizontal", "vertical", "diagonal", "antidiagonal")
_AXES = {1: (1.0, 0.0), 2: (0.0, 1.0), 3: (0.7071, 0.7071), 4: (0.7071, -0.7071)}


def make_video(rng: np.random.Generator, label: int, num_frames: int = 16, size: int = 64) -> np.ndarray:
  """One clip ``[T, size, size, 3]`` uint8 of class ``label``."""
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
  bg = rng.integers(0, 256, 3).astype(np.float32) * 0.5
  frame0 = np.broadcast_to(bg, (size, size, 3)).copy()
  for _ in range(int(rng.integers(3, 7))):  # Static clutter rectangles.
    x0, y0 = rng.integers(0, size, 2)
    w, h = rng.integers(3, size // 3, 2)
    frame0[y0:y0 + h, x0:x0 + w] = rng.integers(0, 256, 3)
  radius = float(rng.uniform(size * 0.07, size * 0.14))
  colour = rng.integers(0, 256, 3).astype(np.float32)
  kind = int(rng.integers(3))
  margin = radius + 1
  amp = float(rng.uniform(size * 0.15, size * 0.3)) if label else 0.0
  cx, cy = rng.uniform(margin + amp * 0.75, size - margin - amp * 0.75, 2)
  ax, ay = _AXES.get(label, (0.0, 0.0))
  period = float(rng.uniform(6, 14))
  phase = float(rng.uniform(0, 1))
  video = np.empty((num_frames, size, size, 3), np.uint8)
  noise = rng.standard_normal((num_frames, size, size, 3), dtype=np.float32) * 6
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


def write_mp4(path: str, video: np.ndarray, fps: int = 16, crf: int = 18, codec: str = "libx264",
              gop: int | None = None) -> None:
  """Writes ``[T, H, W, 3]`` uint8 as a video with PyAV (every frame kept, constant frame rate): h264 by
  default; the container follows the file extension (mp4, mkv, avi, webm with ``codec='libvpx-vp9'``...)."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with av.open(path, "w") as out:
    stream = out.add_stream(codec, rate=fps)
    stream.width, stream.height = video.shape[2], video.shape[1]
    stream.pix_fmt = "yuv420p"
    if gop:
      stream.gop_size = gop  # Key frame interval.
    if codec == "libx264":
      stream.options = {"crf": str(crf), "preset": "ultrafast", "threads": "1"}
    elif codec == "mpeg4":
      stream.options = {"qscale": "2"}
    else:
      stream.options = {"crf": str(crf), "b": "0"}
    for f in video:
      for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
        out.mux(packet)
    for packet in stream.encode():
      out.mux(packet)


def write_frame_folder(folder: str, video: np.ndarray, template: str = "img_{:05d}.jpg", quality: int = 95) -> None:
  """Writes ``[T, H, W, 3]`` uint8 as JPEG frames ``img_00001.jpg``... (1-based, the official layout)."""
  from PIL import Image
  os.makedirs(folder, exist_ok=True)
  for t, f in enumerate(video):
    Image.fromarray(f).save(os.path.join(folder, template.format(t + 1)), quality=quality)


def _write_one(args: tuple[str, int, int, int, int, int, int]) -> None:
  path, seed, split_id, i, label, num_frames, size = args
  write_mp4(path, make_video(np.random.default_rng([seed, split_id, i]), label, num_frames, size))


def write_dataset(out: str, *, seed: int = 0, num_train: int = 300, num_val: int = 100, num_frames: int = 16,
                  size: int = 64, workers: int = 2, arrayrecord: bool = True) -> dict[str, int]:
  """Writes ``out/videos/<split>/<i>.mp4``, lists ``out/<split>.txt`` (``<path> <num_frames> <label>``, paths
  relative to ``out/videos``) and, with ``arrayrecord``, the JPEG-frame ArrayRecord form in ``out/arrayrecord``.
  Balanced classes (video ``i`` has label ``i % 5``); deterministic in ``seed``."""
  import concurrent.futures
  import multiprocessing
  from smallbig_jax.data import prepare
  jobs, counts = [], {}
  for split_id, (split, n) in enumerate((("train", num_train), ("val", num_val))):
    rows = []
    for i in range(n):
      rel = f"{split}/{i:05d}.mp4"
      label = i % len(CLASSES)
      jobs.append((os.path.join(out, "videos", rel), seed, split_id, i, label, num_frames, size))
      rows.append(f"{rel} {num_frames} {label}\n")
    os.makedirs(os.path.join(out, "videos", split), exist_ok=True)
    with open(os.path.join(out, f"{split}.txt"), "w") as f:
      f.writelines(rows)
    counts[split] = n
  with open(os.path.join(out, "classes.txt"), "w") as f:
    f.writelines(c + "\n" for c in CLASSES)
  if workers > 1:
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
      list(pool.map(_write_one, jobs, chunksize=16))
  else:
    for job in jobs:
      _write_one(job)
  if arrayrecord:
    prepare.prepare_dataset(os.path.join(out, "arrayrecord"),
                            {s: os.path.join(out, f"{s}.txt") for s in ("train", "val")},
                            input_format="video", root=os.path.join(out, "videos"), config="jpeg",
                            quality=90, workers=workers, progress=False, overwrite=True)
  return counts


def data_config(out: str, fmt: str = "arrayrecord") -> "ml_collections.ConfigDict":
  """The data config that reads the synthetic dataset at ``out`` (``fmt``: 'video' or 'arrayrecord')."""
  from smallbig_jax.data.pipeline import default_data_config
  c = default_data_config()
  c.format = fmt
  c.root = os.path.join(out, "videos")
  c.train_list, c.val_list = os.path.join(out, "train.txt"), os.path.join(out, "val.txt")
  c.arrayrecord_dir = os.path.join(out, "arrayrecord")
  c.num_frames, c.stride, c.sampling = 8, 2, "dense"
  c.crop_size, c.scale_size = 56, 64
  c.flip = False  # A mirror image swaps the diagonal and anti-diagonal classes.
  return c
