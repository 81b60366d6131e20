"""`smallbig-jax <command> [flags]`: the project's one command line (also `python -m smallbig_jax`).

Each command is a module here with its docstring (what `--help` prints), its absl flags in its own `FLAGS` and a
`main()`. Flags are spelled with underscores; a command that takes a config takes it as `--config=configs/x.py[:arg]`
plus `--config.<field>=<value>` overrides (ml_collections, through `cli.define_config_flag`). The commands
that compute restart once with glibc's host-memory settings first (`smallbig_jax/host_memory.py`), here and
nowhere else, before they import JAX.
"""

from __future__ import annotations

import importlib
import sys

from smallbig_jax import cli
from smallbig_jax.host_memory import keep_freed_host_memory
from smallbig_jax.tools import targets

PROG = "smallbig-jax"

# name -> what it does (the module smallbig_jax.commands.<name> implements it).
COMMANDS = {
    "train": "train (and evaluate) from a config; resumes from the newest intact checkpoint",
    "evaluate": "multi-view evaluation of a training run or a converted checkpoint",
    "convert": "PyTorch <-> JAX weights (official SmallBigNet checkpoints, torchvision ImageNet ResNets)",
    "benchmark": "train-step and eval throughput, optionally side by side with PyTorch",
    "prepare": "write a frame-folder or video dataset as ArrayRecord shards",
    "check": "decode every video of a list or ArrayRecord split and report the broken ones",
    "summary": "parameters, per-stage shapes and GMACs of a model at an input shape",
    "synthetic": "write the embedded synthetic dataset (mp4s, lists, ArrayRecord)",
    "accelerator_check": "numerics, speed sweep and input pipeline on a new accelerator",
    "distributed_check": "a multi-process launch end to end (start-up, global batch, forward)",
    "compile": "compile the train and eval steps for a TPU or GPU target without it: memory, FLOPs, collectives",
}
# Commands whose XLA:CPU steps page-fault their temporaries back in without glibc's settings.
KEEP_HOST_MEMORY = ("train", "evaluate", "benchmark", "accelerator_check")


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {what}" for name, what in COMMANDS.items()]
    return f"usage: {PROG} <command> [flags]   ({PROG} <command> --help lists its flags)\n\ncommands:\n" + "\n".join(
        lines
    )


def run(command: str, args: list[str]) -> int:
    """Runs one command with `args` (the command line after its name) in this process; returns its exit status."""
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}\n{usage()}", file=sys.stderr)
        return cli.EXIT_USER_ERROR
    if command == "train":
        cli.exit_on_early_preemption()
    module = importlib.import_module(f"{__name__}.{command}")  # only the chosen command's imports are paid for
    return cli.run_command(f"{PROG} {command}", module.__doc__ or "", module.FLAGS, module.main, list(args))


def _names_a_tpu_slice(args: list[str]) -> bool:
    """Whether a `compile` command line targets a TPU slice (`--target v5e-8`): it then needs no CUDA compiler, and
    without one prints no CUDA driver probe lines. Read before JAX is imported (`targets` imports no JAX)."""
    for flag, value in zip(args, args[1:] + [""]):
        name = flag.partition("=")[2] if flag.startswith("--target=") else value if flag == "--target" else ""
        if name:
            try:
                return targets.parse_target(name).platform == "tpu"
            except targets.TargetError:
                return False  # the command itself reports the unknown name
    return False


def main(argv: list[str] | None = None) -> int:
    """The console entry point: `smallbig-jax <command> [flags]`."""
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in cli.HELP:
        print(usage())
        return 0 if args else cli.EXIT_USER_ERROR
    command = args[0]
    if argv is None and command in KEEP_HOST_MEMORY:
        keep_freed_host_memory()  # same arguments after the restart: sys.orig_argv
    if argv is None and command in COMMANDS:
        cli.choose_jax_platforms(keep_cuda_compiler=command == "compile" and not _names_a_tpu_slice(args[1:]))
    return run(command, args[1:])
