"""Writes a frame-folder or video dataset as ArrayRecord shards through the project's TFDS builder, in parallel,
listing failures.

The builder, `SmallBigVideo` (``small_big_video/jpeg`` and ``small_big_video/video``), stores one record per video:
``name`` (bytes), ``label``, ``num_frames``, and either ``frames`` (the JPEG-encoded frames, config ``jpeg``) or
``video`` (the encoded video file's bytes, config ``video``). ``tfds.features.Video`` and ``Image`` would need
TensorFlow, so frames are stored as object (bytes) tensors and decoded by the source (only the frames a clip needs).

`prepare_dataset` (``smallbig-jax prepare``) writes ``manifest.json`` (each split's list file, input format and
options) into the manual dir and calls ``download_and_prepare``; the builder turns each listed video into a record
(`generate_examples`). A video that cannot be read is written to the split's ``failed`` file (list line and reason)
and skipped instead of stopping the build. Readers need only the data dir (`sources.open_split`), or
``tfds.data_source("small_big_video/jpeg", data_dir=...)`` with this module imported.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import io
import json
import multiprocessing
import os
import sys
from collections.abc import Iterator
from typing import Any

import av
import numpy as np
import tensorflow_datasets as tfds
from array_record.python import array_record_module
from PIL import Image
from tensorflow_datasets.core import file_adapters
from tensorflow_datasets.core.utils import tqdm_utils
from tqdm import tqdm

from smallbig_jax.data import sources
from smallbig_jax.data.workers import die_with_parent
from smallbig_jax.errors import DataError

MANIFEST = "manifest.json"
_CITATION = """@inproceedings{li2020smallbignet,
  title={SmallBigNet: Integrating Core and Contextual Views for Video Classification},
  author={Li, Xianhang and Wang, Yali and Zhou, Zhipeng and Qiao, Yu},
  booktitle={CVPR},
  note={arXiv:2006.14582},
  year={2020}
}"""


class SmallBigVideo(tfds.core.GeneratorBasedBuilder):
    """Videos with labels for SmallBigNet, as JPEG frames or encoded video bytes per record."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name="jpeg", description="JPEG-encoded frames per video."),
        tfds.core.BuilderConfig(name="video", description="The encoded video file (mp4, webm...) per video."),
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Run smallbig-jax prepare, which writes manifest.json here."

    def _info(self) -> tfds.core.DatasetInfo:
        obj = lambda shape: tfds.features.Tensor(shape=shape, dtype=np.object_)
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "name": obj(()),
                    "label": tfds.features.Tensor(shape=(), dtype=np.int64),
                    "num_frames": tfds.features.Tensor(shape=(), dtype=np.int64),
                    "frames": obj((None,)),
                    "video": obj(()),
                }
            ),
            supervised_keys=None,
            homepage="https://github.com/xhl-video/SmallBigNet",
            citation=_CITATION,
            disable_shuffling=True,  # Records keep the list order (minus unreadable videos).
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        with open(os.path.join(dl_manager.manual_dir, MANIFEST)) as f:
            manifest = json.load(f)
        return {split: self._generate_examples(spec) for split, spec in manifest["splits"].items()}

    def _generate_examples(self, spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
        yield from generate_examples(spec, self.builder_config.name)


def _source(spec: dict[str, Any]):
    """The split's source; reading its list checks every line and label against ``spec['num_classes']``."""
    return sources.make_source(spec["data"], spec["split"], spec["num_classes"])


def _encode_jpeg(frame: np.ndarray, quality: int, short_side: int | None) -> bytes:
    img = Image.fromarray(frame)
    if short_side and min(img.size) > short_side:
        f = short_side / min(img.size)
        img = img.resize((round(img.width * f), round(img.height * f)), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def make_example(source, i: int, config: str, quality: int = 90, short_side: int | None = None) -> dict[str, Any]:
    """The record of video ``i``. Every frame is decoded, so a broken video raises :class:`DataError` here and
    not during training."""
    e = source.entries[i]
    empty = np.zeros((0,), np.object_)
    if config == "video":
        if not isinstance(source, sources.VideoFileSource):
            raise ValueError("config 'video' needs a video list as input")
        frames, _ = source.load(i, lambda n: np.arange(n))
        return {
            "name": e.path,
            "label": e.label,
            "num_frames": len(frames),
            "frames": empty,
            "video": _read_bytes(source.path(i)),
        }
    frames, _ = source.load(i, lambda n: np.arange(n))
    if isinstance(source, sources.FrameFolderSource) and not short_side:
        # The frames are JPEG files already (and decode, as just checked): store their bytes as they are.
        folder = source.folder(i)
        data = [_read_bytes(os.path.join(folder, source.template.format(k + 1))) for k in range(len(frames))]
    else:
        data = [_encode_jpeg(f, quality, short_side) for f in frames]
    arr = np.empty((len(data),), np.object_)
    arr[:] = data
    return {"name": e.path, "label": e.label, "num_frames": len(data), "frames": arr, "video": b""}


_WORKER: dict[str, Any] = {}


def _init(spec: dict[str, Any], config: str) -> None:
    die_with_parent()
    _WORKER.update(source=_source(spec), spec=spec, config=config)


def _work(i: int) -> tuple[int, dict[str, Any] | None, str]:
    spec = _WORKER["spec"]
    try:
        ex = make_example(_WORKER["source"], i, _WORKER["config"], spec.get("quality", 90), spec.get("short_side"))
        return i, ex, ""
    except (DataError, OSError, av.error.FFmpegError) as err:
        return i, None, str(err)


def generate_examples(spec: dict[str, Any], config: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yields ``(key, example)`` for every readable video of the split, in list order, using
    ``spec['workers']`` processes; writes failures to ``spec['failed_file']``."""
    source = _source(spec)
    n, failed = len(source), []
    workers = int(spec.get("workers") or os.cpu_count() or 1)
    # A process pool that fails loudly (BrokenProcessPool) if a worker dies, where multiprocessing.Pool would
    # respawn workers forever. "spawn": safe whatever threads the parent (tfds, JAX) has started.
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=_init, initargs=(spec, config)
    ) as pool:
        results = pool.map(_work, range(n), chunksize=max(1, min(16, n // (4 * workers) or 1)))
        for i, ex, err in tqdm(
            results,
            total=n,
            desc=f"{spec.get('split', '')} videos",
            file=sys.stderr,
            disable=not spec.get("progress", True),
        ):
            if ex is None:
                failed.append(f"{source.entries[i].source}\t{source.entries[i].path}\t{err}")
                continue
            yield f"{i:09d}", ex
    if spec.get("failed_file"):
        with open(spec["failed_file"], "w") as f:
            f.writelines(line + "\n" for line in failed)


def prepare_dataset(
    out: str,
    splits: dict[str, str],
    *,
    input_format: str,
    num_classes: int,
    root: str = "",
    config: str = "jpeg",
    template: str = "img_{:05d}.jpg",
    kinetics_ids: bool = False,
    short_side: int | None = None,
    quality: int = 90,
    workers: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, tuple[int, int]]:
    """Builds the TFDS dataset ``small_big_video/<config>`` under ``out``; returns ``{split: (written, failed)}``.

    ``splits`` maps split names to list files; failures go to ``out/failed_<split>.txt``. Every list is read (and
    each line and label checked against ``num_classes``, raising :class:`DataError` at the first bad one) before
    anything is written. An existing build is an error unless ``overwrite`` (TFDS would silently keep the old
    one)."""
    existing = os.path.join(out, "small_big_video", config)
    if os.path.exists(existing) and not overwrite:
        raise FileExistsError(f"{existing} exists; pass overwrite=True (--overwrite) to rebuild it")
    spec = {
        name: {
            "split": name,
            "num_classes": num_classes,
            # The fields of a data config that `sources.make_source` reads for this split.
            "data": {
                "format": input_format,
                f"{name}_list": os.path.abspath(lst),
                "root": os.path.abspath(root),
                "frame_template": template,
                "kinetics_ids": kinetics_ids,
                "decode_threads": False,
            },
            "short_side": short_side,
            "quality": quality,
            "workers": workers,
            "progress": progress,
            "failed_file": os.path.abspath(os.path.join(out, f"failed_{name}.txt")),
        }
        for name, lst in splits.items()
    }
    for split_spec in spec.values():
        _source(split_spec)
    manual = os.path.join(out, "manual")
    os.makedirs(manual, exist_ok=True)
    with open(os.path.join(manual, MANIFEST), "w") as f:
        json.dump({"splits": spec}, f, indent=1)
    builder = SmallBigVideo(config=config, data_dir=out, file_format="array_record")
    with _uncompressed_array_record(), _tfds_quiet():
        modes = tfds.download.GenerateMode
        mode = modes.FORCE_REDOWNLOAD if overwrite else modes.REUSE_DATASET_IF_EXISTS
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=manual, download_mode=mode)
        )
    counts = {}
    for name in splits:
        with open(spec[name]["failed_file"]) as f:
            failed = sum(1 for line in f if line.strip())
        counts[name] = (builder.info.splits[name].num_examples, failed)
    return counts


@contextlib.contextmanager
def _tfds_quiet():
    """TFDS prints "Downloading and preparing dataset Unknown size ..." and its own progress bars to stdout (nothing
    is downloaded here); the project's progress bar and counts say what happens instead."""
    was_active = tqdm_utils._active
    tqdm_utils.display_progress_bar(False)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        tqdm_utils.display_progress_bar(was_active)


@contextlib.contextmanager
def _uncompressed_array_record():
    """Makes TFDS write ArrayRecord shards uncompressed while building.

    TFDS writes ``group_size:1`` with ArrayRecord's default zstd compression. Our records are already-compressed
    JPEG or video bytes (zstd gains ~0%), and a clip reads a whole video's record, so decompressing it cost 4-5x
    more than reading it (25 ms against 5 ms for a 300-frame Kinetics-like video). Readers need no change: the
    shard header says how it is stored."""
    adapter = file_adapters.ArrayRecordFileAdapter
    original = adapter.__dict__["write_examples"]

    def write_examples(cls, path, iterator):
        writer = array_record_module.ArrayRecordWriter(os.fspath(path), "group_size:1,uncompressed")
        for _, serialized_example in iterator:
            writer.write(serialized_example)
        writer.close()

    adapter.write_examples = classmethod(write_examples)
    try:
        yield
    finally:
        adapter.write_examples = original
