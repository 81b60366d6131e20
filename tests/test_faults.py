"""What goes wrong in real runs, injected on purpose: damaged or unfinished checkpoints (each reported with its step,
skipped, and the run ends exactly where a clean one does), config changes on resume (refused with every field as
`old -> new`, or continued with exactly the steps the new config asks for), bad config values (refused before
anything compiles) and the entry points' one-message exits.

One clean tiny run (a checkpoint at every step, all kept) is trained in this process and copied for each case; the
resumes train in this process too and reuse its compiled steps through the persistent compilation cache (the
constant learning rate keeps the compiled step the same when `num_epochs` changes)."""

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import socket

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
from helpers import run_cli, start

from smallbig_jax import checkpointing, cli, evaluate, steps, train
from smallbig_jax import config as config_lib
from smallbig_jax.data import writers

pytestmark = pytest.mark.xdist_group("faults")  # one worker: the tests share the module's clean run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILE = os.path.join(REPO, "configs", "synthetic_smallbig.py")
LAST = 8  # 16 videos / batch 4 x 2 epochs


def tiny_config(dataset, **overrides):
    spec = importlib.util.spec_from_file_location("synthetic_config", CONFIG_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(f"tiny,dir={dataset}")
    config.final_eval = False
    config.schedule.decay = "constant"
    config.checkpoint_every, config.keep_checkpoints = 1, LAST
    for field, value in overrides.items():
        *parents, name = field.split(".")
        node = config
        for p in parents:
            node = node[p]
        node[name] = value
    return config


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("synthetic"))
    writers.write_synthetic_dataset(out, num_train=16, num_val=7, num_frames=8, size=32, workers=1, arrayrecord=False)
    return out


@pytest.fixture(scope="module")
def clean_run(dataset, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("clean"))
    result = train.train_and_evaluate(tiny_config(dataset), workdir)
    assert result.steps == LAST and checkpointing.list_steps(workdir) == list(range(1, LAST + 1))
    return workdir


def copy_of(clean_run, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(clean_run, workdir)
    return workdir


def state_at(workdir, step):
    return ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step), "state"))


def assert_same_state(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def largest_file(folder):
    files = [os.path.join(d, f) for d, _, names in os.walk(folder) for f in names]
    return max(files, key=os.path.getsize)


def truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def flip_bytes(path, count=64):
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        data = f.read(count)
        f.seek(os.path.getsize(path) // 2)
        f.write(bytes(b ^ 0xFF for b in data))


def interrupt_save(step_dir):
    """What a kill during the save leaves: the folder under orbax's temporary name, some files unwritten."""
    os.remove(os.path.join(step_dir, checkpointing.MANIFEST))
    truncate(largest_file(os.path.join(step_dir, "state")))
    os.rename(step_dir, step_dir + checkpointing.TMP_SUFFIX)


FAULTS = {  # step: (fault, damage to its folder, what the warning says)
    8: ("interrupted save", interrupt_save, "checkpoint 8: an interrupted save"),
    7: (
        "committed without manifest",
        lambda d: os.remove(os.path.join(d, checkpointing.MANIFEST)),
        "step 7 in {root} is damaged: no checksums.json (its save did not complete)",
    ),
    6: (
        "64 bytes flipped, same size",
        lambda d: flip_bytes(largest_file(os.path.join(d, "state", "ocdbt.process_0"))),
        "step 6 in {root} is damaged: state/ocdbt.process_0/d/",
    ),
    5: (
        "truncated iterator state",
        lambda d: truncate(os.path.join(d, "data", "metadata")),
        "step 5 in {root} is damaged: data/metadata has",
    ),
    4: (
        "deleted _METADATA",
        lambda d: os.remove(os.path.join(d, "state", "_METADATA")),
        "step 4 in {root} is damaged: state/_METADATA is missing",
    ),
    3: (
        "truncated array file",
        lambda d: truncate(largest_file(os.path.join(d, "state", "ocdbt.process_0"))),
        "step 3 in {root} is damaged: state/ocdbt.process_0/d/",
    ),
}


def damage(workdir, steps):
    for step in steps:
        FAULTS[step][1](os.path.join(workdir, "checkpoints", str(step)))


def test_each_damaged_checkpoint_is_reported_and_skipped_and_training_ends_as_a_clean_run(
    dataset, clean_run, tmp_path, caplog
):
    """One fault per step, 3 to 8: the resume names each, restores step 2 and retrains steps 3-8 bit for bit."""
    workdir = copy_of(clean_run, tmp_path)
    damage(workdir, FAULTS)
    with caplog.at_level(logging.INFO, logger="smallbig_jax"):
        result = train.train_and_evaluate(tiny_config(dataset), workdir)
    root = os.path.join(workdir, "checkpoints")
    warnings = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    for fault, _, says in FAULTS.values():
        assert says.format(root=root) in warnings, fault
    assert "does not match its checksum" in warnings and "has 0 bytes" not in warnings
    assert f"resumed from {root} at step 2" in caplog.text
    assert sorted(os.listdir(os.path.join(workdir, "damaged_checkpoints"))) == ["3", "4", "5", "6", "7"]
    assert result.steps == LAST
    for step in range(3, LAST + 1):  # saved again, intact, equal to the clean run's
        assert checkpointing.verify(checkpointing._checkpoints_dir(workdir) / str(step)) is None
    assert_same_state(state_at(workdir, LAST), state_at(clean_run, LAST))
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [r["step"] for r in rows if r["split"] == "train"] == list(range(1, LAST + 1))  # no replayed duplicates


def tree_digest(folder):
    digest = hashlib.sha256()
    for d, dirs, names in sorted(os.walk(folder)):
        dirs.sort()
        for name in sorted(names):
            path = os.path.join(d, name)
            digest.update(path.encode())
            digest.update(open(path, "rb").read())
    return digest.hexdigest()


def test_all_checkpoints_damaged_is_a_clear_error_and_nothing_is_changed(dataset, clean_run, tmp_path):
    workdir = copy_of(clean_run, tmp_path)
    damage(workdir, [7, 6, 5, 4, 3])
    for step in (8, 2, 1):
        FAULTS[3][1](os.path.join(workdir, "checkpoints", str(step)))
    before = tree_digest(workdir)
    with pytest.raises(checkpointing.CheckpointError) as error:
        train.train_and_evaluate(tiny_config(dataset), workdir)
    message = str(error.value)
    assert message.startswith(f"no intact checkpoint in {workdir}/checkpoints; nothing was changed")
    assert "step 4: state/_METADATA is missing" in message and "step 1: state/ocdbt.process_0/d/" in message
    assert len(message.splitlines()) == 1 + LAST
    assert tree_digest(workdir) == before
    with pytest.raises(checkpointing.CheckpointError, match="step 6 .* is damaged: .* does not match its checksum"):
        evaluate.evaluate_checkpoint(tiny_config(dataset), workdir=workdir, step=6)


def test_resume_refuses_shape_and_data_mapping_changes_in_one_message_before_compiling(
    dataset, clean_run, tmp_path, monkeypatch
):
    workdir = copy_of(clean_run, tmp_path)
    monkeypatch.setattr(steps, "create_train_state", lambda *a: pytest.fail("compiled before refusing"))
    changed = tiny_config(
        dataset,
        **{
            "model.base_width": 8,
            "optimizer.momentum": 0.5,
            "batch_size": 12,  # 32 samples seen: not a whole number of batches of 12
            "ema_decay": 0.9,
            "model.param_dtype": "bfloat16",
            "log_every": 3,
        },
    )
    with pytest.raises(config_lib.ConfigError) as error:
        train.train_and_evaluate(changed, workdir)
    message = str(error.value)
    for line in (
        "model.base_width: 4 -> 8",
        "optimizer.momentum: 0.9 -> 0.5",
        "batch_size: 4 -> 12: the checkpoint at step 8 has seen 32 samples, not a whole number of batches of 12",
        "ema_decay: 0.0 -> 0.9",
        "model.param_dtype: 'float32' -> 'bfloat16'",
    ):
        assert line in message
    assert "log_every" not in message  # harmless
    shorter = os.path.join(str(tmp_path), "train12.txt")
    with open(os.path.join(dataset, "train.txt")) as f:
        lines = f.readlines()
    with open(shorter, "w") as f:
        f.writelines(lines[:12])
    with pytest.raises(config_lib.ConfigError, match="training set size: 16 -> 12 videos"):
        train.train_and_evaluate(tiny_config(dataset, **{"data.train_list": shorter}), workdir)
    with pytest.raises(config_lib.ConfigError, match="past the last step"):
        train.train_and_evaluate(tiny_config(dataset, num_epochs=1), workdir)
    assert checkpointing.list_steps(workdir) == list(range(1, LAST + 1))


def test_resume_with_more_epochs_trains_exactly_the_added_epochs(dataset, clean_run, tmp_path, caplog):
    workdir = copy_of(clean_run, tmp_path)
    with caplog.at_level(logging.INFO, logger="smallbig_jax"):
        result = train.train_and_evaluate(tiny_config(dataset, num_epochs=3, log_every=2), workdir)
    assert "num_epochs 2 -> 3: continuing from step 8 (32 samples seen) to step 12" in caplog.text
    assert "log_every: 1 -> 2" in caplog.text  # a harmless change, reported and applied
    assert result.steps == 12
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [r["step"] for r in rows if r["split"] == "train"] == list(range(1, LAST + 1)) + [10, 12]
    assert checkpointing.list_steps(workdir)[-1] == 12
    _, data_state = checkpointing.restore_run_info(checkpointing.make_manager(workdir, read_only=True), 12)
    assert data_state["position"] == 3 * 16 and data_state["num_videos"] == 16  # samples: exactly three epochs


def test_accepted_and_refused_fields_are_classified():
    config = tiny_config("unused")
    saved = json.loads(config.to_json_best_effort())
    for field, value in {
        "grad_accum_steps": 2,
        "batch_size": 8,  # continued in samples (train.check_resume), or refused there
        "checkpoint_every": 7,
        "eval_batch_size": 8,
        "num_epochs": 5,
        "data.root": "/elsewhere",
        "data.worker_count": 2,
        "model.formulation": "plain",  # the same parameters, computed another way
    }.items():
        refused, accepted = config_lib.resume_changes(saved, tiny_config("unused", **{field: value}))
        assert not refused and len(accepted) == 1, field
    del saved["model"]["formulation"]  # a checkpoint saved before the field existed
    assert config_lib.resume_changes(saved, config) == ([], ["model.formulation: '(absent)' -> 'auto'"])
    for field, value in {
        "seed": 3,
        "schedule.base_lr": 0.1,
        "label_smoothing": 0.1,
        "data.crop_size": 24,
        "batchnorm": "per_device",
        "grad_clip_norm": 1.0,
        "model.base_width": 8,
    }.items():
        refused, _ = config_lib.resume_changes(saved, tiny_config("unused", **{field: value}))
        assert len(refused) == 1 and refused[0].startswith(field + ": "), field


BAD_VALUES = [
    ("checkpoint_every", 0),
    ("log_every", 0),
    ("eval_batch_size", 0),
    ("num_epochs", 0),
    ("batch_size", -4),
    ("keep_checkpoints", 0),
    ("eval_every_epochs", -1),
    ("grad_accum_steps", 0),
    ("ema_decay", 1.0),
    ("label_smoothing", -0.1),
    ("schedule.base_lr", 0.0),
    ("schedule.base_lr", float("nan")),
    ("schedule.decay", "linear"),
    ("optimizer.name", "adam"),
    ("optimizer.momentum", 1.5),
    ("model.variant", "smallbig18"),
    ("model.num_classes", 0),
    ("model.param_dtype", "float64"),
    ("model.formulation", "xla"),
    ("batchnorm", "sync"),
    ("params_sharding", "zero3"),
    ("eval_average", "max"),
    ("data.frame_template", "img.jpg"),
    ("seed", -1),
    ("data.format", "mp4"),
    ("data.num_frames", 0),
    ("data.crop_size", 0),
    ("data.scales", ()),
    ("data.scales", (1.0, 1.5)),
    ("data.num_crops", 2),
    ("data.bad_input", "skip"),
    ("data.worker_count", -1),
    ("data.device_prefetch", 0),
    ("data.dtype", "int8"),
    ("data.max_resample", -1),
    ("data.train_short_side", -1),
]


@pytest.mark.parametrize("field,value", BAD_VALUES)
def test_bad_config_value_is_refused_before_compiling_with_field_value_and_range(field, value, monkeypatch, tmp_path):
    monkeypatch.setattr(steps, "create_train_state", lambda *a: pytest.fail("compiled before refusing"))
    with pytest.raises(config_lib.ConfigError) as error:
        train.train_and_evaluate(tiny_config("unused", **{field: value}), str(tmp_path / "run"))
    assert f"config.{field}={value!r}: expected " in str(error.value)
    assert not os.path.exists(tmp_path / "run")


def test_every_rule_has_a_field_and_every_shipped_config_passes():
    fields = set(config_lib.flatten(tiny_config("unused")))
    assert fields == set(config_lib.RULES)
    for name in sorted(os.listdir(os.path.join(REPO, "configs"))):
        if name.endswith(".py"):
            spec = importlib.util.spec_from_file_location(name[:-3], os.path.join(REPO, "configs", name))
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            config_lib.check_config(module.get_config())
    with pytest.raises(config_lib.ConfigError, match="config.checkpoint_evry=5: not a field of the recipe"):
        config = tiny_config("unused")
        config.unlock()
        config.checkpoint_evry = 5
        config_lib.check_config(config)
    with pytest.raises(config_lib.ConfigError, match="batch_size divisible by grad_accum_steps"):
        config_lib.check_config(tiny_config("unused", grad_accum_steps=3))


def test_entry_points_end_user_errors_with_one_message_and_exit_status_2(dataset, tmp_path):
    config = f"--config={CONFIG_FILE}:tiny,dir={dataset}"
    bad_list = str(tmp_path / "bad.txt")
    with open(os.path.join(dataset, "train.txt")) as f, open(bad_list, "w") as out:
        lines = f.readlines()
        lines[2] = "clip.mp4 three\n"
        out.writelines(lines)
    missing = str(tmp_path / "mistyped")
    cases = [
        (
            run_cli(
                "train", config, f"--workdir={tmp_path / 'a'}", f"--config.data.train_list={bad_list}", timeout=300
            ),
            f"{bad_list}:3:",
        ),
        (run_cli("evaluate", config, f"--workdir={missing}", timeout=300), f"no checkpoint in {missing}/checkpoints"),
        (
            run_cli("train", config, f"--workdir={tmp_path / 'b'}", "--config.checkpoint_every=0", timeout=300),
            "config.checkpoint_every=0: expected an integer >= 1",
        ),
    ]
    for out, says in cases:
        assert out.returncode == 2, out.stderr[-3000:]
        assert says in out.stderr and out.stderr.startswith("error: "), out.stderr[-3000:]
        assert len(out.stderr.strip().splitlines()) < 5, out.stderr
    assert not os.path.exists(missing) and not os.path.exists(tmp_path / "a") and not os.path.exists(tmp_path / "b")


def test_debug_setting_shows_the_traceback(monkeypatch):
    @cli.user_errors_exit
    def main():
        raise config_lib.ConfigError("config.log_every=0: expected an integer >= 1")

    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    monkeypatch.setenv(cli.DEBUG_ENV, "1")
    with pytest.raises(config_lib.ConfigError):
        main()


def test_evaluate_names_missing_steps_and_missing_metrics(dataset, clean_run):
    with pytest.raises(checkpointing.CheckpointError, match=r"no checkpoint for step 9 .*\(steps there: 1, 2, .*, 8\)"):
        evaluate.evaluate_checkpoint(tiny_config(dataset), workdir=clean_run, step=9)
    with pytest.raises(checkpointing.CheckpointError, match="--best: no checkpoint .* has evaluation metrics"):
        evaluate.evaluate_checkpoint(tiny_config(dataset), workdir=clean_run, best=True)
    with pytest.raises(config_lib.ConfigError, match="model.base_width: 4 -> 8"):
        evaluate.evaluate_checkpoint(tiny_config(dataset, **{"model.base_width": 8}), workdir=clean_run)


def test_checkpoints_without_any_manifest_are_refused(clean_run, tmp_path):
    """A checkpoint without its manifest is damaged (its save did not complete), also when none has one: nothing
    is restored unverified, and nothing is moved."""
    workdir = copy_of(clean_run, tmp_path)
    for step in checkpointing.list_steps(workdir):
        os.remove(os.path.join(workdir, "checkpoints", str(step), checkpointing.MANIFEST))
    with pytest.raises(checkpointing.CheckpointError, match=r"no intact checkpoint in .*\n  step 8: no checksums"):
        checkpointing.find_intact(workdir, set_aside=True)
    assert not os.path.exists(os.path.join(workdir, "damaged_checkpoints"))


def test_evaluate_reads_the_newest_again_only_when_a_running_train_changed_the_checkpoints(
    monkeypatch, tmp_path, caplog
):
    """A read that fails while a train beside it replaces its one kept checkpoint (orbax deletes the old one item by
    item) is retried on the newest; the same failure with the checkpoints unchanged is raised."""
    root = tmp_path / "checkpoints"
    (root / "1").mkdir(parents=True)
    reads = []

    def replaced_while_read(config, workdir, mesh, step, best):
        reads.append(checkpointing.list_steps(workdir))
        if len(reads) == 1:
            (root / "2").mkdir()
            raise KeyError('Item "data" was not found in the checkpoint')
        return "state", 2

    monkeypatch.setattr(evaluate, "_restore_one", replaced_while_read)
    with caplog.at_level(logging.WARNING):
        assert evaluate._restore_beside_training(None, str(tmp_path), None, None, False) == ("state", 2)
    assert reads == [[1], [1, 2]]
    assert "the checkpoints changed while the newest was read (steps 1, now 1, 2" in caplog.text

    def damaged(config, workdir, mesh, step, best):
        raise KeyError("damaged")

    monkeypatch.setattr(evaluate, "_restore_one", damaged)
    with pytest.raises(KeyError, match="damaged"):
        evaluate._restore_beside_training(None, str(tmp_path), None, None, False)


def test_a_train_keeps_the_checkpoints_an_evaluation_is_reading_and_deletes_them_once_read(tmp_path):
    """`keep_checkpoints=1`: the train's saves delete no checkpoint that a reader has pinned; the pinned one goes at
    the first save after the read. Pins of a process that has ended, or older than the lease, hold nothing."""
    workdir = str(tmp_path)
    manager = checkpointing.make_manager(workdir, keep=1)
    config = ml_collections.ConfigDict({"seed": 0})
    state = {"w": np.zeros(3, np.float32)}

    def save(step):
        checkpointing.save(manager, step, state, {}, config)
        manager.wait_until_finished()

    save(1)
    with checkpointing.pinned_for_reading(workdir):
        assert checkpointing.pinned_steps(workdir) == {1}
        save(2)
        save(3)
        assert checkpointing.list_steps(workdir) == [1, 3]
    assert checkpointing.pinned_steps(workdir) == set()
    save(4)
    assert checkpointing.list_steps(workdir) == [4]

    readers = tmp_path / checkpointing.READERS_DIR
    (readers / f"4.{socket.gethostname()}.{_ended_pid()}").write_text("")  # a reader on this host that was killed
    expired = readers / "4.other-host.example.com.7"
    expired.write_text("")
    os.utime(expired, (0, 0))
    assert checkpointing.pinned_steps(workdir) == set()
    (readers / "4.other-host.example.com.8").write_text("")  # another host's reader: its lease holds
    assert checkpointing.pinned_steps(workdir) == {4}
    manager.close()


def _ended_pid() -> int:
    process = start(["true"])
    process.wait()
    return process.pid
