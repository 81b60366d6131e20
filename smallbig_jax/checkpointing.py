"""Orbax checkpoints of a training run: model, BatchNorm statistics, optimizer (and EMA) state, step, the input
pipeline's iterator state and the config, in `<workdir>/checkpoints/<step>/`.

Saves are asynchronous; orbax writes each into a temporary directory and renames it only when complete, so a run
killed at any moment (kill -9 during a save included) leaves the previous checkpoint as the latest restorable
one. Kept: the last `keep` checkpoints plus the best by evaluation metric, plus any that `smallbig-jax evaluate` is
reading at the time (`pinned_for_reading`). Restoring takes target shardings, so a
run saved on 8 devices resumes on 1 or 4 (or with FSDP instead of replication).

Integrity: orbax checks the crc32c of its shard index, not the bytes of the arrays or its metadata files, so each
checkpoint also holds `checksums.json`, the size and sha256 of every file in it, written once the asynchronous save
has finished writing and before orbax commits (renames) the folder. `find_intact` checks it before anything is
restored: a checkpoint with a missing, truncated or changed file, or without the manifest (a save that did not
complete), is reported with its step and what is wrong and skipped for the newest intact one; training moves
damaged checkpoints to `<workdir>/damaged_checkpoints/` so that it can save those steps again.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from smallbig_jax.errors import CheckpointError

log = logging.getLogger(__name__)

BEST_METRIC = "top1_top5_mean"
MANIFEST = "checksums.json"
TMP_SUFFIX = ".orbax-checkpoint-tmp"  # orbax's name for a save in progress: `<step>.orbax-checkpoint-tmp`
DAMAGED_DIR = "damaged_checkpoints"
# Orbax rewrites the step's own metadata (commit time, metrics) when it commits, after the manifest is written: it
# is checked to be there and readable JSON, not by checksum.
REWRITTEN_AT_COMMIT = "_CHECKPOINT_METADATA"
NO_MANIFEST = f"no {MANIFEST} (its save did not complete)"
READERS_DIR = "checkpoint_readers"  # `<step>.<host>.<pid>`: a reader's pin on a checkpoint, see `pinned_for_reading`
READ_LEASE_SECONDS = 600


def _checkpoints_dir(workdir: str) -> epath.Path:
    return epath.Path(workdir if "://" in workdir else os.path.abspath(workdir)) / "checkpoints"


def check_workdir(workdir: str) -> None:
    """Raises the `OSError` a run in `workdir` would meet first (a file where the folder should be, a folder this
    user or a read-only file system does not let it write, a full disk) before anything is computed, naming the
    folder: a probe file is written and removed there, or in its nearest existing parent (the workdir itself is not
    created here). Object-store workdirs (`gs://...`) are left to their first write."""
    if "://" in workdir:
        return
    folder = os.path.abspath(workdir)
    while not os.path.lexists(folder):
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), folder)
    probe = os.path.join(folder, f".write-probe-{os.getpid()}-{jax.process_index()}")
    try:
        with open(probe, "wb") as f:
            f.write(bytes(4096))
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        raise OSError(err.errno, err.strerror, folder) from None
    finally:
        if os.path.exists(probe):
            os.remove(probe)


def _sha256(path: epath.Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _files(folder: epath.Path) -> list[epath.Path]:
    """Every file below `folder` but the manifest (epath has no recursive glob on object stores)."""
    found = []
    for p in folder.iterdir():
        if p.is_dir():
            found += _files(p)
        elif p.name not in (MANIFEST, MANIFEST + ".tmp"):
            found.append(p)
    return sorted(found)


def write_manifest(step_dir: epath.Path) -> None:
    """`<step_dir>/checksums.json`: size and sha256 of every file below `step_dir` (written atomically)."""
    files = {
        str(p.relative_to(step_dir)): {"size": p.stat().length, "sha256": _sha256(p)}
        for p in _files(step_dir)
        if p.name != REWRITTEN_AT_COMMIT
    }
    tmp = step_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps({"algorithm": "sha256", "files": files}, indent=0))
    tmp.rename(step_dir / MANIFEST)


def verify(step_dir: epath.Path) -> str | None:
    """What is wrong with the checkpoint in `step_dir` (None: every file of its manifest is there, unchanged)."""
    try:
        manifest = json.loads((step_dir / MANIFEST).read_text())["files"]
    except FileNotFoundError:
        return NO_MANIFEST
    except (ValueError, KeyError) as e:
        return f"{MANIFEST} is unreadable ({e})"
    try:
        json.loads((step_dir / REWRITTEN_AT_COMMIT).read_text())
    except FileNotFoundError:
        return f"{REWRITTEN_AT_COMMIT} is missing"
    except ValueError:
        return f"{REWRITTEN_AT_COMMIT} is not valid JSON"
    for name, want in manifest.items():
        path = step_dir / name
        if not path.exists():
            return f"{name} is missing"
        size = path.stat().length
        if size != want["size"]:
            return f"{name} has {size} bytes, {want['size']} were written"
        if _sha256(path) != want["sha256"]:
            return f"{name} does not match its checksum (its bytes changed after the save)"
    return None


def list_steps(workdir: str) -> list[int]:
    """The committed checkpoint steps in `<workdir>/checkpoints`, ascending."""
    root = _checkpoints_dir(workdir)
    return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit()) if root.exists() else []


def find_intact(workdir: str, step: int | None = None, *, set_aside: bool = False) -> int | None:
    """The step to restore: `step` if given (a `CheckpointError` if it is missing or damaged), else the newest
    intact checkpoint; None when there is no checkpoint at all.

    Each damaged checkpoint newer than the one chosen is logged with its step and problem; with `set_aside` (a
    training run that will save these steps again) process 0 moves it to `<workdir>/damaged_checkpoints/`. With
    checkpoints present but none intact, a `CheckpointError` lists each and nothing is moved."""
    root = _checkpoints_dir(workdir)
    steps = list_steps(workdir)
    problem_of = lambda s: verify(root / str(s))
    if step is not None:
        if step not in steps:
            there = ", ".join(map(str, steps)) or "none"
            raise CheckpointError(f"no checkpoint for step {step} in {root} (steps there: {there})")
        problem = problem_of(step)
        if problem:
            raise CheckpointError(f"checkpoint step {step} in {root} is damaged: {problem}")
        return step
    interrupted = list(root.glob(f"*{TMP_SUFFIX}*")) if root.exists() else []
    for path in interrupted:
        log.warning("checkpoint %s: an interrupted save (%s), ignored", path.name.split(".")[0], path)
    damaged = []
    for candidate in reversed(steps):
        problem = problem_of(candidate)
        if problem is None:
            break
        damaged.append((candidate, problem))
        log.warning("checkpoint step %d in %s is damaged: %s; skipping it", candidate, root, problem)
    else:
        if damaged:
            raise CheckpointError(
                f"no intact checkpoint in {root}; nothing was changed:\n  "
                + "\n  ".join(f"step {s}: {p}" for s, p in damaged)
            )
        return None
    if damaged and set_aside:
        _sync("smallbig_checkpoints_verified")  # every process has read them before process 0 moves them
        if jax.process_index() == 0:
            aside = root.parent / DAMAGED_DIR
            aside.mkdir(parents=True, exist_ok=True)
            for bad, _ in damaged:
                target, n = aside / str(bad), 1
                while target.exists():  # the same step damaged again
                    target, n = aside / f"{bad}.{n}", n + 1
                (root / str(bad)).rename(target)
        _sync("smallbig_set_aside_damaged_checkpoints")
        log.warning(
            "moved damaged checkpoint(s) %s to %s", ", ".join(str(s) for s, _ in damaged), root.parent / DAMAGED_DIR
        )
    if damaged or interrupted:
        log.warning("restoring checkpoint step %d, the newest intact one", candidate)
    return candidate


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


class Manager(ocp.CheckpointManager):
    """A `CheckpointManager` that writes the checksum manifest into each checkpoint once all its files are written."""

    def __init__(self, directory: epath.Path, options: ocp.CheckpointManagerOptions, item_names: tuple[str, ...]):
        self._step_in_flight: int | None = None
        options.async_options = ocp.AsyncOptions(post_finalization_callback=self._write_manifest_in_flight)
        super().__init__(directory, options=options, item_names=item_names)

    def _write_manifest_in_flight(self) -> None:
        """Runs in orbax's commit thread after every file of the save is written and before the folder is
        committed: locally `<step>.orbax-checkpoint-tmp` (renamed afterwards), on object stores `<step>` itself."""
        if jax.process_index() != 0 or self._step_in_flight is None:
            return
        final = self.directory / str(self._step_in_flight)
        tmp = self.directory / (str(self._step_in_flight) + TMP_SUFFIX)
        write_manifest(tmp if tmp.exists() else final)

    def reached_preemption(self, step: int) -> bool:
        """Never: the training loop decides where to save for a preemption (`smallbig_jax.preemption`); orbax's own
        check would move the counter of JAX's preemption sync point, which the loop's service points own."""
        del step
        return False

    def save(self, step: int, *args, **kwargs) -> bool:
        self.wait_until_finished()  # the previous save's manifest is written before `_step_in_flight` changes
        self._step_in_flight = step
        return super().save(step, *args, **kwargs)


def _readers_dir(workdir: str) -> epath.Path:
    return _checkpoints_dir(workdir).parent / READERS_DIR


def _pin_is_live(pin: epath.Path, now: float) -> bool:
    """A pin holds for `READ_LEASE_SECONDS` after it was written, less when its process (on this host) has ended."""
    try:
        if now - pin.stat().mtime > READ_LEASE_SECONDS:
            return False
    except OSError:  # removed by its reader meanwhile
        return False
    host, _, pid = pin.name.split(".", 1)[1].rpartition(".")
    if host != socket.gethostname():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        pass
    return True


def pinned_steps(workdir: str) -> set[int]:
    """The steps a live reader (`pinned_for_reading`) is reading now."""
    folder = _readers_dir(workdir)
    if not folder.exists():
        return set()
    now = time.time()
    return {int(p.name.split(".")[0]) for p in folder.iterdir() if p.name[0].isdigit() and _pin_is_live(p, now)}


@contextlib.contextmanager
def pinned_for_reading(workdir: str) -> Iterator[None]:
    """Pins every checkpoint of `workdir` while the body reads one: a `train` running there keeps pinned steps
    beyond `keep_checkpoints` (`BeingRead`) and deletes them at its next save after the pins are gone. A reader
    killed before it unpins holds its pins for `READ_LEASE_SECONDS` at most (less on its own host). A workdir the
    reader cannot write to gets no pins: the read goes on without them (`evaluate` retries a read that a deletion
    broke)."""
    folder = _readers_dir(workdir)
    pins = []
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for step in list_steps(workdir):
            pin = folder / f"{step}.{socket.gethostname()}.{os.getpid()}"
            pin.write_text("")
            pins.append(pin)
    except OSError as e:
        log.debug("checkpoints read without pins (%s)", e)
    try:
        yield
    finally:
        for pin in pins:
            with contextlib.suppress(OSError):
                pin.unlink()


class BeingRead:
    """Orbax preservation policy: keep the checkpoints that a reader has pinned (`pinned_for_reading`)."""

    def __init__(self, workdir: str):
        self.workdir = workdir

    def should_preserve(self, checkpoints: Sequence[Any], *, context: Any) -> list[bool]:
        del context
        pinned = pinned_steps(self.workdir)
        return [c.step in pinned for c in checkpoints]


def make_manager(workdir: str, *, keep: int = 2, read_only: bool = False) -> ocp.CheckpointManager:
    """A manager for `<workdir>/checkpoints` (asynchronous saves): last `keep` checkpoints plus the best by
    `BEST_METRIC`, plus those being read (`BeingRead`).
    `read_only` (evaluation) creates and cleans up nothing (orbax's own `read_only` option logs warnings)."""
    policy = ocp.checkpoint_managers.AnyPreservationPolicy(
        [
            ocp.checkpoint_managers.LatestN(keep),
            ocp.checkpoint_managers.BestN(
                get_metric_fn=lambda m: m[BEST_METRIC], n=1, keep_checkpoints_without_metrics=False
            ),
            BeingRead(workdir),
        ]
    )
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy,
        enable_async_checkpointing=True,
        cleanup_tmp_directories=not read_only,
        create=not read_only,
    )
    return Manager(_checkpoints_dir(workdir), options, ("state", "data", "config"))


def save(
    manager: ocp.CheckpointManager,
    step: int,
    state: Any,
    data_state: dict | None,
    config: ml_collections.ConfigDict,
    metrics: dict[str, float] | None = None,
    force: bool = False,
) -> bool:
    """Starts an (asynchronous) save of `state` at `step`; every process must call it."""
    return manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(data_state or {}),
            config=ocp.args.JsonSave(json.loads(config.to_json_best_effort())),
        ),
        metrics=metrics,
        force=force,
    )


def restore(manager: ocp.CheckpointManager, abstract_state: Any, step: int | None = None) -> tuple[Any, dict, int]:
    """(state, data iterator state, step) of checkpoint `step` (default latest), laid out as `abstract_state`
    (a pytree of `jax.ShapeDtypeStruct` with target shardings). Choose `step` with `find_intact` first."""
    step = manager.latest_step() if step is None else step
    if step is None:
        raise CheckpointError(f"no checkpoint in {manager.directory}")
    restored = manager.restore(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()),
    )
    return restored.state, dict(restored.data or {}), step


def restore_run_info(manager: ocp.CheckpointManager, step: int) -> tuple[dict, dict]:
    """(the config, the data iterator state) saved with checkpoint `step`, as plain JSON."""
    restored = manager.restore(
        step, args=ocp.args.Composite(config=ocp.args.JsonRestore(), data=ocp.args.JsonRestore())
    )
    return dict(restored.config or {}), dict(restored.data or {})


def best_step(manager: ocp.CheckpointManager) -> int:
    """The step with the highest `BEST_METRIC` among the checkpoints that recorded one (a validation ran)."""
    scored = {s: (manager.metrics(s) or {}).get(BEST_METRIC) for s in manager.all_steps()}
    scored = {s: m for s, m in scored.items() if m is not None}
    if not scored:
        steps = ", ".join(map(str, manager.all_steps())) or "none"
        raise CheckpointError(
            f"--best: no checkpoint in {manager.directory} has evaluation metrics (steps: {steps}); "
            "they are recorded when validation runs during training (config.eval_every_epochs)"
        )
    return max(scored, key=lambda s: (scored[s], s))


def abstract_like(state: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)


def size_bytes(manager: ocp.CheckpointManager, step: int) -> int:
    """Bytes on disk of checkpoint `step` (local directories only; 0 elsewhere)."""
    root = os.path.join(str(manager.directory), str(step))
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(root) for f in files)
