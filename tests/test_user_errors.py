"""Nothing silently wrong (issue 22), through the user's commands (`smallbig-jax ...` in a subprocess): no metric from
non-finite scores, no ignored config typo, the machine's errors (read-only or full disk, a file where a folder should
be, undecodable or empty lists) as one line naming the path, healthy inputs (variable frame rate, a byte-order mark)
accepted, duplicate list lines reported. Each case checks the exit status, the one line and what is left on disk.

Cheap on purpose: one 12-video synthetic dataset and two tiny converted checkpoints (SmallBig-23, width 4) serve
every case; most cases fail before anything compiles, and the two evaluations that compile share one program
through the persistent compilation cache.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fractions
import json
import os
import subprocess

import av
import numpy as np
import pytest
from helpers import run, run_cli, run_python

from smallbig_jax import cli, evaluate
from smallbig_jax import config as config_lib
from smallbig_jax.convert import save_converted
from smallbig_jax.data import lists, sources, writers
from smallbig_jax.models import build_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILE = os.path.join(REPO, "configs", "synthetic_smallbig.py")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("synthetic"))
    writers.write_synthetic_dataset(out, num_train=8, num_val=4, num_frames=8, size=32, workers=1, arrayrecord=False)
    return out


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """`good` and `nan` (one NaN in layer2.0.conv1, as in the issue): the synthetic config's `tiny` model."""
    root = tmp_path_factory.mktemp("converted")
    model = build_model("smallbig23", 5, base_width=4)
    save_converted(root / "good", model)
    model.layer2[0].conv1.kernel[...] = model.layer2[0].conv1.kernel[...].at[0, 0, 0, 0, 0].set(np.nan)
    save_converted(root / "nan", model)
    return {"good": str(root / "good"), "nan": str(root / "nan")}


def config_arg(dataset):
    return f"--config={CONFIG_FILE}:tiny,dir={dataset}"


def assert_one_line_error(out: subprocess.CompletedProcess, says: str) -> str:
    """Exit status 2 and stderr ending in `error: ...says...` plus the one hint line; returns the error line."""
    assert out.returncode == 2, out.stderr[-3000:]
    lines = out.stderr.strip().splitlines()
    assert lines[-2].startswith("error: ") and says in lines[-2], out.stderr[-3000:]
    assert lines[-1] == f"({cli.DEBUG_ENV}=1 shows the full traceback)" and "Traceback" not in out.stderr
    return lines[-2]


# --- Config arguments and fields --------------------------------------------------------------------------------


def test_config_typos_and_broken_files_are_one_line_errors_before_anything_runs(dataset, tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("def get_config(arg=None:\n    pass\n")
    workdir = tmp_path / "run"
    cases = [
        (
            [f"--config={CONFIG_FILE}:tinny,dir={dataset}"],
            "unknown config argument 'tinny' (did you mean 'tiny'?); this config file takes: res50: ",
        ),
        ([config_arg(dataset), "--config.lerning_rate=0.1"], "the config has no field 'lerning_rate'; its fields: "),
        (
            [config_arg(dataset), "--config.model.base_widht=8"],
            "--config.model.base_widht: the config has no field 'model.base_widht'; did you mean "
            "--config.model.base_width?",
        ),
        ([f"--config={tmp_path / 'missing.py'}"], f"config file {tmp_path / 'missing.py'}: no such file"),
        ([f"--config={broken}"], f"config file {broken}:1: "),
    ]
    for n, (args, says) in enumerate(cases):  # the same flag parsing in every command: `summary` loads the least
        command = ("train", f"--workdir={workdir}") if n == 0 else ("summary",)
        assert_one_line_error(run_cli(*command, *args, timeout=300), says)
    assert not workdir.exists()


def test_every_config_file_rejects_an_unknown_argument_listing_the_ones_it_takes():
    for name in sorted(os.listdir(os.path.join(REPO, "configs"))):
        if name.endswith(".py"):
            path = os.path.join(REPO, "configs", name)
            with pytest.raises(config_lib.ConfigError, match=r"unknown config argument 'bfl6' \(did you mean 'bf16'"):
                cli.load_config_file(f"{path}:bfl6")
            assert "bf16: " in str(pytest.raises(config_lib.ConfigError, cli.load_config_file, f"{path}:x").value)
    assert config_lib.config_args("tiny, dir=/d", {"tiny": "", "dir=PATH": ""}) == {"tiny": True, "dir": "/d"}
    with pytest.raises(config_lib.ConfigError, match="config argument 'tiny=3': expected 'tiny'"):
        config_lib.config_args("tiny=3", {"tiny": ""})


# --- The machine's errors ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def small_tmpfs(path, size: str, read_only: bool = False):
    """A tmpfs mounted at `path` (True) where this machine lets the test mount one, else nothing (False)."""
    os.makedirs(path)
    options = f"size={size}" + (",ro" if read_only else "")
    mounted = run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", path])
    try:
        yield mounted.returncode == 0
    finally:
        if mounted.returncode == 0:
            run(["umount", path], check=True)


def failing_writes(errno_: int, *args: str) -> subprocess.CompletedProcess:
    """`smallbig-jax <args>` in a process where every fsync fails with `errno_`: the fallback where no tmpfs can be
    mounted (the run's first write, the workdir check's probe, is fsynced)."""
    code = (
        "import errno, os, sys\n"
        f"def fail(fd): raise OSError({errno_}, os.strerror({errno_}))\n"
        "os.fsync = fail\n"
        "from smallbig_jax import commands\n"
        "sys.exit(commands.main(sys.argv[1:]))\n"
    )
    return run_python("-c", code, *args, timeout=300)


def test_machine_and_list_file_errors_are_one_line_naming_the_path(dataset, tmp_path):
    """A file where the workdir should be, a list that is a folder, a Latin-1 list, an empty list, a read-only
    workdir and a full disk: `error: <path>: <what>`, exit 2, the first failure (never a later `curves.png`), and no
    workdir left behind."""
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("videos/\xe9t\xe9.mp4 8 0\n".encode("latin-1"))
    empty = tmp_path / "empty.txt"
    empty.write_text("# no videos yet\n\n")
    run = str(tmp_path / "run")
    train = ("train", config_arg(dataset))
    cases = [
        ([f"--workdir={a_file}"], f"{a_file}: not a folder: a file is where a folder should be"),
        ([f"--workdir={run}", f"--config.data.train_list={tmp_path}"], f"{tmp_path}: is a folder, where a file is"),
        ([f"--workdir={run}", f"--config.data.train_list={latin1}"], f"{latin1}:1: not UTF-8 text (byte 0xe9)"),
        ([f"--workdir={run}", f"--config.data.train_list={empty}"], f"{empty}: lists no video"),
    ]
    for args, says in cases:
        assert_one_line_error(run_cli(*train, *args, timeout=300), says)
    assert not os.path.exists(run) and sorted(os.listdir(tmp_path)) == ["a_file", "empty.txt", "latin1.txt"]

    with small_tmpfs(tmp_path / "ro", "1m", read_only=True) as mounted:
        if mounted:  # a read-only file system (root ignores permission bits)
            out = run_cli(*train, f"--workdir={tmp_path / 'ro' / 'run'}", timeout=300)
        else:  # no mount here: a write that fails with EROFS
            out = failing_writes(errno.EROFS, *train, f"--workdir={tmp_path / 'ro' / 'run'}")
        assert_one_line_error(out, f"{tmp_path / 'ro'}: read-only file system: choose a writable folder")
    with small_tmpfs(tmp_path / "full", "64k") as mounted:
        if mounted:  # a tmpfs filled to the last byte
            with open(tmp_path / "full" / "filler", "wb") as f, contextlib.suppress(OSError):
                f.write(bytes(1 << 20))
            out = run_cli(*train, f"--workdir={tmp_path / 'full'}", timeout=300)
        else:  # no mount here: a write that fails with ENOSPC
            out = failing_writes(errno.ENOSPC, *train, f"--workdir={tmp_path / 'full'}")
        assert_one_line_error(out, f"{tmp_path / 'full'}: no space left on the device")
        assert not mounted or os.listdir(tmp_path / "full") == ["filler"]


# --- Evaluation: no number from a non-finite score --------------------------------------------------------------


def test_evaluation_refuses_non_finite_scores_and_zero_videos(dataset, converted, tmp_path):
    out = run_cli("evaluate", config_arg(dataset), f"--converted={converted['nan']}", timeout=300)
    line = assert_one_line_error(out, "4 of 4 videos have non-finite (NaN or infinite) scores, e.g. ")
    assert f"{dataset}/val.txt:1 val/00000.mp4" in line and "and 1 more" in line and "top-1" not in out.stdout
    assert not os.path.exists(os.path.join(converted["nan"], "predictions_eval.jsonl"))

    empty = tmp_path / "empty.txt"
    empty.write_text("")
    out = run_cli(
        "evaluate",
        config_arg(dataset),
        f"--converted={converted['good']}",
        f"--config.data.val_list={empty}",
        timeout=300,
    )
    assert_one_line_error(out, f"{empty}: lists no video")
    out = run_cli(
        "evaluate", config_arg(dataset), f"--converted={converted['good']}", "--config.model.base_width=8", timeout=300
    )
    assert_one_line_error(out, "model.base_width: 4 there, 8 in the config")

    # The same check where validation during training fuses its scores, and the zero-video case behind it.
    scores = evaluate.VideoScores(3, 5)
    scores.add(np.array([[0.0] * 5, [np.nan] * 5, [np.inf] + [0.0] * 4]), np.zeros(3), np.arange(3), np.ones(3, bool))
    with pytest.raises(FloatingPointError, match=r"2 of 3 videos have non-finite .* e\.g\. b, c:"):
        scores.result(name_of="abc".__getitem__)
    scores = evaluate.VideoScores(2, 5)
    scores.add(np.zeros((2, 5)), np.zeros(2), np.arange(2), np.zeros(2, bool), broken=np.ones(2, bool))
    with pytest.raises(lists.DataError, match=r"no video was evaluated \(2 listed, 2 excluded as unreadable\)"):
        scores.result()
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        evaluate.write_predictions(str(tmp_path / "p.jsonl"), {"predictions": [{"video": 0, "score": float("nan")}]})
    assert not os.path.exists(tmp_path / "p.jsonl")


def test_evaluation_prints_its_result_before_a_failed_write_and_warns_once(dataset, converted, tmp_path):
    """A val list with a byte-order mark, a duplicate line and a missing video (`eval_bad_input=exclude`): the
    result is printed, then the predictions file that cannot be written (a file where its folder should be) ends the
    command; the duplicate and the exclusion are each reported once, the list line named once."""
    with open(os.path.join(dataset, "val.txt")) as f:
        lines = f.readlines()
    val = tmp_path / "val.txt"
    val.write_bytes(b"\xef\xbb\xbf" + "".join([*lines, lines[0], "val/missing.mp4 8 1\n"]).encode())
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    out = run_cli(
        "evaluate",
        config_arg(dataset),
        f"--converted={converted['good']}",
        f"--config.data.val_list={val}",
        "--config.data.eval_bad_input=exclude",
        f"--predictions={a_file}/predictions.jsonl",
        timeout=300,
    )
    assert_one_line_error(out, f"{a_file}: already exists as a file, where a folder should be")
    assert out.stdout.startswith("top-1 ") and " over 5 videos x 2 views" in out.stdout
    assert json.loads(out.stdout.splitlines()[1])["excluded_videos"] == 1
    assert out.stderr.count(f"{val}: 1 video listed more than once: val/00000.mp4 ({val}:1, {val}:5)") == 1
    assert out.stderr.count(f"{val}:6") == 1 and "excluded on this host" in out.stderr
    assert a_file.read_text() == ""


# --- Healthy inputs accepted, duplicates and odd frames named ---------------------------------------------------


def write_vfr_mp4(path, num_frames: int = 12, size: int = 32) -> None:
    """An h264 mp4 whose frames last 33 or 100 ms (variable frame rate, as phones record); frame t is all 20 * t."""
    pts = np.cumsum([0] + [100 if t % 3 == 0 else 33 for t in range(1, num_frames)])
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.time_base = fractions.Fraction(1, 1000)
        stream.options = {"crf": "0", "preset": "ultrafast", "threads": "1"}
        for t in range(num_frames):
            frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), 20 * t, np.uint8), format="rgb24")
            frame.pts, frame.time_base = int(pts[t]), fractions.Fraction(1, 1000)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def test_variable_frame_rate_video_bom_lists_and_duplicates(tmp_path):
    write_vfr_mp4(tmp_path / "vfr.mp4")
    for wanted in ([0, 1, 2, 3], [5, 6, 7, 11], [11], [4, 4, 9]):  # from the start, after a seek, repeated
        frames, _, n = sources.decode_video(str(tmp_path / "vfr.mp4"), lambda n, w=wanted: np.array(w), "list:1")
        assert n == 12 and np.allclose(frames[:, 8, 8, 0], 20 * np.array(wanted), atol=3), (wanted, frames[:, 8, 8, 0])

    listed = tmp_path / "list.txt"
    listed.write_bytes(b"\xef\xbb\xbfvfr.mp4 0\nvfr.mp4 1\n")
    out = run_cli(
        "check", "--format=video", f"--list={listed}", f"--root={tmp_path}", "--num_classes=5", "--quiet", timeout=300
    )
    assert out.returncode == 1, out.stderr
    assert (
        out.stdout
        == f"{listed}: 1 video listed more than once: vfr.mp4 ({listed}:1, {listed}:2) (evaluation counts each line)\n"
    )
    assert "2 of 2 videos readable, 0 broken, 1 listed more than once" in out.stderr

    csv_list = tmp_path / "list.csv"
    csv_list.write_bytes(b"\xef\xbb\xbfpath,label\nvfr.mp4,3\n")
    assert [(e.path, e.label) for e in lists.read_video_list(str(csv_list), 5)] == [("vfr.mp4", 3)]


def test_check_names_the_frame_of_another_size(tmp_path):
    writers.write_frame_folder(str(tmp_path / "frames" / "a"), np.zeros((3, 32, 32, 3), np.uint8))
    odd = tmp_path / "frames" / "a" / "img_00002.jpg"
    writers.write_frame_folder(str(tmp_path / "odd"), np.zeros((1, 32, 40, 3), np.uint8))
    os.replace(tmp_path / "odd" / "img_00001.jpg", odd)
    listed = tmp_path / "list.txt"
    listed.write_text("a 3 0\n")
    out = run_cli(
        "check",
        "--format=frames",
        f"--list={listed}",
        f"--root={tmp_path / 'frames'}",
        "--num_classes=5",
        "--quiet",
        timeout=300,
    )
    assert out.returncode == 1, out.stderr
    assert out.stdout.startswith(f"{listed}:1: frames of different sizes: {odd} is 40x32, ")


def test_prepare_overwrite_removes_an_incomplete_build(dataset, tmp_path):
    out_dir = tmp_path / "prepared"
    stale = out_dir / "small_big_video" / "video" / "incomplete.0123abcd_1.0.0"
    stale.mkdir(parents=True)
    with open(os.path.join(dataset, "val.txt")) as f:
        (tmp_path / "val.txt").write_text("".join(f.readlines()[:2]))
    args = [
        "--input_format=video",
        "--num_classes=5",
        f"--root={os.path.join(dataset, 'videos')}",
        f"--split=val={tmp_path / 'val.txt'}",
        "--storage=video",
        f"--out={out_dir}",
        "--workers=1",
        "--quiet",
    ]
    assert_one_line_error(
        run_cli("prepare", *args, timeout=300), "holds only an incomplete build (incomplete.0123abcd_1.0.0"
    )
    assert stale.exists()
    out = run_cli("prepare", *args, "--overwrite", timeout=300)
    assert out.returncode == 0, out.stderr
    assert not stale.exists() and os.listdir(stale.parent) == ["1.0.0"]


def test_torch_messages_reach_the_user_without_terminal_escape_codes(tmp_path):
    import torch  # noqa: PLC0415 - the optional dependency, loaded by this test only

    # What old training scripts saved next to their weights: an object torch.load(weights_only=True) refuses.
    torch.save({"state_dict": {}, "args": argparse.Namespace(lr=0.1)}, tmp_path / "pickled.pth")
    out = run_cli("convert", f"--input={tmp_path / 'pickled.pth'}", f"--output={tmp_path / 'out'}", timeout=300)
    assert out.returncode == 2 and "weights_only=True refused it" in out.stderr, out.stderr
    assert "\x1b" not in out.stderr and "do those steps only if you trust the source" in out.stderr
    assert not (tmp_path / "out").exists()
