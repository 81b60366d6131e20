"""grain input pipelines for training and evaluation, and their global ``jax.Array`` batches.

Training: ``MapDataset.range(num_videos).shuffle(seed).repeat()`` (a new order every epoch), the clip of the
element at global position ``p`` computed from a generator seeded by ``(seed, epoch, video)`` (so batches do not
depend on worker or host count), this host's part (``ShardByJaxProcess``: positions ``h, h+P, ...``), batches of
``global_batch_size // process_count``, grain worker processes returning batches through shared memory, then one
global ``jax.Array`` per field via ``jax.make_array_from_process_local_data`` with device prefetch
(:class:`~smallbig_jax.data.device_iterator.DeviceIterator`). Global batch ``k`` holds exactly the stream positions
``[k*G, (k+1)*G)`` whatever the number of hosts. Sources come from the data config through ``sources.make_source``.

Clips stay uint8 on the host and are normalised (ImageNet mean/std) on the devices: 4x less to copy and no host
float work. Batches are ``{"clip": [N, T, H, W, 3] dtype, "label": int32 [N]}``.

Evaluation: each element is **one view** (video, clip, crop), not one video with its views stacked: batches keep
one shape whatever ``num_clips x num_crops`` is (30 views of 256^2 x 8 frames would be 190 MB of float32 per
video), memory stays bounded, and views shard evenly over hosts. The crops of a clip are consecutive views
and are cut from one decode (and one resize) of the clip, with the official test-time geometry
(``transforms.eval_resize`` / ``eval_crop_corners``; frames are decoded at their stored size for it).
A global batch holds ``global_batch_size`` views of any size: ``make_eval_loader`` pads each one with masked views
up to a multiple of the devices it is sharded over, and the last one up to a whole batch. Eval batches add
``video_index`` (int32, -1 for padding) and ``mask`` (bool, False for padding and for excluded broken videos) so
the evaluator averages views per video and ignores the rest. Every view is produced exactly once over all hosts.

Labels: every loader is given ``num_classes``; a label outside ``[0, num_classes)`` is a :class:`DataError` naming
the list line (when the list is read) or the record.

Bad input: ``bad_input='error'`` stops with the :class:`DataError` message (file and list line);
``'resample'`` replaces the video by a deterministic other one, counts it and logs the names at the end of each
epoch. In evaluation a broken video stops the run unless ``eval_bad_input='exclude'``: then any failure to produce
any view of a video (a :class:`DataError` or any other exception) excludes the whole video: its views are masked
out (``mask`` False, ``broken`` True, so the evaluator leaves the video out of the denominator), each is logged, and
``loader.excluded`` maps the names to the reasons. A broken video never hangs the pipeline.

The iterator's state (``get_state``/``set_state``, a small JSON-serialisable dict) is the state after the last
batch handed out, not after the prefetched ones: resuming from it yields exactly the batches that would have come
next. With the same hosts, workers and batch size it is grain's own iterator state; after a change of any of them
training resumes at the saved global stream position, which every layout maps to the same examples.

Use::

  cfg = default_data_config()              # smallbig_jax.data.config; or synthetic.data_config("data/synthetic")
  cfg.format, cfg.arrayrecord_dir = "arrayrecord", "data/k400"
  train = make_train_loader(cfg, global_batch_size=64, seed=1, num_classes=400, mesh=mesh)   # infinite
  batch = next(train)                      # {"clip": f32 [64, 8, 224, 224, 3], "label": i32 [64]}, sharded
  state = train.get_state()                # save next to the model; later: train.set_state(state)
  for batch in make_eval_loader(cfg, global_batch_size=64, num_classes=400, mesh=mesh):   # every view once
    ...                                    # average logits per batch["video_index"] where batch["mask"]

Steps per epoch are ``num_videos / global_batch_size`` (the stream runs on across epoch boundaries). Call
``loader.close()`` when done (it stops the prefetch thread and grain's worker processes).
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
from absl import flags
from jax.sharding import Mesh

from smallbig_jax.data import sampling, sources, transforms
from smallbig_jax.data.device_iterator import DeviceIterator
from smallbig_jax.data.workers import die_with_parent
from smallbig_jax.errors import DataError
from smallbig_jax.sharding import DATA

log = logging.getLogger(__name__)


def _min_decode_side(cfg) -> int:
    """Smallest short side worth decoding training clips at, so JPEG DCT scaling / swscale can shrink big frames
    early. (Evaluation decodes frames at their stored size: the official resize then sees the same pixels.)"""
    need = int(np.ceil(cfg.crop_size / min(cfg.scales)))
    return max(need, cfg.train_short_side) if cfg.train_short_side else need


class TrainExample:
    """Global stream position ``p`` (video ``v``) -> one augmented uint8 training clip."""

    def __init__(self, source, cfg: ml_collections.ConfigDict, seed: int):
        self.source, self.seed, self.n = source, seed, len(source)
        self.cfg = cfg.to_dict() if isinstance(cfg, ml_collections.ConfigDict) else dict(cfg)
        self.min_side = _min_decode_side(ml_collections.ConfigDict(self.cfg))
        self._reported: set[int] = set()

    def clip(self, v: int, rng: np.random.Generator) -> np.ndarray:
        c = self.cfg
        choose = lambda n: sampling.train_indices(rng, n, c["sampling"], c["num_frames"], c["stride"])
        frames, _ = self.source.load(v, choose, self.min_side)
        _, h, w, _ = frames.shape
        box = transforms.train_crop_box(
            rng, h, w, c["crop_size"], c["train_short_side"] or None, c["scales"], c["max_distort"]
        )
        mirror = bool(c["flip"] and rng.random() < 0.5)
        return transforms.resize_crop(frames, box, c["crop_size"], flip=mirror)

    def __call__(self, p: int, v: int) -> dict[str, np.ndarray]:
        epoch, v = p // self.n, int(v)
        candidate, bad = v, -1
        for attempt in range(self.cfg["max_resample"] + 1):
            try:
                clip = self.clip(candidate, np.random.default_rng([self.seed, epoch, candidate]))
                return {"clip": clip, "label": np.int32(self.source.label(candidate)), "bad_index": np.int32(bad)}
            except DataError as err:
                if self.cfg["bad_input"] == "error":
                    raise
                if candidate not in self._reported:  # once per video and process; epochs only count it
                    self._reported.add(candidate)
                    log.warning("resampling: %s", err)
                bad = v if bad < 0 else bad
                candidate = int(np.random.default_rng([self.seed, epoch, v, attempt + 1]).integers(self.n))
        raise DataError(
            f"video {v} and {self.cfg['max_resample']} replacements for it could not be read; "
            "is the dataset readable at all? Run smallbig-jax check"
        )


_EVAL_CLIP_CACHE = 32  # Decoded eval clips kept per process (a few MB each at 256 px).


class EvalExample:
    """View position ``q`` -> one evaluation view (video ``q // V``, clip, crop), or padding past the end."""

    def __init__(self, source, cfg: ml_collections.ConfigDict):
        self.source = source
        self.cfg = cfg.to_dict() if isinstance(cfg, ml_collections.ConfigDict) else dict(cfg)
        c = self.cfg
        self.views = c["num_clips"] * c["num_crops"]
        self.total = len(source) * self.views
        self.size = transforms.eval_crop_size(c["scale_size"], c["crop_size"], c["num_crops"])
        self._lock = threading.Lock()
        self._cache: collections.OrderedDict = collections.OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_lock", "_cache")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _lock=threading.Lock(), _cache=collections.OrderedDict())

    def _load(self, v: int, clip_i: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """The clip decoded at its stored size and resized as officially, and its crop corners."""
        c = self.cfg
        choose = lambda n: sampling.eval_indices(n, c["sampling"], c["num_frames"], c["stride"], c["num_clips"])[clip_i]
        frames = transforms.eval_resize(self.source.load(v, choose)[0], c["scale_size"], c["num_crops"])
        _, h, w, _ = frames.shape
        return frames, transforms.eval_crop_corners(h, w, self.size, c["num_crops"])

    def _clip(self, v: int, clip_i: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """:meth:`_load` once for all the crops of a clip: they are consecutive views, which grain computes at the
        same time in its reader threads, so the first one loads and the others wait for it."""
        key = (v, clip_i)
        with self._lock:
            future = self._cache.get(key)
            owner = future is None
            if owner:
                future = self._cache[key] = concurrent.futures.Future()
                while len(self._cache) > _EVAL_CLIP_CACHE:
                    self._cache.popitem(last=False)
        if owner:
            try:
                future.set_result(self._load(v, clip_i))
            except BaseException as err:
                future.set_exception(err)
        return future.result()

    def failure(self, v: int) -> str:
        """Why video ``v`` could not be evaluated: the reason an excluded video is listed with (re-read in the
        process that asks, as grain workers cannot send it)."""
        for clip_i in range(self.cfg["num_clips"]):
            try:
                self._clip(v, clip_i)
                self.source.label(v)
            except Exception as err:
                return str(err) if isinstance(err, DataError) else f"{type(err).__name__}: {err}"
        return "a view could not be cut (--debug logs why)"

    def __call__(self, q: int) -> dict[str, np.ndarray]:
        c = self.cfg
        empty = {
            "clip": np.zeros((c["num_frames"], self.size, self.size, 3), np.uint8),
            "label": np.int32(0),
            "video_index": np.int32(-1),
            "mask": np.bool_(False),
            "broken": np.bool_(False),
        }
        if q >= self.total:
            return empty
        v, r = divmod(int(q), self.views)
        clip_i, crop_i = divmod(r, c["num_crops"])
        try:
            frames, corners = self._clip(v, clip_i)
            x, y = corners[crop_i]
            view = transforms.crop(frames, x, y, self.size)
            label = np.int32(self.source.label(v))
        except Exception as err:  # Any failure to produce a view: the whole video is broken.
            if c["eval_bad_input"] == "error":
                raise
            log.debug("excluded from evaluation: %s: %s", self.source.name(v), err)  # reported once, at the end
            return {**empty, "label": np.int32(-1), "video_index": np.int32(v), "broken": np.bool_(True)}
        return {**empty, "clip": view, "label": label, "video_index": np.int32(v), "mask": np.bool_(True)}


def _shard_options(shard_options: grain.sharding.ShardOptions | None) -> grain.sharding.ShardOptions:
    return shard_options if shard_options is not None else grain.sharding.ShardByJaxProcess(drop_remainder=True)


def _local_batch(global_batch_size: int, shard: grain.sharding.ShardOptions) -> int:
    if global_batch_size % shard.shard_count:
        raise ValueError(f"global batch {global_batch_size} is not divisible by {shard.shard_count} hosts")
    return global_batch_size // shard.shard_count


def _with_workers(ds: grain.MapDataset, cfg) -> grain.IterDataset:
    """Batches are computed by ``reader_threads`` threads per process (decoders release the GIL) with at most
    ``reader_buffer`` finished batches waiting; grain's defaults (16 threads, 500 elements) would hold hundreds
    of video batches (77 MB each at 64 x 8 x 224^2) in memory."""
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=cfg.reader_threads, prefetch_buffer_size=cfg.reader_buffer))
    if cfg.worker_count > 0:
        if not flags.FLAGS.is_parsed():  # grain workers read absl flags; parse them for the user.
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(
            grain.multiprocessing.MultiprocessingOptions(
                num_workers=cfg.worker_count, per_worker_buffer_size=cfg.worker_buffer_size
            ),
            worker_init_fn=die_with_parent,
        )
    return it


def train_dataset(
    cfg: ml_collections.ConfigDict,
    *,
    global_batch_size: int,
    seed: int,
    num_classes: int,
    shard_options: grain.sharding.ShardOptions | None = None,
    source=None,
    start_position: int = 0,
) -> grain.IterDataset:
    """This host's training batches as a grain ``IterDataset`` of uint8 numpy dicts (infinite, reshuffled
    every epoch), from global stream position ``start_position``; ``shard_options`` defaults to
    ``ShardByJaxProcess``. Labels must be in ``[0, num_classes)``."""
    source = source if source is not None else sources.make_source(cfg, "train", num_classes)
    shard = _shard_options(shard_options)
    example = TrainExample(source, cfg, seed)
    ds = grain.MapDataset.range(len(source)).shuffle(seed=seed).repeat(None)
    ds = ds.map_with_index(example)[start_position:]  # The index seen by `example` stays the global position.
    ds = ds[shard.shard_index :: shard.shard_count]
    ds = ds.batch(_local_batch(global_batch_size, shard), drop_remainder=True)
    return _with_workers(ds, cfg)


def eval_dataset(
    cfg: ml_collections.ConfigDict,
    *,
    global_batch_size: int,
    num_classes: int,
    pad_to: int = 1,
    shard_options: grain.sharding.ShardOptions | None = None,
    source=None,
) -> grain.IterDataset:
    """This host's evaluation batches: every view once over all hosts, ``global_batch_size`` views per global
    batch, each batch padded with masked views to a multiple of ``pad_to`` (the devices it is sharded over) and
    the last one to a whole batch. Labels must be in ``[0, num_classes)``."""
    return _eval_dataset(cfg, global_batch_size, num_classes, shard_options, source, pad_to)[0]


def _eval_dataset(cfg, global_batch_size, num_classes, shard_options, source, pad_to):
    """:func:`eval_dataset` and its :class:`EvalExample`."""
    source = source if source is not None else sources.make_source(cfg, "val", num_classes)
    shard = _shard_options(shard_options)
    example = EvalExample(source, cfg)
    padded_batch = -(-global_batch_size // pad_to) * pad_to
    num_batches = -(-example.total // global_batch_size)

    def view(p: int) -> dict[str, np.ndarray]:  # Position p of the padded stream -> view q, or padding.
        k, j = divmod(p, padded_batch)
        return example(k * global_batch_size + j if j < global_batch_size else example.total)

    ds = grain.MapDataset.range(num_batches * padded_batch).map(view)
    ds = ds[shard.shard_index :: shard.shard_count]
    ds = ds.batch(_local_batch(padded_batch, shard), drop_remainder=True)
    return _with_workers(ds, cfg), example


def recipe_train_loader(config: ml_collections.ConfigDict, mesh: Mesh) -> DeviceIterator:
    """`make_train_loader` for a whole training config: its data, global batch size, seed and class count."""
    return make_train_loader(
        config.data,
        global_batch_size=config.batch_size,
        seed=config.seed,
        num_classes=config.model.num_classes,
        mesh=mesh,
    )


def make_train_loader(
    data_config: ml_collections.ConfigDict,
    *,
    global_batch_size: int,
    seed: int,
    num_classes: int,
    mesh: Mesh,
) -> DeviceIterator:
    """Infinite training iterator of global batches ``{"clip" [N,T,H,W,3], "label" [N]}`` on ``mesh``."""
    source = sources.make_source(data_config, "train", num_classes)
    make = lambda start: train_dataset(
        data_config,
        global_batch_size=global_batch_size,
        seed=seed,
        num_classes=num_classes,
        source=source,
        start_position=start,
    )
    layout = {"process_count": jax.process_count(), "worker_count": data_config.worker_count}
    return DeviceIterator(
        make(0),
        source,
        mesh=mesh,
        global_batch_size=global_batch_size,
        prefetch=data_config.device_prefetch,
        dtype=data_config.dtype,
        epoch_size=len(source),
        restart=make,
        layout=layout,
    )


def make_eval_loader(
    data_config: ml_collections.ConfigDict,
    *,
    global_batch_size: int,
    num_classes: int,
    mesh: Mesh,
) -> DeviceIterator:
    """One pass over every evaluation view: ``clip``, ``label``, ``video_index``, ``mask``, ``broken``.

    ``global_batch_size`` views per batch whatever the device count: each batch is padded with masked views to a
    multiple of the devices it is sharded over (4 views on 3 devices: batches of 6 with 2 masked)."""
    shards = mesh.shape[DATA]  # the batch is split over the mesh's data axis (`sharding.batch_sharding`)
    source = sources.make_source(data_config, "val", num_classes)
    ds, example = _eval_dataset(data_config, global_batch_size, num_classes, None, source, shards)
    return DeviceIterator(
        ds,
        source,
        mesh=mesh,
        global_batch_size=-(-global_batch_size // shards) * shards,
        prefetch=data_config.device_prefetch,
        dtype=data_config.dtype,
        explain=example.failure,
    )
