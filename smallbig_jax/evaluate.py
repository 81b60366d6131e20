"""Multi-view evaluation: clips x crops views per video, scores fused per video, top-1/top-5 over videos.

Views arrive in batches of any size (`config.eval_batch_size`, not tied to the device count: the loader pads each
batch with masked views to a multiple of the devices) with `video_index` and `mask`; each view's scores (softmax or
logits, `config.eval_average`) are summed into its video and divided by the number of views seen. Every video is
counted once over all hosts; padding views are ignored; a video with any broken view (excluded under
`eval_bad_input='exclude'`) leaves the denominator whole and is listed with the reason.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from smallbig_jax import checkpointing, sharding, steps
from smallbig_jax.config import ConfigError, check_config, resume_changes
from smallbig_jax.convert import load_converted_model
from smallbig_jax.data import lists, pipeline
from smallbig_jax.data.lists import DataError
from smallbig_jax.optim import make_optimizer
from smallbig_jax.steps import make_eval_step  # the one eval step, shared with the benchmark

log = logging.getLogger(__name__)


def _to_host(x: jax.Array) -> np.ndarray:
    if x.is_fully_addressable:
        return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


class VideoScores:
    """Accumulates view scores per video: their softmax, or with `average='logits'` the logits themselves."""

    def __init__(self, num_videos: int, num_classes: int, average: str = "softmax"):
        self.average = average
        self.sums = np.zeros((num_videos, num_classes), np.float64)
        self.views = np.zeros(num_videos, np.int64)
        self.labels = np.full(num_videos, -1, np.int64)
        self.broken = np.zeros(num_videos, bool)

    def add(
        self,
        logits: np.ndarray,
        labels: np.ndarray,
        video_index: np.ndarray,
        mask: np.ndarray,
        broken: np.ndarray | None = None,
    ) -> None:
        scores = logits.astype(np.float64)
        if self.average == "softmax":
            with np.errstate(invalid="ignore", over="ignore"):  # non-finite logits: refused in result(), by name
                scores = np.exp(scores - scores.max(axis=1, keepdims=True))
                scores /= scores.sum(axis=1, keepdims=True)
        real = video_index >= 0
        self.labels[video_index[real]] = labels[real]
        if broken is not None:
            self.broken[video_index[real & broken]] = True
        keep = real & mask
        np.add.at(self.sums, video_index[keep], scores[keep])
        np.add.at(self.views, video_index[keep], 1)

    def result(self, name_of: Callable[[int], str] | None = None) -> dict[str, Any]:
        """Top-1/top-5 over the videos seen and their predictions. Raises `DataError` when no video was evaluated
        and `FloatingPointError` when any video's fused score is NaN or infinite (naming how many, and the first
        few by `name_of(index)`): a metric from such scores would look valid and mean nothing."""
        seen = (self.views > 0) & ~self.broken  # One broken view excludes the whole video.
        if not seen.any():
            raise DataError(
                f"no video was evaluated ({len(self.views)} listed, {int(self.broken.sum())} excluded as "
                "unreadable): an accuracy over 0 videos is not a result"
            )
        scores = self.sums[seen] / self.views[seen, None]
        bad = np.flatnonzero(seen)[~np.isfinite(scores).all(axis=1)]
        if len(bad):
            names = [name_of(int(v)) if name_of else f"video {int(v)}" for v in bad[:3]]
            more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
            raise FloatingPointError(
                f"{len(bad)} of {int(seen.sum())} videos have non-finite (NaN or infinite) scores, e.g. "
                f"{', '.join(names)}{more}: the weights (or the inputs) hold NaN or infinite values; no metric "
                "is computed from them"
            )
        labels = self.labels[seen]
        top5 = np.argsort(-scores, axis=1, kind="stable")[:, :5]
        top1_correct = top5[:, 0] == labels
        top5_correct = (top5 == labels[:, None]).any(axis=1)
        n = int(seen.sum())
        top1, top5_acc = float(top1_correct.mean()), float(top5_correct.mean())
        return {
            "top1": top1,
            "top5": top5_acc,
            "top1_top5_mean": (top1 + top5_acc) / 2,
            "videos": n,
            "excluded_videos": int(self.broken.sum()),
            "missing_videos": int((~seen & ~self.broken).sum()),
            "predictions": [
                {
                    "video": int(v),
                    "label": int(label),
                    "top5": t.tolist(),
                    "score": float(s[t[0]]),
                    "top5_scores": s[t].tolist(),
                }
                for v, label, t, s in zip(np.flatnonzero(seen), labels, top5, scores)
            ],
        }


def evaluate(
    eval_step: Callable,
    params: Any,
    batch_stats: Any,
    batches: Iterable[dict[str, jax.Array]],
    *,
    num_videos: int,
    num_classes: int,
    average: str = "softmax",
    name_of: Callable[[int], str] | None = None,
    between_batches: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Runs every batch of an evaluation loader and returns top-1/top-5 over videos plus per-video predictions
    (`VideoScores.result`: no metric from non-finite scores, `name_of(index)` names the videos). `between_batches`
    is called before each batch (a training run's preemption check; it may raise)."""
    scores = VideoScores(num_videos, num_classes, average)
    for batch in batches:
        if between_batches is not None:
            between_batches()
        logits = eval_step(params, batch_stats, batch["clip"])
        host = {k: _to_host(batch[k]) for k in ("label", "video_index", "mask") if k in batch}
        broken = _to_host(batch["broken"]) if "broken" in batch else None
        scores.add(np.asarray(jax.device_get(logits)), host["label"], host["video_index"], host["mask"], broken)
    return scores.result(name_of)


_warned_lists: set[str] = set()  # list files whose duplicate lines were reported (validation runs many times)


def _warn_duplicates(source) -> None:
    """Warns once per list file about videos listed more than once: each of its lines counts in the metrics."""
    found = lists.duplicates(getattr(source, "entries", []))
    list_file = next(iter(found.values()))[0].rsplit(":", 1)[0] if found else ""
    if found and list_file not in _warned_lists:
        _warned_lists.add(list_file)
        log.warning("%s: %s; each line counts in the metrics", list_file, lists.describe_duplicates(found))


def evaluate_dataset(
    config,
    data_config,
    eval_graphdef: nnx.GraphDef,
    params: Any,
    batch_stats: Any,
    mesh,
    between_batches: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Evaluates `params` on `data_config`'s evaluation split with its views; the result names every video."""
    loader = pipeline.make_eval_loader(
        data_config, global_batch_size=config.eval_batch_size, num_classes=config.model.num_classes, mesh=mesh
    )
    _warn_duplicates(loader.source)
    try:
        result = evaluate(
            make_eval_step(eval_graphdef, mesh, steps.formulation(config, mesh)),
            params,
            batch_stats,
            loader,
            num_videos=loader.num_videos,
            num_classes=config.model.num_classes,
            average=config.eval_average,
            name_of=loader.source.name,
            between_batches=between_batches,
        )
    finally:
        loader.close()
    result["names"] = {p["video"]: loader.source[p["video"]]["name"] for p in result["predictions"]}
    result["excluded"] = dict(loader.excluded)  # this host's excluded videos: name -> reason
    return result


def write_predictions(path: str, result: dict[str, Any]) -> None:
    """One JSON line per video: index, name (`result["names"]`, when known), label, top-5 classes, top score, and
    the fused scores of the top-5 classes."""
    names = result.get("names", {})
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path + ".tmp", "w") as f:
            for p in result["predictions"]:
                if p["video"] in names:
                    p = {"name": names[p["video"]], **p}
                f.write(json.dumps(p, allow_nan=False) + "\n")  # strict JSON: no bare NaN
        os.replace(path + ".tmp", path)
    except OSError as err:  # named by the file asked for, not by its temporary sibling
        raise OSError(err.errno, err.strerror, path if err.filename == path + ".tmp" else err.filename) from err


def evaluate_checkpoint(
    config, *, workdir: str | None = None, converted: str | None = None, step: int | None = None, best: bool = False
) -> dict[str, Any]:
    """Full multi-view evaluation (`config.data`'s clips x crops) of a training checkpoint in `workdir` (latest,
    `step`, or the best by (top1 + top5) / 2) or of a converted PyTorch checkpoint directory."""
    check_config(config)
    mesh = sharding.make_mesh()
    _, eval_graphdef = steps.model_graphdefs(config, mesh)
    if converted is not None:
        model = load_converted_model(converted)
        fields = ("variant", "num_classes", "base_width")
        changed = [
            f"model.{f}: {getattr(model, f)!r} there, {config.model[f]!r} in the config"
            for f in fields
            if getattr(model, f) != config.model[f]
        ]
        if changed:
            raise ConfigError(
                f"{converted} holds another model than the config's; set (--config.model.<field>=...): "
                + "; ".join(changed)
            )
        _, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
        params, batch_stats = jax.device_put((params, batch_stats), sharding.replicated(mesh))
    else:
        if not checkpointing.list_steps(workdir):  # checked first: a mistyped workdir must not be created
            raise checkpointing.CheckpointError(f"no checkpoint in {workdir}/checkpoints")
        state, step = _restore_beside_training(config, workdir, mesh, step, best)
        params, batch_stats = state.get("ema_params", state["params"]), state["batch_stats"]
    result = evaluate_dataset(config, config.data, eval_graphdef, params, batch_stats, mesh)
    result["step"] = step
    return result


def _restore_one(config, workdir: str, mesh, step: int | None, best: bool) -> tuple[Any, int]:
    with checkpointing.pinned_for_reading(workdir):
        manager = checkpointing.make_manager(workdir, read_only=True)
        try:
            step = checkpointing.find_intact(workdir, checkpointing.best_step(manager) if best else step)
            saved_config, _ = checkpointing.restore_run_info(manager, step)
            shape_fields = ("model.variant", "model.num_classes", "model.base_width", "model.param_dtype", "ema_decay")
            changed = [c for c in resume_changes(saved_config, config)[0] if c.startswith(shape_fields)]
            if changed:
                raise ConfigError(
                    f"checkpoint step {step} was trained with another model; set these fields as "
                    "it was trained:\n  " + "\n  ".join(changed)
                )
            abstract, shardings = steps.abstract_train_state(config, mesh, make_optimizer(config, 1))
            state, _, step = checkpointing.restore(manager, checkpointing.abstract_like(abstract, shardings), step)
            return state, step
        finally:
            manager.close()


def _restore_beside_training(config, workdir: str, mesh, step: int | None, best: bool) -> tuple[Any, int]:
    """The train state of the newest (or `step`, or the best) checkpoint of `workdir`. A `train` running there deletes
    old checkpoints as it saves new ones (`keep_checkpoints`), item by item, except those pinned by a reader
    (`checkpointing.pinned_for_reading`, which `_restore_one` holds). Pins close the race but for a deletion begun
    before them, or a workdir the reader cannot write to: when the checkpoints change while the newest one is read
    and the read fails, the newest is picked again, with a warning that says why (a step asked for by number is not
    replaced). A failure with the checkpoints unchanged is a real one and is raised."""
    attempts = 0
    while True:
        before = checkpointing.list_steps(workdir)
        try:
            return _restore_one(config, workdir, mesh, step, best)
        except Exception:
            attempts += 1
            after = checkpointing.list_steps(workdir)
            if step is not None or best or after == before or attempts == 5:
                raise
            log.warning(
                "the checkpoints changed while the newest was read (steps %s, now %s: a running train saves new "
                "ones and deletes old ones); evaluating the newest one again",
                ", ".join(map(str, before)) or "none",
                ", ".join(map(str, after)) or "none",
            )
