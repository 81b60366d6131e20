"""The one command line: `smallbig-jax <command>` (pyproject's console script, `python -m smallbig_jax`), every
command's `--help`, flags spelled with underscores (dashes read the same), user errors as one message with exit
status 2, and two commands run for real (synthetic data written, then checked)."""

from __future__ import annotations

import importlib
import os
import subprocess
import tomllib

import pytest
from helpers import run_cli

from smallbig_jax import cli, commands

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ISSUE_COMMANDS = ("train", "evaluate", "convert", "benchmark", "prepare", "check", "summary")


def smallbig_jax(*args: str) -> subprocess.CompletedProcess:
    return run_cli(*args, timeout=300)


def test_pyproject_console_script_resolves_to_the_dispatcher():
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        scripts = tomllib.load(f)["project"]["scripts"]
    module, _, attr = scripts["smallbig-jax"].partition(":")
    entry = getattr(importlib.import_module(module), attr)
    assert entry is commands.main and callable(entry)
    assert set(ISSUE_COMMANDS) <= set(commands.COMMANDS)


def test_every_script_is_a_thin_wrapper_of_a_command():
    for name in os.listdir(os.path.join(REPO, "scripts")):
        if name.endswith(".py"):
            text = open(os.path.join(REPO, "scripts", name)).read()
            assert len(text.splitlines()) <= 15 and "from smallbig_jax.commands import run" in text, name


@pytest.mark.parametrize("command", sorted(commands.COMMANDS))
def test_help_of_every_command(command):
    out = smallbig_jax(command, "--help")
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith(f"usage: smallbig-jax {command} [flags]") and "--[no]debug:" in out.stdout
    module_doc = importlib.import_module(f"smallbig_jax.commands.{command}").__doc__.strip().splitlines()[0]
    assert module_doc in out.stdout


def test_usage_errors_are_one_message_and_exit_status_2(capsys):
    assert commands.main([]) == cli.EXIT_USER_ERROR and "commands:" in capsys.readouterr().out
    assert commands.main(["tarin"]) == cli.EXIT_USER_ERROR
    assert "unknown command 'tarin'" in capsys.readouterr().err
    assert commands.main(["check", "--format=video", "--num_clases=5"]) == cli.EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.startswith("error: Unknown command line flag 'num_clases'") and len(err.splitlines()) == 2
    assert commands.main(["check", "--format=video", "--num_classes=5", "stray"]) == cli.EXIT_USER_ERROR
    assert "unexpected arguments stray" in capsys.readouterr().err


def test_synthetic_then_check_end_to_end(tmp_path):
    """Dashed and underscored spellings alike; `check` exits 1 and names the line of a broken entry."""
    out = smallbig_jax(
        "synthetic", f"--out={tmp_path}", "--num-train=3", "--num_val=2", "--num_frames=8", "--size=32",
        "--no_arrayrecord", "--workers=1",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "wrote {'train': 3, 'val': 2} videos" in out.stdout
    check = ["check", "--format=video", "--num_classes=5", f"--root={tmp_path}/videos", "--workers=1", "--quiet"]
    out = smallbig_jax(*check, f"--list={tmp_path}/train.txt")
    assert out.returncode == 0 and "3 of 3 videos readable, 0 broken" in out.stderr, out.stderr[-3000:]
    with open(tmp_path / "train.txt", "a") as f:
        f.write("train/missing.mp4 8 1\n")
    broken = tmp_path / "broken.txt"
    out = smallbig_jax(*check, f"--list={tmp_path}/train.txt", f"--out={broken}")
    assert out.returncode == 1 and "3 of 4 videos readable, 1 broken" in out.stderr, out.stderr[-3000:]
    assert f"{tmp_path}/train.txt:4:" in out.stdout and broken.read_text() == out.stdout
