"""The data commands: synthetic dataset (deterministic, all three forms readable), `check` and `prepare`."""

import hashlib
import os
import shutil

import numpy as np
from helpers import run_cli

from smallbig_jax.data import check, pipeline, sources, synthetic, writers


def _digest(folder):
    h = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(folder)):
        for f in sorted(files):
            h.update(open(os.path.join(dirpath, f), "rb").read())
    return h.hexdigest()


def test_synthetic_dataset_is_deterministic_and_readable(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    writers.write_synthetic_dataset(a, seed=1, num_train=10, num_val=5, workers=1, arrayrecord=True)
    writers.write_synthetic_dataset(b, seed=1, num_train=10, num_val=5, workers=1, arrayrecord=False)
    assert _digest(f"{a}/videos") == _digest(f"{b}/videos")
    assert open(f"{a}/train.txt").read().splitlines()[:2] == ["train/00000.mp4 16 0", "train/00001.mp4 16 1"]
    c = synthetic.data_config(a, "video")
    video = sources.VideoFileSource(c.train_list, c.root, num_classes=5)
    ar = sources.ArrayRecordSource(c.arrayrecord_dir, "val", num_classes=5)
    assert len(video) == 10 and len(ar) == 5 and ar[4]["name"] == "val/00004.mp4"
    fv, _ = video.load(3, lambda n: np.arange(n))
    ref = synthetic.make_video(np.random.default_rng([1, 0, 3]), 3)
    other = synthetic.make_video(np.random.default_rng([1, 0, 4]), 3)
    err = np.abs(fv.astype(int) - ref).mean()  # h264 smooths the pixel noise (std 6) away
    assert fv.shape == (16, 64, 80, 3) and err < 8 and np.abs(fv.astype(int) - other).mean() > 2 * err
    b = next(iter(pipeline.train_dataset(synthetic.data_config(a), num_classes=5, global_batch_size=5, seed=0)))
    assert b["clip"].shape == (5, 8, 48, 48, 3)


def test_check_dataset_reports_every_broken_entry(sbdata_dir, tmp_path):
    shutil.copytree(f"{sbdata_dir}/videos", tmp_path / "v")
    (tmp_path / "v" / "junk.mp4").write_bytes(b"not a video" * 100)
    lines = "vid00.mp4 16 0\nmissing.mp4 16 1\njunk.mp4 16 2\nvid01.mp4 40 1\nvid02.mp4 16 2\n"
    (tmp_path / "l.txt").write_text(lines)
    src = sources.VideoFileSource(str(tmp_path / "l.txt"), str(tmp_path / "v"), num_classes=3)
    broken = check.check_source(src, workers=1, progress=False)
    assert [b.split(": ")[0].rsplit(":", 1)[1] for b in broken] == ["2", "3", "4"]
    assert "missing.mp4 does not exist" in broken[0] and "shorter than its 40 frames" in broken[2]
    r = run_cli(
        "check", "--num_classes", "3", "--format", "video", "--list", tmp_path / "l.txt", "--root", tmp_path / "v",
        "--workers", "2", "--quiet", timeout=120,
    )  # fmt: skip
    assert r.returncode == 1, r.stderr
    assert r.stdout.count("l.txt:") == 3 and "2 of 5 videos readable, 3 broken" in r.stderr


def test_synthetic_classes_are_axes_of_motion():
    """The region the shape sweeps (pixels that leave the per-pixel temporal median) lies along the class axis."""
    for seed in range(4):
        for label in range(5):
            v = synthetic.make_video(np.random.default_rng([seed, label]), label).astype(int)
            swept = (np.abs(v - np.median(v, axis=0)).max(-1) > 50).any(0)
            ys, xs = np.nonzero(swept)
            if label == 0:
                assert swept.sum() < 20, seed
                continue
            corr = np.corrcoef(xs, ys)[0, 1]
            if label == 1:
                assert np.ptp(xs) > 1.5 * np.ptp(ys)
            elif label == 2:
                assert np.ptp(ys) > 1.5 * np.ptp(xs)
            elif label == 3:
                assert corr > 0.5
            else:
                assert corr < -0.5


def test_data_command_lines(sbdata_dir, tmp_path):
    """`smallbig-jax synthetic` and `smallbig-jax prepare` as users run them (counts per split, failed list)."""
    syn = ["synthetic", "--out", tmp_path / "syn", "--num_train", "5", "--num_val"]
    r = run_cli(*syn, "5", "--workers", "1", timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "wrote {'train': 5, 'val': 5} videos" in r.stdout
    assert "Downloading and preparing" not in r.stdout + r.stderr and "Generating" not in r.stdout + r.stderr  # TFDS
    assert len(sources.ArrayRecordSource(str(tmp_path / "syn" / "arrayrecord"), "train", num_classes=5)) == 5
    r = run_cli(*syn, "5", "--workers", "1", "--if_missing", timeout=180)
    assert r.returncode == 0 and "already holds" in r.stdout, r.stderr[-2000:]
    r = run_cli(*syn, "6", "--workers", "1", "--if_missing", timeout=180)
    # 6 held-out videos: not the dataset that is there, so it is rewritten
    assert r.returncode == 0 and "wrote {'train': 5, 'val': 6} videos" in r.stdout, r.stderr[-2000:]
    (tmp_path / "l.txt").write_text("vid00 16 0\nvid01 16 1\nnot_there 16 2\n")
    r = run_cli(
        "prepare", "--input_format", "frames", "--num_classes", "3", "--root", f"{sbdata_dir}/frames",
        "--split", f"train={tmp_path}/l.txt", "--split", f"val={sbdata_dir}/frames.txt", "--out", tmp_path / "ar",
        "--workers", "2", timeout=180,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert "train: 2 videos written, 1 unreadable" in r.stdout and "val: 12 videos written, 0 unreadable" in r.stdout
    assert "l.txt:3" in open(tmp_path / "ar" / "failed_train.txt").read()
    assert "train videos" in r.stderr  # progress bar
    assert "Downloading and preparing" not in r.stdout  # TFDS's own line: nothing is downloaded
    prepare = [
        "prepare", "--input_format", "frames", "--num_classes", "3", "--root", f"{sbdata_dir}/frames",
        "--split", f"train={sbdata_dir}/frames.txt", "--out", tmp_path / "ar",
    ]  # fmt: skip
    r = run_cli(*prepare, timeout=180)
    assert r.returncode != 0 and "exists; pass overwrite=True (--overwrite)" in r.stderr
    r = run_cli(*prepare, "--overwrite", "--quiet", timeout=180)
    assert r.returncode == 0 and "train: 12 videos written, 0 unreadable" in r.stdout, r.stderr[-2000:]
    assert len(sources.ArrayRecordSource(str(tmp_path / "ar"), "train", num_classes=12)) == 12


def _pooled_features(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(per-frame globally pooled statistics averaged over time, the shape of the region that changes in time)."""
    v = v.astype(np.float32)
    gx, gy = np.abs(np.diff(v, axis=2)).mean(axis=(1, 2, 3)), np.abs(np.diff(v, axis=1)).mean(axis=(1, 2, 3))
    per_frame = np.stack([v.mean(axis=(1, 2, 3)), v.std(axis=(1, 2, 3)), gx, gy], 1).mean(0)
    per_frame = np.concatenate([per_frame, v.mean(axis=(0, 1, 2)), v.std(axis=(1, 2)).mean(0)])
    d = np.abs(np.diff(v, axis=0)).sum(-1)
    w = (d * (d > 30)).sum(0) + 1e-6
    ys, xs = np.mgrid[0 : v.shape[1], 0 : v.shape[2]]
    mx, my = (w * xs).sum() / w.sum(), (w * ys).sum() / w.sum()
    cxx, cyy = (w * (xs - mx) ** 2).sum(), (w * (ys - my) ** 2).sum()
    cxy = (w * (xs - mx) * (ys - my)).sum()
    return per_frame, np.array([cxx / (cxx + cyy), cxy / (cxx + cyy), np.log(w.sum())])


def _softmax_regression_accuracy(xtr, ytr, xte, yte) -> float:
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xte = np.c_[(xtr - mu) / sd, np.ones(len(xtr))], np.c_[(xte - mu) / sd, np.ones(len(xte))]
    w, y = np.zeros((xtr.shape[1], 5)), np.eye(5)[ytr]
    for _ in range(1500):
        z = xtr @ w
        p = np.exp(z - z.max(1, keepdims=True))
        w -= 0.1 * (xtr.T @ (p / p.sum(1, keepdims=True) - y) / len(xtr) + 1e-3 * w)
    return float(((xte @ w).argmax(1) == yte).mean())


def test_synthetic_needs_temporal_context():
    """A proxy for the res50-vs-SmallBig claim: a linear classifier on per-frame pooled features averaged over
    time (what a per-frame model with temporal average pooling sees, minus the learning) stays near chance (20%),
    one on where the image changes over time does well."""
    feats = {}
    for split, n in (("train", 200), ("val", 100)):
        rows = [
            _pooled_features(synthetic.make_video(np.random.default_rng([7, len(split), i]), i % 5)) for i in range(n)
        ]
        feats[split] = (np.array([r[0] for r in rows]), np.array([r[1] for r in rows]), np.arange(n) % 5)
    (ftr, ttr, ytr), (fva, tva, yva) = feats["train"], feats["val"]
    assert _softmax_regression_accuracy(ftr, ytr, fva, yva) < 0.35
    assert _softmax_regression_accuracy(ttr, ytr, tva, yva) > 0.7
