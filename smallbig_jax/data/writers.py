"""Videos and datasets written to disk: mp4 (and other) video files with PyAV, JPEG frame folders, and the embedded
synthetic dataset (`smallbig_jax.data.synthetic`) as mp4 files, list files and their ArrayRecord form.

The project's one video writer: the synthetic dataset, the input-pipeline benchmark and the tests all write with it.
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os

import av
import numpy as np
from PIL import Image

from smallbig_jax.data import prepare, synthetic
from smallbig_jax.data.workers import die_with_parent


def write_mp4(
    path: str,
    video: np.ndarray,
    fps: int = 16,
    crf: int = 18,
    codec: str = "libx264",
    gop: int | None = None,
    preset: str = "ultrafast",
) -> None:
    """Writes ``[T, H, W, 3]`` uint8 as a video with PyAV (every frame kept, constant frame rate): h264 by
    default (x264 ``preset``, one encoder thread); the container follows the file extension (mp4, mkv, avi, webm
    with ``codec='libvpx-vp9'``...). ``gop``: the key frame interval."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with av.open(path, "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height = video.shape[2], video.shape[1]
        stream.pix_fmt = "yuv420p"
        if gop:
            stream.gop_size = gop
        if codec == "libx264":
            stream.options = {"crf": str(crf), "preset": preset, "threads": "1"}
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
    os.makedirs(folder, exist_ok=True)
    for t, f in enumerate(video):
        Image.fromarray(f).save(os.path.join(folder, template.format(t + 1)), quality=quality)


def _write_synthetic_video(args: tuple[str, int, int, int, int, int, int]) -> None:
    path, seed, split_id, i, label, num_frames, size = args
    write_mp4(path, synthetic.make_video(np.random.default_rng([seed, split_id, i]), label, num_frames, size))


def write_synthetic_dataset(out: str, *, workers: int = 2, **arguments) -> dict[str, int]:
    """Writes the synthetic dataset that ``arguments`` describe (``synthetic.description``'s: ``seed``,
    ``num_train``, ``num_val``, ``num_frames``, ``size``, ``arrayrecord``, with its defaults) with ``workers``
    processes: ``out/videos/<split>/<i>.mp4``, lists ``out/<split>.txt`` (``<path> <num_frames> <label>``, paths
    relative to ``out/videos``) and, with ``arrayrecord``, the JPEG-frame ArrayRecord form in ``out/arrayrecord``.
    Balanced classes (video ``i`` has label ``i % 5``); deterministic in ``seed``. ``out/dataset.json`` (generator
    version and arguments) is written last, so it marks a complete, current dataset. Returns the videos per split."""
    spec = synthetic.description(**arguments)
    jobs, counts = [], {}
    for split_id, split in enumerate(("train", "val")):
        rows = []
        for i in range(spec[split]):
            rel = f"{split}/{i:05d}.mp4"
            label = i % len(synthetic.CLASSES)
            jobs.append(
                (os.path.join(out, "videos", rel), spec["seed"], split_id, i, label, spec["num_frames"], spec["size"])
            )
            rows.append(f"{rel} {spec['num_frames']} {label}\n")
        os.makedirs(os.path.join(out, "videos", split), exist_ok=True)
        with open(os.path.join(out, f"{split}.txt"), "w") as f:
            f.writelines(rows)
        counts[split] = spec[split]
    with open(os.path.join(out, "classes.txt"), "w") as f:
        f.writelines(c + "\n" for c in synthetic.CLASSES)
    if workers > 1:
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx, initializer=die_with_parent) as pool:
            list(pool.map(_write_synthetic_video, jobs, chunksize=16))
    else:
        for job in jobs:
            _write_synthetic_video(job)
    if spec["arrayrecord"]:
        prepare.prepare_dataset(
            os.path.join(out, "arrayrecord"),
            {s: os.path.join(out, f"{s}.txt") for s in ("train", "val")},
            input_format="video",
            num_classes=len(synthetic.CLASSES),
            root=os.path.join(out, "videos"),
            config="jpeg",
            quality=90,
            workers=workers,
            progress=False,
            overwrite=True,
        )
    with open(os.path.join(out, "dataset.json"), "w") as f:
        json.dump(spec, f)
    return counts
