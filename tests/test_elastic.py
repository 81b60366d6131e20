"""Resume on whatever capacity comes back: a run saved by two processes (one CPU device each, global batch 8) is
resumed by one process on 1 and on 4 devices and at batch 4 and 16. After the restore the train state equals the
saved one, the data continue at the saved sample exactly as an uninterrupted run at the new batch would see them,
the schedule continues in samples, and what cannot be carried is refused with a message naming it.

The two-process run trains once for the module (one epoch of 16 videos, a checkpoint at each of its 2 steps, the
first mid-epoch); resumes copy its workdir. Only one resume trains (batch 4, in this process): the others check the
restore, which compiles nothing but the initialiser.
"""

import importlib.util
import json
import logging
import os
import shutil
import socket
import textwrap

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from helpers import REPO, run_python, start_python

from smallbig_jax import checkpointing, optim, train
from smallbig_jax.config import ConfigError
from smallbig_jax.data import pipeline, writers
from smallbig_jax.metrics import MetricWriter, read_metrics

pytestmark = pytest.mark.xdist_group("elastic")  # one worker: the tests share the module's saved run

CONFIG_FILE = os.path.join(REPO, "configs", "synthetic_smallbig.py")
VIDEOS = 16
SAVED = ["--config.batch_size=8", "--config.num_epochs=1", "--config.checkpoint_every=1", "--config.final_eval=False"]


def tiny_config(dataset, **overrides):
    """The config the saved run trained with (`SAVED`), two epochs, with `overrides` (`field=value`)."""
    spec = importlib.util.spec_from_file_location("synthetic_config", CONFIG_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(f"tiny,dir={dataset}")
    config.batch_size, config.num_epochs, config.checkpoint_every, config.final_eval = 8, 2, 1, False
    for field, value in overrides.items():
        config[field] = value
    return config


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("synthetic"))
    writers.write_synthetic_dataset(
        out, num_train=VIDEOS, num_val=4, num_frames=8, size=32, workers=1, arrayrecord=False
    )
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def saved_run(dataset, tmp_path_factory):
    """`smallbig-jax train` in two processes joined by jax.distributed, one CPU device each: steps 1 and 2 at batch
    8, both checkpointed. Its workdir first holds the metrics.jsonl of a run killed before its first checkpoint."""
    workdir = tmp_path_factory.mktemp("saved") / "run"
    os.makedirs(workdir)
    stale = [json.dumps({"step": s, "split": "train", "loss": 9.0}) for s in range(1, 6)]
    (workdir / "metrics.jsonl").write_text("\n".join(stale) + '\n{"step": 6, "spl')  # and a line cut by the kill
    port = free_port()
    command = ["-m", "smallbig_jax", "train", f"--config={CONFIG_FILE}:tiny,dir={dataset}", f"--workdir={workdir}"]
    procs = []
    for i in range(2):
        env = {
            "SMALLBIG_COORDINATOR": f"127.0.0.1:{port}",
            "SMALLBIG_NUM_PROCESSES": "2",
            "SMALLBIG_PROCESS_ID": str(i),
        }
        procs.append(start_python(*command, *SAVED, env=env))
    try:
        outputs = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-4000:]
    assert "global batch 8 on 2 devices (2 processes)" in outputs[0][1]
    return str(workdir)


def copy_from(saved_run, tmp_path, step):
    """A copy of the saved run whose newest checkpoint is `step`."""
    workdir = str(tmp_path / f"from{step}")
    shutil.copytree(saved_run, workdir)
    for later in checkpointing.list_steps(workdir):
        if later > step:
            shutil.rmtree(os.path.join(workdir, "checkpoints", str(later)))
    return workdir


def saved_state(workdir, step):
    """The train state of checkpoint `step` as numpy arrays, read onto no mesh."""
    path = os.path.join(workdir, "checkpoints", str(step), "state")
    metadata = ocp.StandardCheckpointer().metadata(path).item_metadata
    return ocp.StandardCheckpointer().restore(path, jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), metadata))


def same_state(a, b) -> bool:
    a, b = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def resume_check(config, workdir) -> dict:
    """Opens the run in `workdir` as `train` does, on this process's devices, and reports: the "resumed" line,
    where it continues, whether the restored state equals the saved one, and whether its batches to the end of the
    epoch (at least one) equal those an uninterrupted run at `config.batch_size` sees from the same sample."""
    lines, logger = [], logging.getLogger("smallbig_jax")
    handler, level = logging.Handler(logging.INFO), logger.level
    handler.emit = lambda record: lines.append(record.getMessage())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        run = train.open_run(config, workdir)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    reference = pipeline.recipe_train_loader(config, run.mesh)
    try:
        state_equal = same_state(jax.device_get(run.state), saved_state(workdir, run.start))
        samples, batch = run.loader.position, config.batch_size
        for _ in range(samples // batch):  # the batches the saved run trained on, at the new batch size
            next(reference)
        batches = max((VIDEOS - samples % VIDEOS) // batch, 1)
        batches_equal = True
        for _ in range(batches):
            a, b = next(run.loader), next(reference)
            batches_equal &= all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in ("clip", "label"))
    finally:
        reference.close()
        run.loader.close()
        run.manager.close()
    return {
        "line": next(line for line in lines if line.startswith("resumed from")),
        "start": run.start,
        "offset": run.step_offset,
        "total_steps": run.total_steps,
        "samples": samples,
        "devices": run.mesh.size,
        "state_equal": bool(state_equal),
        "batches": batches,
        "batches_equal": bool(batches_equal),
    }


def test_saved_by_two_processes_resumed_by_one_on_one_device(dataset, saved_run, tmp_path):
    r = resume_check(tiny_config(dataset), copy_from(saved_run, tmp_path, 2))
    assert r["line"].endswith(
        "at step 2 on 1 device (was 2), 1 process (was 2), batch 8: continuing at sample 0 of epoch 2"
    ), r
    assert (r["start"], r["offset"], r["total_steps"], r["samples"]) == (2, 0, 4, 16), r
    assert r["state_equal"] and r["batches_equal"] and r["batches"] == 2, r
    rows = read_metrics(saved_run)  # the rows of the run killed before its first checkpoint are gone
    assert [row["step"] for row in rows if row["split"] == "train"] == [1, 2]
    assert all(row["loss"] != 9.0 for row in rows if row["split"] == "train")


FOUR_DEVICES = textwrap.dedent(
    """
    import json, shutil, sys
    import jax
    sys.path.insert(0, {tests!r})
    from smallbig_jax import checkpointing, sharding, train
    from test_elastic import resume_check, same_state, saved_state, tiny_config
    assert jax.device_count() == 4
    out = {{"16": resume_check(tiny_config({dataset!r}, batch_size=16), {at_16!r})}}
    # Saved by one process on 2 of its 4 devices, every array split over them (FSDP), resumed on 1 and on 4.
    sharding.FSDP_MIN_SIZE = 0
    make_mesh, fsdp = sharding.make_mesh, tiny_config({dataset!r}, params_sharding="fsdp")
    sharding.make_mesh = lambda: make_mesh(num_devices=2)
    run = train.open_run(fsdp, {two_processes!r})
    split = sum(not s.is_fully_replicated for s in jax.tree.leaves(run.setup.state_shardings["params"]))
    run.manager.close()
    run.manager, run.saved_step = checkpointing.make_manager({on_two!r}), -1
    run.save(run.start)
    run.manager.wait_until_finished()
    run.manager.close()
    run.loader.close()
    out["split_over_2"] = split
    out["saved_on_2_equal"] = same_state(saved_state({on_two!r}, 2), saved_state({two_processes!r}, 2))
    for n in (1, 4):
        sharding.make_mesh = lambda n=n: make_mesh(num_devices=n)
        shutil.copytree({on_two!r}, {on_two!r} + str(n))
        out[f"on_{{n}}"] = resume_check(fsdp, {on_two!r} + str(n))
    print(json.dumps(out))
    """
)


def test_on_forced_host_devices_saved_on_2_resumed_on_1_and_4_and_at_batch_16_on_4(dataset, saved_run, tmp_path):
    """One process with 4 host devices: the two-process run resumed on 4 devices at batch 16; and a run saved on 2
    of the devices with its arrays split over them, resumed on 1 and on 4."""
    code = FOUR_DEVICES.format(
        tests=os.path.join(REPO, "tests"),
        dataset=dataset,
        at_16=copy_from(saved_run, tmp_path / "b16", 2),
        two_processes=copy_from(saved_run, tmp_path / "two", 2),
        on_two=str(tmp_path / "on_two"),
    )
    out = run_python("-c", code, env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert "on 4 devices (was 2), 1 process (was 2), batch 16 (was 8)" in r["16"]["line"], r["16"]
    # Batch 16: 16 samples seen are step 1 of a run at batch 16, whose second and last step is the second epoch.
    assert "batch 16 (was 8), BatchNorm over the global micro-batch of 16 clips (was 8)" in r["16"]["line"]
    assert r["16"]["line"].endswith("step 2 is step 1 of a run at batch 16 (the schedule continues in samples)")
    assert (r["16"]["start"], r["16"]["offset"], r["16"]["total_steps"], r["16"]["samples"]) == (2, -1, 3, 16)
    assert r["split_over_2"] >= 20 and r["saved_on_2_equal"], r  # most kernels really were split
    for n in (1, 4):
        resumed = r[f"on_{n}"]
        device_word = "device" if n == 1 else "devices"
        assert resumed["line"].endswith(
            f"on {n} {device_word} (was 2), 1 process, batch 8: continuing at sample 0 of epoch 2"
        ), resumed
        assert resumed["devices"] == n and resumed["total_steps"] == 4, resumed
    for key in ("16", "on_1", "on_4"):
        assert r[key]["state_equal"] and r[key]["batches_equal"], (key, r[key])


def test_resumed_mid_epoch_at_batch_4_trains_the_rest_as_a_run_at_batch_4(dataset, saved_run, tmp_path):
    """From step 1 (8 of the epoch's 16 samples seen): the other 8 in two batches of 4, then the second epoch; the
    learning rate of each update is the one of the same samples in a run at batch 4."""
    config = tiny_config(dataset, batch_size=4)
    workdir = copy_from(saved_run, tmp_path, 1)
    r = resume_check(config, workdir)
    assert r["line"].endswith(
        "batch 4 (was 8), BatchNorm over the global micro-batch of 4 clips (was 8): continuing at sample 8 of "
        "epoch 1; step 1 is step 2 of a run at batch 4 (the schedule continues in samples)"
    ), r
    assert (r["start"], r["offset"], r["total_steps"], r["samples"]) == (1, 1, 7, 8), r
    assert r["state_equal"] and r["batches_equal"] and r["batches"] == 2, r
    result = train.train_and_evaluate(config, workdir)
    assert result.steps == 7
    _, data_state = checkpointing.restore_run_info(checkpointing.make_manager(workdir, read_only=True), 7)
    assert data_state["position"] == 2 * VIDEOS and data_state["devices"] == 1  # exactly two epochs of samples
    rows = [row for row in read_metrics(workdir) if row["split"] == "train"]
    assert [row["step"] for row in rows] == list(range(1, 8))
    at_batch_4 = optim.learning_rate_schedule(config, steps_per_epoch=VIDEOS // 4)
    for row in rows[1:]:  # update t (its schedule count t - 1) is update t + 1 of a run at batch 4
        assert row["learning_rate"] == pytest.approx(float(at_batch_4(row["step"])), rel=1e-6), row


def test_what_cannot_be_carried_is_refused_naming_it(dataset, saved_run, tmp_path):
    workdir = copy_from(saved_run, tmp_path, 1)
    with pytest.raises(ConfigError) as error:
        train.open_run(tiny_config(dataset, batch_size=16), workdir)
    assert (
        "batch_size: 8 -> 16: the checkpoint at step 1 has seen 8 samples, not a whole number of batches of 16"
        in str(error.value)
    )
    per_device = tiny_config("unused", batchnorm="per_device")
    saved = {**json.loads(per_device.to_json_best_effort()), "batch_size": 8}
    state = {"position": 16, "devices": 2, "layout": {"process_count": 2}}
    with pytest.raises(ConfigError) as error:  # 4 clips per device become 2
        train.check_resume(per_device, saved, state, 2, VIDEOS, devices=4)
    assert (
        "batchnorm='per_device': statistics over 4 clips per device and micro-batch (batch 8 / 2 devices / "
        "grad_accum_steps 1) would be over 2 (8 / 4 devices / 1); keep 4 with --config.batch_size=16"
    ) in str(error.value)
    keep_by_batch = tiny_config("unused", batchnorm="per_device", batch_size=16)
    assert train.check_resume(keep_by_batch, saved, state, 2, VIDEOS, devices=4)[0] == -1
    keep_by_accumulation = tiny_config("unused", batchnorm="per_device", grad_accum_steps=2)
    offset, line = train.check_resume(keep_by_accumulation, saved, state, 2, VIDEOS, devices=1)
    assert offset == 0 and "grad_accum_steps 2 (was 1)" in line and "BatchNorm" not in line


def test_a_fresh_start_drops_the_rows_of_a_run_killed_before_its_first_checkpoint(tmp_path):
    rows = [{"step": s, "split": "train", "loss": 1.0} for s in (1, 2, 3)] + [{"step": 3, "split": "val", "top1": 0.5}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    MetricWriter(str(tmp_path), resumed_at=2).close()
    assert [(r["step"], r["split"]) for r in read_metrics(str(tmp_path))] == [(1, "train"), (2, "train")]
    MetricWriter(str(tmp_path), resumed_at=0).close()
    assert read_metrics(str(tmp_path)) == []


def test_tensorboard_shows_each_replayed_step_once(tmp_path):
    from tensorboard.backend.event_processing import plugin_event_accumulator

    first = MetricWriter(str(tmp_path), resumed_at=0)
    for step in (1, 2, 3):
        first.write(step, "train", {"loss": float(step)})
    first.close()
    resumed = MetricWriter(str(tmp_path), resumed_at=2)  # the checkpoint was step 2: step 3 is trained again
    for step in (3, 4):
        resumed.write(step, "train", {"loss": 10.0 * step})
    resumed.close()
    events = plugin_event_accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    losses = [(e.step, float(e.tensor_proto.float_val[0])) for e in events.Tensors("train/loss")]
    assert losses == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]
