r"""Compile the train and eval steps of a config for a TPU slice or GPU server without its hardware, and report,
per clips-per-device batch, memory per device (fits or not), XLA's and the analytic FLOPs, the collectives, a
roofline ceiling and the compile time: analysis of the compiled program, never a measured speed.

  smallbig-jax compile --config configs/kinetics400_smallbig50_8x8.py:bf16 --target v5e-8 --per_device_batch 8,16,32
  smallbig-jax compile --config configs/kinetics400_smallbig50_8x8.py:bf16 --config.params_sharding=fsdp \
      --target v5e-256 --num_slices 2
  smallbig-jax compile --config configs/kinetics400_smallbig50_8x8.py:bf16 --target h100x8 --num_hosts 2

Needs the `aot` extra (`pip install -e '.[aot]'`: libtpu and the CUDA plugin, no CUDA libraries). Targets: TPU
v4/v5e/v5p/v6e slices (`v5e-16`, `v5p-128`, ...) and 8-GPU servers (`a100x8`, `h100x8`, `h200x8`, `b200x8`);
smallbig_jax/tools/targets.py has the table of targets and device facts, smallbig_jax/tools/aot.py what is read.
Each step at each batch compiles in a process of its own: a compiler that crashes (libtpu 0.0.42.1 on v6e-8) or
raises loses that row only, reported as failed. Prints a markdown table and one JSON record (appended to --results
when given). Exit status 1 when a listed batch does not fit in the device's memory or failed to compile, 2 for bad
input.
"""

import json
import os
import pathlib
import pickle
import signal
import subprocess
import sys
import tempfile
import time
import traceback

from absl import flags

from smallbig_jax import cli
from smallbig_jax.tools import aot, targets

FLAGS = flags.FlagValues()
_CONFIG = cli.define_config_flag(FLAGS)
_TARGET = flags.DEFINE_string(
    "target", None, "Target: a TPU slice (v5e-8, v5p-128, ...) or a GPU server (h100x8).", flag_values=FLAGS
)
_BATCH = flags.DEFINE_list(
    "per_device_batch",
    None,
    "Clips per device, comma-separated (default: config.batch_size / devices).",
    flag_values=FLAGS,
)
_SLICES = flags.DEFINE_integer(
    "num_slices", 1, "TPU slices (data parallel over the data-centre network).", flag_values=FLAGS
)
_HOSTS = flags.DEFINE_integer("num_hosts", 1, "GPU servers.", flag_values=FLAGS)
_STEPS = flags.DEFINE_list("steps", ["train", "eval"], "Which steps to compile: train, eval.", flag_values=FLAGS)
_RESULTS = flags.DEFINE_string("results", None, "JSON-lines file to append the record to.", flag_values=FLAGS)
_MARKDOWN = flags.DEFINE_string("markdown", None, "Also write the markdown table to this file.", flag_values=FLAGS)
_HLO_DIR = flags.DEFINE_string(
    "hlo_dir", None, "Write each compiled program's HLO text here (<target>_<step>_<batch>.hlo.txt).", flag_values=FLAGS
)
cli.define_debug_flag(FLAGS)


def _batches(config, target) -> list[int]:
    if _BATCH.value:
        try:
            return [int(b) for b in _BATCH.value]
        except ValueError:
            raise targets.TargetError(f"--per_device_batch={','.join(_BATCH.value)}: expected integers") from None
    if config.batch_size % target.num_devices:
        raise targets.TargetError(
            f"config.batch_size={config.batch_size} does not divide over the {target.num_devices} devices of "
            f"{target.describe()}; pass --per_device_batch"
        )
    return [config.batch_size // target.num_devices]


# A row's process: JAX's platforms chosen before JAX is imported, as for the command itself.
_ROW_PROCESS = """import sys
from smallbig_jax import cli
cli.choose_jax_platforms(keep_cuda_compiler={keep_cuda})
from smallbig_jax.commands import compile
sys.exit(compile.compile_row(sys.argv[1], sys.argv[2]))
"""


def compile_each_in_a_child(config, target: targets.Target, batches: list[int], which: list[str]) -> list[aot.Compiled]:
    """`aot.compile_target`, each step at each batch in a Python process of its own. A row whose process crashed
    or raised comes back with `failure` saying how (the process's own output went to this stderr)."""
    aot.check_batches(config, batches)
    aot.require_compiler(target)
    env = {**os.environ, cli.DEBUG_ENV: "1"} if cli.debug_requested() else None
    results = []
    for b in batches:
        for step in which:
            with tempfile.TemporaryDirectory(prefix="smallbig_compile_") as folder:
                spec, out = os.path.join(folder, "spec.pkl"), os.path.join(folder, "row.pkl")
                with open(spec, "wb") as f:
                    pickle.dump((config, target, b, step), f)
                start = time.perf_counter()
                code = _ROW_PROCESS.format(keep_cuda=target.platform != "tpu")
                status = subprocess.run([sys.executable, "-c", code, spec, out], env=env).returncode
                row = None
                if os.path.exists(out):
                    with open(out, "rb") as f:
                        row = pickle.load(f)
            if isinstance(row, aot.Compiled):
                results.append(row)
                continue
            if row is None:
                died = f"signal {signal.Signals(-status).name}" if status < 0 else f"exit status {status}"
                row = f"the compiler's process died ({died}); its output is above"
            print(f"  failed: {row}", file=sys.stderr)
            results.append(aot.failed_row(config, target, step, b, time.perf_counter() - start, row))
    return results


def compile_row(spec_path: str, out_path: str) -> int:
    """A row's process: one step at one batch, its `aot.Compiled` (or the error's first line, exit status 1)
    pickled to `out_path`."""
    with open(spec_path, "rb") as f:
        config, target, batch, step = pickle.load(f)
    try:
        (row,) = aot.compile_target(config, target, [batch], [step], log=lambda m: print(m, file=sys.stderr))
    except Exception as error:
        if cli.debug_requested():
            traceback.print_exc()
        row = f"{type(error).__name__}: {(str(error).splitlines() or [''])[0]}"
    with open(out_path, "wb") as f:
        pickle.dump(row, f)
    return 0 if isinstance(row, aot.Compiled) else 1


def main() -> int | None:
    config = cli.config_value(_CONFIG)
    if config is None:
        raise targets.TargetError("--config is required: the config whose steps are compiled")
    if not _TARGET.value:
        raise targets.TargetError(f"--target is required; known: {', '.join(targets.known_targets())}")
    target = targets.parse_target(_TARGET.value, _SLICES.value, _HOSTS.value)
    which = [s.strip() for s in _STEPS.value]
    if not which or set(which) - {"train", "eval"}:
        raise targets.TargetError(f"--steps={','.join(which)}: expected train, eval or both")
    batches = _batches(config, target)
    results = compile_each_in_a_child(config, target, batches, which)
    record = aot.report(config, target, results, " ".join(["smallbig-jax", *sys.argv[1:]]))
    table = aot.markdown(record)
    print(table)
    print(json.dumps(record))
    if _MARKDOWN.value:
        pathlib.Path(_MARKDOWN.value).write_text(table + "\n")
    if _RESULTS.value:
        path = pathlib.Path(_RESULTS.value)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(json.dumps(record) + "\n")
    if _HLO_DIR.value:
        folder = pathlib.Path(_HLO_DIR.value)
        folder.mkdir(parents=True, exist_ok=True)
        for r in results:
            (folder / f"{target.name}_{r.step}_{r.per_device_batch}.hlo.txt").write_text(r.hlo_text)
    for r in results:
        if r.failure:
            print(f"failed: the {r.step} step at {r.per_device_batch} clips per device: {r.failure}", file=sys.stderr)
    unfit = [r for r in results if not r.fits and not r.failure]
    for r in unfit:
        print(
            f"does not fit: the {r.step} step at {r.per_device_batch} clips per device needs "
            f"{r.memory['total'] / aot.GIB:.2f} GiB per device; {target.facts.name} has "
            f"{r.device_bytes / aot.GIB:.1f} GiB",
            file=sys.stderr,
        )
    return 1 if unfit or any(r.failure for r in results) else 0
