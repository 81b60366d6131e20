"""The one command line: `smallbig-jax <command>` (pyproject's console script, `python -m smallbig_jax`), every
command's `--help`, configs loaded one way (`--config=file.py:arg` and `--config.<field>=<value>`, in-process too),
user errors as one message with exit status 2, and two commands run for real (synthetic data written, then
checked)."""

from __future__ import annotations

import importlib
import os
import tomllib

import pytest
from absl import flags
from helpers import run_cli

from smallbig_jax import cli, commands

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ISSUE_COMMANDS = ("train", "evaluate", "convert", "benchmark", "prepare", "check", "summary")


def test_pyproject_console_script_resolves_to_the_dispatcher():
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        scripts = tomllib.load(f)["project"]["scripts"]
    module, _, attr = scripts["smallbig-jax"].partition(":")
    entry = getattr(importlib.import_module(module), attr)
    assert entry is commands.main and callable(entry)
    assert set(ISSUE_COMMANDS) <= set(commands.COMMANDS)


def test_a_config_with_overrides_in_process_and_its_default(capsys):
    """`cli.define_config_flag`: the default config when none is given, overrides read from the command's own
    arguments (not sys.argv), a fresh config on every run."""
    flag_values, seen = flags.FlagValues(), []
    holder = cli.define_config_flag(flag_values, default=os.path.join(REPO, "configs", "benchmark.py:tiny"))
    cli.define_debug_flag(flag_values)
    run = lambda *args: cli.run_command("prog", "doc", flag_values, lambda: seen.append(cli.config_value(holder)), args)
    assert run("--config.model.dtype=bfloat16", "--config.data.crop_size=32") == 0
    assert run() == 0
    assert run(f"--config={REPO}/configs/benchmark.py:smallbig101,bf16") == 0
    shapes = [(c.model.variant, c.model.dtype, c.data.crop_size) for c in seen]
    assert shapes == [("smallbig23", "bfloat16", 32), ("smallbig23", "float32", 64), ("smallbig101", "bfloat16", 224)]


@pytest.mark.parametrize("command", sorted(commands.COMMANDS))
def test_help_of_every_command(command):
    out = run_cli(command, "--help", timeout=300)
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
    """`check` of a list or of a config's split; it exits 1 and names the line of a broken entry."""
    out = run_cli(
        "synthetic", f"--out={tmp_path}", "--num_train=3", "--num_val=2", "--num_frames=8", "--size=32",
        "--no_arrayrecord", "--workers=1", timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "wrote {'train': 3, 'val': 2} videos" in out.stdout
    check = ["check", "--format=video", "--num_classes=5", f"--root={tmp_path}/videos", "--workers=1", "--quiet"]
    out = run_cli(*check, f"--list={tmp_path}/train.txt", timeout=300)
    assert out.returncode == 0 and "3 of 3 videos readable, 0 broken" in out.stderr, out.stderr[-3000:]
    config = f"--config={REPO}/configs/synthetic_smallbig.py:tiny,dir={tmp_path}"  # the same dataset, by its config
    out = run_cli("check", config, "--split=val", "--workers=1", "--quiet", timeout=300)
    assert out.returncode == 0 and "2 of 2 videos readable, 0 broken" in out.stderr, out.stderr[-3000:]
    with open(tmp_path / "train.txt", "a") as f:
        f.write("train/missing.mp4 8 1\n")
    broken = tmp_path / "broken.txt"
    out = run_cli(*check, f"--list={tmp_path}/train.txt", f"--out={broken}", timeout=300)
    assert out.returncode == 1 and "3 of 4 videos readable, 1 broken" in out.stderr, out.stderr[-3000:]
    assert f"{tmp_path}/train.txt:4:" in out.stdout and broken.read_text() == out.stdout
