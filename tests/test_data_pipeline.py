"""grain pipelines: batches, determinism across workers, exact resume, per-host sharding, eval padding and mask,
bad-input policies, flip, and global jax.Array batches."""

import json
import logging

import grain
import jax
import numpy as np
import pytest
from conftest import SBDATA_VIDEOS

from smallbig_jax.config import check_config, official_recipe
from smallbig_jax.data import lists, pipeline, sources, transforms
from smallbig_jax.data.config import default_data_config
from smallbig_jax.data.lists import DataError
from smallbig_jax.errors import ConfigError
from smallbig_jax.sharding import make_mesh


@pytest.fixture()
def cfg(sbdata_dir, tmp_path):
    """Frame folders whose label is the video index, so batches show which videos they hold."""
    lists.write_frame_list(str(tmp_path / "idx.txt"), [(f"vid{v:02d}", 16, v) for v in range(SBDATA_VIDEOS)])
    c = default_data_config()
    c.format, c.root = "frames", f"{sbdata_dir}/frames"
    c.train_list = c.val_list = str(tmp_path / "idx.txt")
    c.num_frames, c.stride, c.crop_size, c.scale_size = 4, 2, 32, 40
    return c


def _take(ds_or_it, n):
    it = iter(ds_or_it)
    return [next(it) for _ in range(n)]


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_train_batches_shape_dtype_and_epochs(cfg):
    batches = _take(pipeline.train_dataset(cfg, num_classes=12, global_batch_size=4, seed=0), 6)
    b = batches[0]
    assert b["clip"].shape == (4, 4, 32, 32, 3) and b["clip"].dtype == np.uint8
    assert b["label"].dtype == np.int32 and b["label"].shape == (4,)
    labels = np.concatenate([b["label"] for b in batches])
    assert sorted(labels[:12]) == list(range(12)) and sorted(labels[12:]) == list(range(12))  # each epoch once
    assert not np.array_equal(labels[:12], labels[12:])  # reshuffled per epoch
    assert b["clip"].max() > 200 and b["clip"].min() < 50


def test_train_deterministic_across_worker_counts_and_resumable_with_workers(cfg):
    ref = _take(pipeline.train_dataset(cfg, num_classes=12, global_batch_size=4, seed=3), 6)
    cfg.worker_count = 2
    it = iter(pipeline.train_dataset(cfg, num_classes=12, global_batch_size=4, seed=3))
    got = [next(it) for _ in range(3)]
    _same(got, ref[:3])
    state = json.loads(json.dumps(it.get_state()))  # The state is small and JSON-serialisable.
    it2 = iter(pipeline.train_dataset(cfg, num_classes=12, global_batch_size=4, seed=3))
    it2.set_state(state)
    _same([next(it2) for _ in range(3)], ref[3:])
    cfg.worker_count = 0
    other = _take(pipeline.train_dataset(cfg, num_classes=12, global_batch_size=4, seed=4), 1)
    assert not np.array_equal(other[0]["clip"], ref[0]["clip"])


def test_train_resume_is_exact(cfg):
    ref = _take(pipeline.train_dataset(cfg, num_classes=12, global_batch_size=4, seed=0), 7)
    it = iter(pipeline.train_dataset(cfg, num_classes=12, global_batch_size=4, seed=0))
    _ = [next(it) for _ in range(4)]
    state = it.get_state()
    it2 = iter(pipeline.train_dataset(cfg, num_classes=12, global_batch_size=4, seed=0))
    it2.set_state(state)
    _same([next(it2) for _ in range(3)], ref[4:])


def test_two_hosts_split_the_global_batches(cfg):
    ref = _take(pipeline.train_dataset(cfg, num_classes=12, global_batch_size=6, seed=1), 4)
    hosts = [
        _take(
            pipeline.train_dataset(
                cfg, num_classes=12, global_batch_size=6, seed=1, shard_options=grain.sharding.ShardOptions(h, 2)
            ),
            4,
        )
        for h in range(2)
    ]
    for k in range(4):
        for h in range(2):
            assert hosts[h][k]["clip"].shape[0] == 3
            for key in ("clip", "label"):
                np.testing.assert_array_equal(hosts[h][k][key], ref[k][key][h::2])
    epoch0 = np.concatenate([hosts[h][k]["label"] for k in range(2) for h in range(2)])
    assert sorted(epoch0) == list(range(12))


def test_eval_covers_every_view_once_with_padding(cfg):
    cfg.num_clips, cfg.num_crops, cfg.sampling = 2, 3, "segment"
    hosts = [
        list(
            pipeline.eval_dataset(
                cfg, num_classes=12, global_batch_size=10, shard_options=grain.sharding.ShardOptions(h, 2)
            )
        )
        for h in range(2)
    ]
    assert [len(h) for h in hosts] == [8, 8]  # 72 views padded to 80 = 8 global batches of 10
    allb = [b for h in hosts for b in h]
    vid = np.concatenate([b["video_index"] for b in allb])
    mask = np.concatenate([b["mask"] for b in allb])
    assert mask.sum() == 72 and np.all(vid[~mask] == -1)
    assert np.all(np.bincount(vid[mask], minlength=12) == 6)
    labels = np.concatenate([b["label"] for b in allb])
    np.testing.assert_array_equal(labels[mask], vid[mask])
    assert allb[0]["clip"].shape == (5, 4, 40, 40, 3)  # 3 crops are scale_size squares
    # Each clip is decoded once for its 3 crops.
    source = sources.make_source(cfg, "val", 12)
    calls = []
    load = source.load
    source.load = lambda *a, **k: calls.append(a[0]) or load(*a, **k)
    list(pipeline.eval_dataset(cfg, num_classes=12, global_batch_size=10, source=source))
    assert sorted(calls) == sorted(list(range(12)) * 2)
    # The 6 views of a video differ (clips by frames, crops by position).
    views = np.stack([c for b in allb for c, v in zip(b["clip"], b["video_index"]) if v == 0])
    assert len({v.tobytes() for v in views}) == 6


def test_eval_single_view_centre_crop(cfg):
    batches = list(pipeline.eval_dataset(cfg, num_classes=12, global_batch_size=8))
    assert len(batches) == 2 and batches[0]["clip"].shape == (8, 4, 32, 32, 3)
    assert batches[1]["mask"].sum() == 4


@pytest.fixture()
def bad_cfg(cfg, sbdata_dir, tmp_path):
    rows = [(f"vid{v:02d}", 16, v) for v in range(SBDATA_VIDEOS)]
    rows[5] = ("missing_video", 16, 5)
    lists.write_frame_list(str(tmp_path / "bad.txt"), rows)
    cfg.train_list = cfg.val_list = str(tmp_path / "bad.txt")
    return cfg


def test_bad_input_error_policy_names_file_and_line(bad_cfg):
    with pytest.raises(DataError, match=r"bad\.txt:6: frame folder .*missing_video does not exist"):
        _take(pipeline.train_dataset(bad_cfg, num_classes=12, global_batch_size=12, seed=0), 1)


def test_bad_input_resample_policy(bad_cfg, caplog):
    bad_cfg.bad_input = "resample"
    batches = _take(pipeline.train_dataset(bad_cfg, num_classes=12, global_batch_size=4, seed=0), 3)
    labels = np.concatenate([b["label"] for b in batches])
    bad = np.concatenate([b["bad_index"] for b in batches])
    assert 5 not in labels and list(bad[bad >= 0]) == [5]  # replaced once in the epoch, and flagged
    again = _take(pipeline.train_dataset(bad_cfg, num_classes=12, global_batch_size=4, seed=0), 3)
    _same(again, batches)  # deterministic replacement
    mesh = make_mesh(num_devices=1)
    source = sources.make_source(bad_cfg, "train", 12)
    loader = pipeline.DeviceIterator(
        pipeline.train_dataset(bad_cfg, num_classes=12, global_batch_size=4, seed=0, source=source),
        source,
        mesh=mesh,
        global_batch_size=4,
        epoch_size=12,
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _take(loader, 6)  # two epochs
    loader.close()
    assert dict(loader.bad_inputs[0]) == dict(loader.bad_inputs[1]) == {f"{bad_cfg.train_list}:6 missing_video": 1}
    assert "epoch 0 on this host: 1 unreadable videos, 1 replacements" in caplog.text
    assert caplog.text.count("missing_video") == 1  # named once, with its reason, not again in each epoch


def test_eval_broken_video_error_or_excluded(bad_cfg, caplog):
    with pytest.raises(DataError, match=r"bad\.txt:6"):
        list(pipeline.eval_dataset(bad_cfg, num_classes=12, global_batch_size=4))
    bad_cfg.eval_bad_input = "exclude"
    batches = list(pipeline.eval_dataset(bad_cfg, num_classes=12, global_batch_size=4))
    vid = np.concatenate([b["video_index"] for b in batches])
    mask = np.concatenate([b["mask"] for b in batches])
    broken = np.concatenate([b["broken"] for b in batches])
    assert mask.sum() == 11 and list(vid[broken]) == [5] and not mask[vid == 5].any()
    mesh = make_mesh(num_devices=1)
    with caplog.at_level(logging.WARNING):
        loader = pipeline.make_eval_loader(bad_cfg, num_classes=12, global_batch_size=4, mesh=mesh)
        assert sum(int(b["mask"].sum()) for b in loader) == 11
    assert list(loader.excluded) == [f"{bad_cfg.val_list}:6 missing_video"]
    assert "missing_video does not exist" in loader.excluded[f"{bad_cfg.val_list}:6 missing_video"]
    assert "evaluation: 1 unreadable videos excluded on this host" in caplog.text


def test_flip_off_keeps_orientation_flip_on_mirrors(cfg):
    cfg.scales = (1.0,)  # whole frame height; the red channel ramps up from left to right

    def directions():
        b = _take(pipeline.train_dataset(cfg, num_classes=12, global_batch_size=12, seed=0), 1)[0]["clip"]
        b = b[..., 0].astype(int)
        return np.sign(b[:, :, :, -1] - b[:, :, :, 0]).reshape(12, -1)

    cfg.flip = False
    off = directions()
    assert np.all(off == 1)
    cfg.flip = True
    on = directions()
    assert np.all(np.abs(on.mean(1)) == 1) and (on[:, 0] == -1).sum() >= 2 and (on[:, 0] == 1).sum() >= 2


@pytest.mark.parametrize("fmt", ["video", "arrayrecord"])
def test_other_formats_feed_the_pipeline(fmt, sbdata_dir, tmp_path):
    from smallbig_jax.data import prepare

    c = default_data_config()
    c.num_frames, c.stride, c.crop_size = 4, 2, 32
    c.format, c.root, c.train_list = fmt, f"{sbdata_dir}/videos", f"{sbdata_dir}/videos.txt"
    if fmt == "arrayrecord":
        prepare.prepare_dataset(
            str(tmp_path),
            {"train": c.train_list},
            input_format="video",
            num_classes=12,
            root=c.root,
            workers=1,
            progress=False,
        )
        c.arrayrecord_dir = str(tmp_path)
    b = _take(pipeline.train_dataset(c, num_classes=12, global_batch_size=3, seed=0), 1)[0]
    assert b["clip"].shape == (3, 4, 32, 32, 3) and sorted(b["label"]) != []


def test_device_loader_global_arrays_and_resume(cfg):
    mesh = make_mesh(num_devices=1)
    ref_host = _take(pipeline.train_dataset(cfg, num_classes=12, global_batch_size=4, seed=0), 5)
    loader = pipeline.make_train_loader(cfg, num_classes=12, global_batch_size=4, seed=0, mesh=mesh)
    got = _take(loader, 2)
    state = loader.get_state()
    b = got[0]
    assert isinstance(b["clip"], jax.Array) and b["clip"].dtype == np.float32 and b["clip"].shape == (4, 4, 32, 32, 3)
    np.testing.assert_allclose(np.asarray(b["clip"]), transforms.normalize(ref_host[0]["clip"]), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(got[1]["label"]), ref_host[1]["label"])
    _take(loader, 2)  # run ahead, then restore
    loader.set_state(state)
    np.testing.assert_array_equal(np.asarray(next(loader)["label"]), ref_host[2]["label"])
    loader2 = pipeline.make_train_loader(cfg, num_classes=12, global_batch_size=4, seed=0, mesh=mesh)
    loader2.set_state(state)
    nxt = _take(loader2, 2)
    for k in range(2):
        np.testing.assert_allclose(np.asarray(nxt[k]["clip"]), transforms.normalize(ref_host[2 + k]["clip"]), atol=1e-6)
    loader.close()
    loader2.close()
    ev = list(pipeline.make_eval_loader(cfg, num_classes=12, global_batch_size=8, mesh=mesh))
    assert len(ev) == 2 and ev[1]["mask"].dtype == bool and int(ev[1]["mask"].sum()) == 4


def test_loader_state_round_trips_through_orbax(cfg, tmp_path):
    """How the training loop saves the data state next to the model: JSON in an Orbax composite checkpoint."""
    import orbax.checkpoint as ocp

    mesh = make_mesh(num_devices=1)
    loader = pipeline.make_train_loader(cfg, num_classes=12, global_batch_size=4, seed=0, mesh=mesh)
    _take(loader, 3)
    with ocp.CheckpointManager(str(tmp_path / "ckpt")) as mngr:
        mngr.save(3, args=ocp.args.Composite(data=ocp.args.JsonSave(loader.get_state())))
        mngr.wait_until_finished()
    expected = [(np.asarray(b["label"]), np.asarray(b["clip"])) for b in _take(loader, 2)]
    loader.close()
    with ocp.CheckpointManager(str(tmp_path / "ckpt")) as mngr:
        state = mngr.restore(3, args=ocp.args.Composite(data=ocp.args.JsonRestore()))["data"]
    resumed = pipeline.make_train_loader(cfg, num_classes=12, global_batch_size=4, seed=0, mesh=mesh)
    resumed.set_state(state)
    assert resumed.steps == 3
    for (label, clip), b in zip(expected, _take(resumed, 2)):
        np.testing.assert_array_equal(np.asarray(b["label"]), label)
        np.testing.assert_array_equal(np.asarray(b["clip"]), clip)
    resumed.close()


def test_resume_on_another_host_or_worker_count(cfg):
    """The saved global position restarts the stream exactly, whatever the new layout."""
    ref = _take(pipeline.train_dataset(cfg, num_classes=12, global_batch_size=4, seed=0), 6)
    hosts = [
        _take(
            pipeline.train_dataset(
                cfg,
                num_classes=12,
                global_batch_size=4,
                seed=0,
                start_position=8,
                shard_options=grain.sharding.ShardOptions(h, 2),
            ),
            2,
        )
        for h in range(2)
    ]
    for k in range(2):
        for key in ("clip", "label"):
            np.testing.assert_array_equal(
                np.stack([hosts[0][k][key], hosts[1][k][key]], 1).reshape(ref[2 + k][key].shape), ref[2 + k][key]
            )
    mesh = make_mesh(num_devices=1)
    loader = pipeline.make_train_loader(cfg, num_classes=12, global_batch_size=4, seed=0, mesh=mesh)
    _take(loader, 3)
    state = json.loads(json.dumps(loader.get_state()))
    loader.close()
    assert state["position"] == 12 and state["layout"]["worker_count"] == 0
    state["layout"]["process_count"] = 2  # As if saved on two hosts: grain's per-host state does not apply.
    resumed = pipeline.make_train_loader(cfg, num_classes=12, global_batch_size=4, seed=0, mesh=mesh)
    resumed.set_state(state)
    for k, b in enumerate(_take(resumed, 3)):
        np.testing.assert_array_equal(np.asarray(b["label"]), ref[3 + k]["label"])
        np.testing.assert_allclose(np.asarray(b["clip"]), transforms.normalize(ref[3 + k]["clip"]), atol=1e-6)
    again = resumed.get_state()
    resumed.close()
    assert again["position"] == 24 and again["steps"] == 6 and again["layout"]["start_position"] == 12
    fresh = pipeline.make_train_loader(cfg, num_classes=12, global_batch_size=4, seed=0, mesh=mesh)
    fresh.set_state(again)  # Saved by a position-resumed loader: resumes by position again.
    expect = _take(pipeline.train_dataset(cfg, num_classes=12, global_batch_size=4, seed=0, start_position=24), 1)
    np.testing.assert_array_equal(np.asarray(next(fresh)["label"]), expect[0]["label"])
    fresh.close()


@pytest.mark.parametrize(
    "field,value", [("format", "hdf5"), ("sampling", "tsm"), ("num_crops", 5), ("bad_input", "skip"), ("num_frames", 0)]
)
def test_bad_data_config_is_refused_by_the_one_config_check(cfg, field, value):
    """The data options' rules (beside their defaults in data/config.py) are checked with the whole config, by
    `config.check_config`, before anything is read; the loaders do not check them again."""
    config = official_recipe(variant="smallbig23", num_classes=12, num_frames=4, sampling="dense")
    config.data = cfg
    check_config(config)
    config.data[field] = value
    with pytest.raises(ConfigError, match=rf"^invalid config: config\.data\.{field}={value!r}: expected "):
        check_config(config)
    config.data[field] = cfg[field] = default_data_config()[field]
    config.data.sampling, config.data.num_clips = "segment", 3
    with pytest.raises(ConfigError, match=r"data.num_clips 1 or 2 with segment sampling"):
        check_config(config)
