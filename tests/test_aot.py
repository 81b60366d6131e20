"""`smallbig-jax compile`: the real train and eval steps compiled for a TPU slice and a GPU server without their
hardware (a tiny model), a batch too large for the device reported as not fitting, the multi-slice mesh, the
collectives read from the HLO text, and bad input. Needs the `aot` extra (`make setup` installs it)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re

import jax
import pytest
from flax import nnx
from helpers import REPO, run_cli, run_python

from smallbig_jax import cli, commands, sharding, steps
from smallbig_jax.tools import aot, targets

# SmallBig-23 of width 4 on 2 frames of 32x32: the structure of the real model, compiled in seconds. A file, not
# --config.<field> overrides: ml_collections defines those flags from sys.argv when a command module is imported.
TINY_CONFIG = """
from smallbig_jax.config import official_recipe


def get_config(arg=None):
    config = official_recipe(variant="smallbig23", num_classes=5, num_frames=2, sampling="dense")
    config.model.base_width, config.model.dtype = 4, "bfloat16"
    config.data.crop_size = config.data.scale_size = 32
    config.batch_size = 4
    args = (arg or "").split(",")
    if "8x224" in args:
        config.data.num_frames, config.data.crop_size, config.data.scale_size = 8, 224, 224
    if "accum2" in args:
        config.grad_accum_steps = 2
    return config
"""


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.py"
    path.write_text(TINY_CONFIG)
    return f"--config={path}"


def _status(args: list[str]) -> int:
    """Exit status of `smallbig-jax compile args`, run in this process (a user error exits through SystemExit)."""
    try:
        return commands.run("compile", args)
    except SystemExit as e:
        return e.code


def _tiny_config(**fields):
    from smallbig_jax.config import official_recipe

    config = official_recipe(variant="smallbig23", num_classes=5, num_frames=2, sampling="dense")
    config.model.base_width, config.model.dtype = 4, "bfloat16"
    config.data.crop_size = config.data.scale_size = 32
    for key, value in fields.items():
        config[key] = value
    return config


def test_the_aot_extra_is_installed():
    assert importlib.util.find_spec("libtpu"), "install the aot extra: pip install -e '.[aot]'"
    assert importlib.util.find_spec("jax_plugins.xla_cuda12"), "install the aot extra: pip install -e '.[aot]'"


def test_multislice_mesh_puts_the_slice_axis_outermost_and_the_gradient_reduction_spans_the_slices():
    """Two v5e-4 slices: the 'slice' axis first, each row of the mesh one slice, batches split over both axes. The
    compiled train step (replicated parameters) reduces the gradients over the 4 chips of a slice in XLA all-reduces,
    and across the slices in sends to the other slice over the data-centre network (libtpu's multi-slice runtime):
    every chip sends at least a bfloat16 copy of every parameter's gradient there. Also the CI's TPU compile."""
    target = targets.parse_target("v5e-4", num_slices=2)
    devices = aot.target_devices(target)
    mesh = sharding.make_mesh(devices, num_slices=2)
    assert mesh.axis_names == (sharding.SLICE, sharding.DATA) and mesh.devices.shape == (2, 4)
    assert [{d.slice_index for d in row} for row in mesh.devices] == [{0}, {1}]
    assert sharding.batch_sharding(mesh).spec[0] == (sharding.SLICE, sharding.DATA)
    config = _tiny_config()
    (train,) = aot.compile_target(config, target, [2], ["train"], log=lambda m: None)
    within = train.collectives["all-reduce"]
    assert within["group_sizes"] == [4], within
    across = train.collectives[aot.DCN]
    assert across["group_sizes"] == [2], across  # each send joins this slice and the other one
    params = jax.tree.leaves(nnx.state(nnx.eval_shape(lambda: steps.model_from_config(config)), nnx.Param))
    assert across["bytes"] >= 2 * sum(math.prod(p.shape) for p in params), across
    assert train.fits and train.xla_flops > 0 and train.memory["arguments"] > 0
    assert train.analytic_flops > 0 and train.roofline_s > 0


def test_the_pools_edge_padding_sends_nothing_between_chips():
    """The big views' max-pools pad each clip by its own edge: nothing to exchange between chips. Written with
    `jnp.pad(mode="edge")`, the tiny train step at 2 clips per v5e chip (the full-size one at 8 on v5e-256) had 13
    collective-permutes from the first chip to the last, made by the partitioner from the pad's transpose."""
    (train,) = aot.compile_target(_tiny_config(), targets.parse_target("v5e-8"), [2], ["train"], log=lambda m: None)
    assert set(train.collectives) == {"all-reduce"}, train.collectives


def test_gpu_server_compile_reports_memory_flops_and_collectives(capsys, tmp_path, tiny):
    """h100x8 through the command, train and eval steps: the table, the JSON record (appended to --results) and
    exit status 0."""
    results = tmp_path / "r.jsonl"
    args = [tiny, "--target=h100x8", "--per_device_batch=2", f"--results={results}"]
    assert commands.run("compile", args) == 0
    out = capsys.readouterr().out
    record = json.loads(results.read_text())
    assert record["target"] == "h100x8" and record["num_devices"] == 8
    assert record["device"]["name"] == "NVIDIA H100 SXM" and record["largest_fitting_batch"] == 2
    train, evaluation = record["rows"]
    assert (train["step"], evaluation["step"]) == ("train", "eval")
    assert train["fits"] and train["memory_bytes"]["total"] > evaluation["memory_bytes"]["total"] > 0
    assert train["collectives"]["all-reduce"]["group_sizes"] == [8]  # the gradients, summed over the 8 GPUs
    assert evaluation["collectives"]["all-gather"]["group_sizes"] == [8]  # the logits, replicated on the 8 GPUs
    for row in (train, evaluation):
        assert row["xla_flops"] is None  # the CUDA compiler gives no cost analysis without a GPU: the table says n/a
        assert row["analytic_flops"] > 0 and row["roofline_s"] > 0 and row["bound"] == "compute"
    assert train["analytic_flops"] > 2 * evaluation["analytic_flops"]  # forward and backward against forward
    assert "| train | 2 |" in out and "| eval | 2 |" in out and "analysis of the compiled program" in out


def test_a_batch_too_large_for_the_device_is_reported_as_not_fitting(capsys, tiny):
    """4096 clips of 8x224x224 per v5e chip (16 GiB): the float32 input alone is 18 GiB. The TPU compiler refuses the
    program (RESOURCE_EXHAUSTED, with what it needs): reported as not fitting, with a message and exit status 1."""
    args = [tiny + ":8x224", "--target=v5e-4", "--per_device_batch=4096", "--steps=eval"]
    assert commands.run("compile", args) == 1
    captured = capsys.readouterr()
    assert "**no**" in captured.out and "Largest listed batch that fits: none" in captured.out
    assert "does not fit: the eval step at 4096 clips per device needs" in captured.err
    assert "the compiler refused it: RESOURCE_EXHAUSTED" in captured.out  # the TPU compiler's own check, reported


# Loaded by the row processes of the test below (a `sitecustomize` on their PYTHONPATH): the compile of batch 2
# dies of SIGSEGV, as libtpu 0.0.42.1 does compiling for v6e-8; batch 4's raises.
FAULTY_COMPILER = """
import os, signal
from smallbig_jax.tools import aot

_compile_target = aot.compile_target


def compile_target(config, target, batches, which, log=print):
    if batches == [2]:
        os.kill(os.getpid(), signal.SIGSEGV)
    if batches == [4]:
        raise RuntimeError("INTERNAL: a compiler bug\\nits second line")
    return _compile_target(config, target, batches, which, log)


aot.compile_target = compile_target
"""


def test_a_compiler_that_crashes_or_raises_loses_its_row_only(capsys, tiny, tmp_path, monkeypatch):
    """Each row compiles in a process of its own: a crash or an error is that row's "failed", the other rows are
    whole, and the exit status is 1."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(FAULTY_COMPILER)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(hook), REPO]))
    args = [tiny, "--target=v5e-4", "--per_device_batch=1,2,4", "--steps=eval"]
    assert _status(args) == 1
    out, err = capsys.readouterr()
    assert re.search(r"\| eval \| 1 \| [\d.]+ \| .* \| yes \(", out), out
    assert "| eval | 2 | - | - | - | - | **failed** |" in out and "| eval | 4 | - | - | - | - | **failed** |" in out
    assert "eval step at 2: failed: the compiler's process died (signal SIGSEGV); its output is above" in out
    assert "eval step at 4: failed: RuntimeError: INTERNAL: a compiler bug" in out
    assert "Largest listed batch that fits: 1 clips per device." in out
    assert "failed: the eval step at 2 clips per device: the compiler's process died (signal SIGSEGV)" in err
    record = json.loads(out.strip().splitlines()[-1])
    assert [r["failure"] != "" for r in record["rows"]] == [False, True, True]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--target=v5e-3"], "unknown target 'v5e-3'; known: v4-8,"),
        (["--target=tpu9"], "h100x8"),
        (["--target=h100x8", "--num_slices=2"], "use --num_hosts"),
        (["--target=v5e-8", "--num_hosts=2"], "use --num_slices"),
        ([":accum2", "--target=v5e-8", "--per_device_batch=3"], "multiple of grad_accum_steps"),
        (["--target=v5e-8"], "config.batch_size=4 does not divide over the 8 devices"),
        (["--target=v5e-8", "--per_device_batch=x"], "expected integers"),
    ],
)
def test_bad_input_is_one_line_and_exit_status_2(capsys, tiny, args, message):
    if args[0].startswith(":"):
        tiny, args = tiny + args[0], args[1:]
    assert _status([tiny, *args]) == cli.EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err


@pytest.mark.parametrize("target, module", [("v5e-8", "libtpu"), ("a100x8", "jax_plugins.xla_cuda12")])
def test_a_missing_aot_extra_says_how_to_install_it(capsys, monkeypatch, tiny, target, module):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else find_spec(name, *a))
    assert _status([tiny, f"--target={target}", "--per_device_batch=1"]) == cli.EXIT_USER_ERROR
    assert "pip install -e '.[aot]'" in capsys.readouterr().err


def test_target_table():
    assert targets.parse_target("v5p-128").grid == (4, 4, 4)  # v5p names count TensorCores: 64 chips
    assert targets.parse_target("v5e-256", num_slices=2).num_devices == 512
    v5e16 = targets.parse_target("v5e-16")
    assert (v5e16.topology, v5e16.host_bounds, v5e16.num_hosts) == ("v5e:4x4", (2, 2, 1), 4)
    assert targets.parse_target("h100x8", num_hosts=2).num_devices == 16
    for facts in targets.DEVICES.values():  # one table, every number with its source
        assert facts.peak_flops["bfloat16"] > 0 and facts.hbm_bytes > 0 and facts.hbm_bandwidth > 0 and facts.source
    assert targets.device_facts_for_kind("TPU v5 lite").name == "TPU v5e"


def test_the_command_line_reads_target_names_from_the_table_before_jax_loads():
    """`compile` keeps the CUDA compiler out for TPU slices, decided by `targets`' table before JAX is imported."""
    code = (
        "import sys; from smallbig_jax.commands import _names_a_tpu_slice as tpu; "
        "print([tpu(a) for a in (['--target=v5p-128'], ['--target', 'v6e-8'], ['--target=h100x8'], "
        "['--target=v5e-3'], [])], 'jax' in sys.modules)"
    )
    assert run_python("-c", code).stdout.split() == ["[True,", "True,", "False,", "False,", "False]", "False"]


def test_collectives_are_read_from_the_hlo_text():
    """The forms XLA:GPU and the TPU compiler print: operands with or without shapes, replica groups as lists, iota
    or mesh axes, asynchronous -start ops returning (operands, outputs), sends to other TPU slices (both forms)."""
    hlo = """
  %all-reduce.1 = f32[64,3]{1,0} all-reduce(f32[64,3]{1,0} %p), channel_id=1, replica_groups=[1,8]<=[8], to_apply=%add
  %ag = bf16[8,16]{1,0} all-gather(bf16[2,16]{1,0} %q), replica_groups={{0,1,2,3},{4,5,6,7}}, dimensions={0}
  %rs-start = (f32[32]{0}, f32[8]{0}) reduce-scatter-start(f32[32]{0} %r), replica_groups={{0,1,2,3},{4,5,6,7}}
  %ar-done = f32[64,3]{1,0} all-reduce-done(f32[64,3]{1,0} %ar-start)
  %all-reduce.206 = s32[]{:T(128)} all-reduce(%fusion.1427), replica_groups=mesh['axis_0'=4,'axis_1'=2] {'axis_0'}
  %rs.2 = bf16[4,8]{1,0:T(8,128)(2,1)} reduce-scatter(%x), replica_groups=mesh['a'=2,'b'=4] {'a','b'}, dimensions={0}
  %cp = (bf16[1,64]{1,0}, bf16[1,64]{1,0}, u32[]{:S(2)}, u32[]{:S(2)}) collective-permute-start(%b), channel_id=9
  %send.1 = (bf16[2,32]{1,0:T(2,128)(2,1)}, u32[], token[]) send(%g, %after-all.1), is_host_transfer=true, \
frontend_attributes={_xla_host_transfer_handler_name="xla_megascale_runtime"}, \
backend_config={"customized_send_recv_config":{"dcn_collective_permute_send":{"non_source_slice_ids":[1,2,3]}}}
  %send.2 = (f32[4]{0}, u32[], token[]) send(%h, %after-all.2), channel_id=16, is_host_transfer=true
  %send.3 = (f32[3,8,128]{2,1,0:T(8,128)}, u32[], token[]) send(%i, %after-all.3), is_host_transfer=true, \
frontend_attributes={_xla_host_transfer_handler_name="xla_megascale_runtime",_xla_megascale_target="{1,2}x{0:3}",\
_xla_megascale_transfer_type="ALL_REDUCE"}
"""
    found = aot.collectives(hlo)
    assert [(c.kind, c.bytes, c.group_size) for c in found] == [
        ("all-reduce", 64 * 3 * 4, 8),
        ("all-gather", 8 * 16 * 2, 4),  # the gathered array
        ("reduce-scatter", 32 * 4, 4),  # the array before scattering
        ("all-reduce", 4, 4),
        ("reduce-scatter", 4 * 8 * 2 * 8, 8),
        ("collective-permute", 64 * 2, None),
        (aot.DCN, 2 * 32 * 2, 4),  # to the 3 other slices; a send to the host (the second) is not a collective
        (aot.DCN, 3 * 8 * 128 * 4, 2),  # one part of an all-reduce over slices 1 and 2
    ]
    by_kind = aot.collectives_by_kind(found)
    assert by_kind["all-reduce"] == {"count": 2, "bytes": 772, "group_sizes": [8, 4]}
    text = aot._collectives_text(by_kind)  # a permute's source-target pairs are not a group of all devices
    assert "all-reduce x2 0 MB (groups of 8/4)" in text and "collective-permute x1 0 MB (point to point)" in text


def test_other_commands_start_as_without_the_aot_extra():
    """On this CPU-only machine, with libtpu and the CUDA plugin installed, a command that imports JAX and the model
    prints nothing on stderr (no CUDA driver or TPU probe messages): `cli.choose_jax_platforms` leaves them out."""
    done = run_cli("summary", "--help", drop=["JAX_PLATFORMS"], timeout=300)
    assert done.returncode == 0 and "usage: smallbig-jax summary" in done.stdout
    assert done.stderr == ""
