"""Random-access video sources: frame folders, video files (PyAV) and ArrayRecord shards (TFDS).

Each source is a grain random-access source (``__len__``, ``__getitem__`` giving the video's metadata) with
``label(i)``, ``name(i)`` (for reports) and ``load(i, choose, min_short_side)``, which reads a clip: it learns the
video's frame count, asks the caller's ``choose(num_frames)`` which frame indices (0-based) it wants, and decodes
only those. So a video file is opened
once per clip, seeked to the first wanted frame and decoded until the last one.

Sources are picklable (grain sends them to worker processes); open handles are made lazily per process.
Any bad input raises :class:`~smallbig_jax.data.lists.DataError` naming the list line and the file. Every source
knows ``num_classes``: list files are checked when read, ArrayRecord labels when their record is read.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable
from typing import Any

import av
import numpy as np
import tensorflow_datasets as tfds
from av.video.reformatter import VideoReformatter
from PIL import Image

from smallbig_jax.data import lists, records
from smallbig_jax.errors import DataError

Choose = Callable[[int], np.ndarray]


def _unique(indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct indices and, for each requested index, its position among them."""
    flat = np.asarray(indices).reshape(-1)
    uniq, inverse = np.unique(flat, return_inverse=True)
    return uniq, inverse


def decode_jpeg(data: bytes | str, min_short_side: int | None = None) -> np.ndarray:
    """Decodes a JPEG (bytes or path) to uint8 RGB; with ``min_short_side`` uses libjpeg's DCT scaling to decode
    at the smallest 1/2^k size whose short side stays at least that large (much faster for big frames)."""
    img = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
    if min_short_side and img.format == "JPEG":
        w, h = img.size
        scale = min(w, h) / min_short_side
        if scale >= 2:
            img.draft("RGB", (math.ceil(w / scale), math.ceil(h / scale)))
    return np.asarray(img if img.mode == "RGB" else img.convert("RGB"))  # convert() would copy an RGB image


def _stack(frames: list[np.ndarray], where: str, inverse: np.ndarray, names: list[str]) -> np.ndarray:
    """``[K, H, W, 3]`` of the decoded distinct frames put back in the requested order; ``names`` (a frame's file,
    or its index) name the first frame whose size differs from the first one's."""
    odd = next((j for j, f in enumerate(frames) if f.shape != frames[0].shape), None)
    if odd is not None:
        raise DataError(
            f"{where}: frames of different sizes: {names[odd]} is {frames[odd].shape[1]}x{frames[odd].shape[0]}, "
            f"{names[0]} is {frames[0].shape[1]}x{frames[0].shape[0]} (width x height)"
        )
    if len(inverse) == len(frames) and np.array_equal(inverse, np.arange(len(frames))):
        return np.stack(frames)  # Already in order: skip a copy.
    return np.stack(frames)[inverse]


class FrameFolderSource:
    """Frame folders (official SmallBigNet / mmaction2 rawframes): ``root/<name>/img_00001.jpg``...

    ``kinetics_ids=True`` names each folder by the first 11 characters of the listed name (the YouTube ID),
    as the official Kinetics loader does."""

    def __init__(
        self,
        list_file: str,
        root: str,
        template: str = "img_{:05d}.jpg",
        kinetics_ids: bool = False,
        *,
        num_classes: int,
    ):
        self.entries = lists.read_frame_list(list_file, num_classes)
        self.root, self.template, self.kinetics_ids = root, template, kinetics_ids

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> dict[str, Any]:
        e = self.entries[i]
        return {"name": e.path, "label": e.label, "num_frames": e.num_frames, "where": e.source}

    def label(self, i: int) -> int:
        return self.entries[i].label

    def name(self, i: int) -> str:
        """How error reports name video ``i``: its list line and name."""
        return f"{self.entries[i].source} {self.entries[i].path}"

    def folder(self, i: int) -> str:
        name = self.entries[i].path
        return os.path.join(self.root, lists.kinetics_folder_name(name) if self.kinetics_ids else name)

    def load(self, i: int, choose: Choose, min_short_side: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Reads the chosen frames: ``(frames [K, H, W, 3] uint8, indices)`` for ``indices = choose(num_frames)``."""
        e = self.entries[i]
        indices = np.asarray(choose(e.num_frames))
        uniq, inverse = _unique(indices)
        folder = self.folder(i)
        if not os.path.isdir(folder):
            raise DataError(f"{e.source}: frame folder {folder} does not exist")
        frames = []
        paths = [os.path.join(folder, self.template.format(int(k) + 1)) for k in uniq]
        for path in paths:
            try:
                frames.append(decode_jpeg(path, min_short_side))
            except FileNotFoundError:
                raise DataError(f"{e.source}: missing frame {path} (the list claims {e.num_frames} frames)") from None
            except (OSError, ValueError) as err:
                raise DataError(f"{e.source}: cannot decode frame {path}: {err}") from None
        return _stack(frames, e.source, inverse, paths), indices


def _count_frames(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> int:
    """Frame count: the container's metadata when present, else counted by demuxing (no decoding)."""
    if stream.frames and stream.frames > 0:
        return int(stream.frames)
    n = sum(1 for packet in container.demux(stream) if packet.size)
    container.seek(0)
    return n


def _frame_index(frame: av.VideoFrame, stream, start: int) -> int:
    return int(round(float((frame.pts - start) * stream.time_base * stream.average_rate)))


def decode_video(
    file: str | io.BytesIO,
    choose: Choose,
    where: str,
    num_frames: int = -1,
    min_short_side: int | None = None,
    threads: bool = False,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Decodes the chosen frames of a video with PyAV: ``(frames [K, H, W, 3], indices, num_frames)``.

    Frame k is the k-th frame the stream shows. With a constant frame rate (the norm for datasets) its timestamp
    places it, so decoding seeks to the key frame before the first wanted frame and stops after the last one. When
    the timestamps do not step by one frame at the average rate (a variable-frame-rate video, as phones record),
    the clip is decoded again from the start, counting frames."""
    name = file if isinstance(file, str) else "<bytes>"
    try:
        container = av.open(file)
    except (av.error.FFmpegError, OSError) as err:
        raise DataError(f"{where}: cannot open video {name}: {err}") from None
    with container:
        if not container.streams.video:
            raise DataError(f"{where}: {name} has no video stream")
        stream = container.streams.video[0]
        if threads:
            stream.thread_type = "AUTO"
        try:
            if num_frames < 0:
                num_frames = _count_frames(container, stream)
            if num_frames <= 0:
                raise DataError(f"{where}: {name} has no frames")
            indices = np.asarray(choose(num_frames))
            uniq, inverse = _unique(indices)
            out, irregular = _decode_frames(container, stream, uniq, where, name, min_short_side, by_count=False)
            if irregular:
                container.seek(0, stream=stream, backward=True, any_frame=False)
                out, _ = _decode_frames(container, stream, uniq, where, name, min_short_side, by_count=True)
        except av.error.FFmpegError as err:
            raise DataError(f"{where}: corrupt video {name}: {err}") from None
    missing = [int(k) for k, f in zip(uniq, out) if f is None]
    if missing:
        raise DataError(
            f"{where}: {name} is shorter than its {num_frames} frames: {len(missing)} of the {len(uniq)} frames "
            f"wanted could not be decoded ({_first(missing)}; "
            + (
                "a variable frame rate video whose frames cannot all be placed: re-encode it at a constant rate, "
                "e.g. ffmpeg -i in.mp4 -fps_mode cfr out.mp4)"
                if irregular
                else "truncated or corrupt video)"
            )
        )
    return _stack(out, where, inverse, [f"{name} frame {int(k)}" for k in uniq]), indices, num_frames


def _decode_frames(
    container, stream, uniq: np.ndarray, where: str, name: str, min_short_side: int | None, by_count: bool
) -> tuple[list[np.ndarray | None], bool]:
    """The frames `uniq` (sorted indices; None for those not reached) and whether the timestamps were irregular.
    `by_count`: from the current position (the start), each decoded frame is the next index; else each frame's
    index comes from its timestamp, after a seek to the key frame before the first wanted one."""
    wanted = {int(k): j for j, k in enumerate(uniq)}
    last = int(uniq[-1])
    start = stream.start_time or 0
    rate = stream.average_rate
    seeked = bool(not by_count and uniq[0] > 0 and rate)
    if seeked:
        target = start + int(float(uniq[0]) / float(rate) / float(stream.time_base)) - 1
        container.seek(max(target, start), stream=stream, backward=True, any_frame=False)
    size = None
    # One reformatter for the whole clip: it keeps its swscale context, where frame.to_ndarray builds a new
    # one per frame (3-7x slower on 64x64 frames in a micro-benchmark).
    reformatter = VideoReformatter()
    out: list[np.ndarray | None] = [None] * len(uniq)
    count, previous = 0, None
    for frame in container.decode(stream):
        if frame.pts is None and seeked:
            raise DataError(
                f"{where}: {name} has frames without timestamps: cannot seek in it; re-encode it "
                "(or prepare it as JPEG frames)"
            )
        timed = not by_count and frame.pts is not None and rate
        idx = _frame_index(frame, stream, start) if timed else count
        if timed and previous is not None and idx != previous + 1:
            return out, True  # variable frame rate: timestamps do not give positions
        previous = idx
        count += 1
        if idx in wanted:
            if size is None:
                size = _decode_size(frame.height, frame.width, min_short_side)
            out[wanted[idx]] = reformatter.reformat(
                frame, format="rgb24", width=size[1], height=size[0], interpolation="BILINEAR"
            ).to_ndarray()
        if idx >= last:
            break
    return out, False


def _first(items: list[int], n: int = 5) -> str:
    """`frames 3, 4, 5, 6, 7 and 12 more`: a list that stays short."""
    shown = ", ".join(map(str, items[:n]))
    return f"frames {shown}" + (f" and {len(items) - n} more" if len(items) > n else "")


def _decode_size(h: int, w: int, min_short_side: int | None) -> tuple[int, int]:
    """Output size when decoding: the short side shrunk to ``min_short_side`` by swscale, never enlarged."""
    if not min_short_side or min(h, w) <= min_short_side:
        return h, w
    f = min_short_side / min(h, w)
    return max(round(h * f), 1), max(round(w * f), 1)


class VideoFileSource:
    """Video files (mp4, webm, avi, mkv...) decoded with PyAV, from a ``<path> <label>`` list or a CSV.

    Relative paths are taken under ``root``. A frame count missing from the list is probed once per process
    and cached."""

    def __init__(self, list_file: str, root: str = "", threads: bool = False, *, num_classes: int):
        self.entries = lists.read_video_list(list_file, num_classes)
        self.root, self.threads = root, threads
        self._counts: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def path(self, i: int) -> str:
        return os.path.join(self.root, self.entries[i].path)

    def label(self, i: int) -> int:
        return self.entries[i].label

    def name(self, i: int) -> str:
        """How error reports name video ``i``: its list line and path."""
        return f"{self.entries[i].source} {self.entries[i].path}"

    def __getitem__(self, i: int) -> dict[str, Any]:
        e = self.entries[i]
        return {"name": e.path, "label": e.label, "num_frames": self.num_frames(i), "where": e.source}

    def num_frames(self, i: int) -> int:
        """The frame count, from the list, the cache, or probed (opening the file) and cached."""
        if self.entries[i].num_frames >= 0:
            return self.entries[i].num_frames
        if i not in self._counts:
            self.load(i, lambda n: np.zeros(1, np.int64))
        return self._counts[i]

    def load(self, i: int, choose: Choose, min_short_side: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Reads the chosen frames: ``(frames [K, H, W, 3] uint8, indices)`` for ``indices = choose(num_frames)``."""
        e = self.entries[i]
        path = self.path(i)
        if not os.path.exists(path):
            raise DataError(f"{e.source}: video file {path} does not exist")
        known = e.num_frames if e.num_frames >= 0 else self._counts.get(i, -1)
        frames, indices, n = decode_video(path, choose, e.source, known, min_short_side, self.threads)
        self._counts[i] = n
        return frames, indices


class ArrayRecordSource:
    """A split of a dataset prepared by ``smallbig-jax prepare`` (TFDS builder, ArrayRecord shards).

    Records hold either JPEG frames (only the chosen ones are decoded) or a video file's bytes (PyAV). The split
    is opened through TFDS (``as_data_source``: its files, splits and metadata), but each record is parsed by
    `records.parse`, straight from its proto."""

    def __init__(self, data_dir: str, split: str, *, num_classes: int):
        self.data_dir, self.split, self.num_classes = data_dir, split, num_classes
        self._source = None
        self._last: tuple[int, Any] | None = None
        self._len = len(self._open())

    def _open(self):
        if self._source is None:
            self._source = open_split(self.data_dir, self.split)
        return self._source

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_source": None, "_last": None}

    def __len__(self) -> int:
        return self._len

    def _record(self, i: int) -> dict[str, Any]:
        """``{"name", "label", "num_frames", "frames" (a sequence of JPEG bytes), "video"}`` of record ``i``."""
        last = self._last  # One read: grain's reader threads share this source.
        if last is not None and last[0] == i:
            return last[1]
        try:
            rec = records.parse(self._open().data_source[i])
        except Exception as err:  # A damaged shard or a foreign dataset: report which record.
            raise DataError(f"{self.data_dir}[{self.split}] record {i}: cannot read: {err!r}") from None
        lists.check_label(rec["label"], self.num_classes, f"{self.data_dir}[{self.split}] record {i} ({rec['name']})")
        self._last = (i, rec)
        return rec

    def __getitem__(self, i: int) -> dict[str, Any]:
        r = self._record(i)
        return {
            "name": r["name"],
            "label": r["label"],
            "num_frames": r["num_frames"],
            "where": f"{self.split} record {i}",
        }

    def label(self, i: int) -> int:
        return self._record(i)["label"]

    def name(self, i: int) -> str:
        """How error reports name video ``i``: its split, record number and (if readable) name."""
        try:
            return f"{self.split} record {i} ({self._record(i)['name']})"
        except DataError:
            return f"{self.split} record {i} (unreadable)"

    def load(self, i: int, choose: Choose, min_short_side: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Reads the chosen frames: ``(frames [K, H, W, 3] uint8, indices)`` for ``indices = choose(num_frames)``."""
        r = self._record(i)
        where = f"{self.split} record {i} ({r['name']})"
        n = r["num_frames"]
        if len(r["frames"]):
            indices = np.asarray(choose(n))
            uniq, inverse = _unique(indices)
            if uniq[-1] >= len(r["frames"]):
                raise DataError(f"{where}: needs frame {uniq[-1]} but holds {len(r['frames'])} frames")
            try:
                frames = [decode_jpeg(r["frames"][int(k)], min_short_side) for k in uniq]
            except (OSError, ValueError) as err:
                raise DataError(f"{where}: cannot decode a JPEG frame: {err}") from None
            return _stack(frames, where, inverse, [f"frame {int(k)}" for k in uniq]), indices
        frames, indices, _ = decode_video(io.BytesIO(r["video"]), choose, where, n, min_short_side)
        return frames, indices


def open_split(data_dir: str, split: str):
    """A TFDS random-access source over one split of a dataset prepared by ``smallbig-jax prepare``, from its
    directory alone (the builder class is not needed to read it).

    ``data_dir`` is the version folder (``.../small_big_video/jpeg/1.0.0``) or any parent that holds exactly
    one such folder."""
    builder = tfds.builder_from_directory(_find_version_dir(data_dir))
    return builder.as_data_source(split=split)


def _find_version_dir(data_dir: str) -> str:
    if os.path.exists(os.path.join(data_dir, "dataset_info.json")):
        return data_dir
    found = [root for root, _, files in os.walk(data_dir) if "dataset_info.json" in files]
    if len(found) != 1:
        raise FileNotFoundError(f"expected one prepared dataset (dataset_info.json) under {data_dir}, found {found}")
    return found[0]


def make_source(data_config: Any, split: str, num_classes: int):
    """The source that a data config (a ConfigDict or a dict with its fields) names for ``split``, its labels in
    ``[0, num_classes)``: the list file ``<split>_list`` (formats 'frames' and 'video', read and checked here) or the
    ArrayRecord split ``<split>_split`` of ``arrayrecord_dir``. The one place a format becomes a source: training,
    evaluation, dataset preparation and ``smallbig-jax check`` all open theirs here."""
    fmt = data_config["format"]
    if fmt == "frames":
        return FrameFolderSource(
            data_config[f"{split}_list"],
            data_config["root"],
            data_config["frame_template"],
            data_config["kinetics_ids"],
            num_classes=num_classes,
        )
    if fmt == "video":
        return VideoFileSource(
            data_config[f"{split}_list"], data_config["root"], data_config["decode_threads"], num_classes=num_classes
        )
    if fmt == "arrayrecord":
        return ArrayRecordSource(data_config["arrayrecord_dir"], data_config[f"{split}_split"], num_classes=num_classes)
    raise ValueError(f"unknown data format {fmt!r}; expected 'frames', 'video' or 'arrayrecord'")
