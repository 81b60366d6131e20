"""Compile the project's train and eval steps for a TPU or GPU target without its hardware, and read the result.

What is compiled is what training and evaluation run: `steps.make_train_step` and `steps.make_eval_step` of the
config (formulation, dtype, `params_sharding`, `batchnorm`, `grad_accum_steps`, EMA, `remat`), on the target's mesh
(`sharding.make_mesh`; several TPU slices: the 'slice' axis outermost), with the state's shapes from
`steps.abstract_train_state`: nothing is allocated or run. For each per-device batch it reports, per step:

- **memory per device** from XLA's memory analysis of the compiled program: arguments, outputs (less what aliases the
  donated state), temporaries and code, their total against the device's memory (`targets.DEVICES`): fits or not;
- **FLOPs per device**, XLA's cost analysis of the compiled (partitioned) program beside the analytic count: 2 FLOPs
  per multiply-accumulate of `summary` (convs and the classifier), times 3 for a train step (the backward pass costs
  about twice the forward). XLA counts every op and leaves out taps on zero padding; remat adds its recomputation;
- **collectives** of the compiled program by kind (static count: an op inside a loop counts once), with the bytes of
  the whole array each works on per device (an all-gather's result, a reduce-scatter's operand, an all-reduce's
  array) and the size of its device groups, parsed from the compiled HLO text; with several TPU slices, the sends
  between slices over the data-centre network too (`dcn-send`, bytes sent per device);
- a **roofline bound**: step time >= max(FLOPs / peak FLOP/s, bytes accessed / memory bandwidth), and the clips/s
  per device ceiling it implies. It is analysis of the compiled program, never a measured speed;
- **compile seconds** on this machine.

The command (`smallbig_jax.commands.compile`) compiles each step and batch in a process of its own: a compiler
that crashes (libtpu 0.0.42.1 on v6e-8, docs/aot.md) or raises loses that row only, which the table reports as
failed, and the memory of one compile is returned before the next.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx
from jax.experimental import topologies

from smallbig_jax import sharding, steps
from smallbig_jax.optim import learning_rate_schedule, make_optimizer
from smallbig_jax.summary import count_macs
from smallbig_jax.tools.harness import STEPS_PER_EPOCH
from smallbig_jax.tools.targets import GPUS_PER_SERVER, Target, TargetError, gpu_target_config

GIB = 2**30
INSTALL_AOT = "pip install -e '.[aot]' (the TPU and CUDA compilers; README.md#before-you-rent-a-pod)"
STEPS = ("train", "eval")

# --- Reading the compiled HLO text ------------------------------------------------------------------------------

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_BYTES = {
    "pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
    "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "f8e4m3fn": 1, "f8e5m2": 1,
}  # fmt: skip
_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([0-9,]*)\]")
_OP = re.compile(r"=\s*(?P<result>.*?)\s(?P<op>" + "|".join(COLLECTIVES) + r")(?P<start>-start)?\(")
_GROUPS_LIST = re.compile(r"replica_groups=\{\{([0-9,]*)\}")
_GROUPS_IOTA = re.compile(r"replica_groups=\[([0-9,]+)\]<=")
_GROUPS_MESH = re.compile(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}")  # mesh['axis_0'=4,...] {'axis_0'}
# Several TPU slices: libtpu moves data between slices as host-transfer sends that the multi-slice runtime carries
# over the data-centre network. A send names the slices it goes to (`dcn_collective_permute_send`) or, as one part of
# an all-reduce over slices, the slices it joins (`_xla_megascale_target="{1,2}x{0:3}"` for two slices of 4 chips).
DCN = "dcn-send"
_DCN_SEND = re.compile(r"=\s*(?P<result>.*?)\ssend\(.*xla_megascale_runtime")
_DCN_SLICES = re.compile(r'"non_source_slice_ids":\[([0-9,]*)\]')
_DCN_ALL_REDUCE_SLICES = re.compile(r'_xla_megascale_target="\{([0-9,]+)\}x')


def arrays_bytes(text: str) -> list[int]:
    """Bytes of each array shape written in `text` (`bf16[8,56,56,64]{...}`; a tuple gives several)."""
    out = []
    for dtype, dims in _ARRAY.findall(text):
        if dtype in _BYTES:
            n = 1
            for d in filter(None, dims.split(",")):
                n *= int(d)
            out.append(n * _BYTES[dtype])
    return out


def group_size(line: str) -> int | None:
    """Devices in each group of a collective: `replica_groups={{0,1,2,3},...}`, the iota form `[2,4]<=[8]` or the
    mesh form `mesh['axis_0'=4,'axis_1'=2] {'axis_0'}` (None: not written, every device)."""
    if m := _GROUPS_LIST.search(line):
        return len(m.group(1).split(","))
    if m := _GROUPS_IOTA.search(line):
        return int(m.group(1).split(",")[-1])
    if m := _GROUPS_MESH.search(line):
        sizes = dict(re.findall(r"'([^']+)'=(\d+)", m.group(1)))
        size = 1
        for axis in re.findall(r"'([^']+)'", m.group(2)):
            size *= int(sizes.get(axis, 1))
        return size
    return None


def _full_bytes(kind: str, start: bool, result: list[int], size: int) -> int:
    """Bytes of the whole array a collective works on per device, from its result shapes (operands are not always
    written with their shapes). An asynchronous `-start` returns (operands, outputs[, context])."""
    if start and kind != "all-reduce":
        half = len(result) // 2 if kind != "collective-permute" else 1
        ins, outs = result[:half], result[half : 2 * half]
        return sum(outs) if kind == "all-gather" else sum(ins)
    return sum(result) * (size if kind == "reduce-scatter" else 1)


@dataclasses.dataclass
class Collective:
    kind: str
    bytes: int  # the whole array it works on, per device
    group_size: int | None  # devices per group (None: every device, or not written)
    line: str


def collectives(hlo_text: str) -> list[Collective]:
    """Every collective of a compiled HLO module's text (synchronous ops and the `-start` of asynchronous ones), and
    each send to other slices (kind `DCN`, its group the slices it joins: the sender and those it names, or the
    slices of the all-reduce it is part of)."""
    found = []
    for line in hlo_text.splitlines():
        if m := _DCN_SEND.search(line):
            if (slices := _DCN_SLICES.search(line)) and slices.group(1):
                size = len(slices.group(1).split(",")) + 1
            elif slices := _DCN_ALL_REDUCE_SLICES.search(line):
                size = len(slices.group(1).split(","))
            else:
                size = None
            found.append(Collective(DCN, arrays_bytes(m.group("result"))[0], size, line.strip()))
            continue
        m = _OP.search(line)
        if m is None:
            continue
        kind, size = m.group("op"), group_size(line)
        result = arrays_bytes(m.group("result"))
        nbytes = _full_bytes(kind, bool(m.group("start")), result, size or 1)
        found.append(Collective(kind, nbytes, size, line.strip()))
    return found


def collectives_by_kind(found: Sequence[Collective]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for c in found:
        entry = out.setdefault(c.kind, {"count": 0, "bytes": 0, "group_sizes": []})
        entry["count"] += 1
        entry["bytes"] += c.bytes
        if c.group_size is not None and c.group_size not in entry["group_sizes"]:
            entry["group_sizes"].append(c.group_size)
    return out


# --- Compiling --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Compiled:
    """One compiled step at one per-device batch, and what was read from it."""

    step: str
    per_device_batch: int
    compile_s: float
    memory: dict[str, int]  # arguments, outputs, aliased, temporaries, code, total (bytes per device)
    device_bytes: int
    xla_flops: float | None
    xla_bytes_accessed: float | None
    analytic_flops: float
    collectives: dict[str, dict[str, Any]]
    peak_flops: float
    hbm_bandwidth: float
    hlo_text: str = dataclasses.field(repr=False, default="")
    out_of_memory: str = ""  # the compiler's own refusal, when it found the program larger than the device
    failure: str = ""  # the compiler crashed or raised (the command's process for this row): nothing else is known

    @property
    def fits(self) -> bool:
        return not (self.out_of_memory or self.failure) and self.memory["total"] <= self.device_bytes

    @property
    def roofline_s(self) -> float:
        flops = self.xla_flops if self.xla_flops else self.analytic_flops
        compute = flops / self.peak_flops
        memory = (self.xla_bytes_accessed or 0.0) / self.hbm_bandwidth
        return max(compute, memory)

    @property
    def bound(self) -> str:
        flops = self.xla_flops if self.xla_flops else self.analytic_flops
        return (
            "memory" if (self.xla_bytes_accessed or 0.0) / self.hbm_bandwidth > flops / self.peak_flops else "compute"
        )

    def record(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "per_device_batch": self.per_device_batch,
            "compile_s": round(self.compile_s, 1),
            "memory_bytes": self.memory,
            "device_bytes": self.device_bytes,
            "fits": self.fits,
            "xla_flops": self.xla_flops,
            "xla_bytes_accessed": self.xla_bytes_accessed,
            "analytic_flops": self.analytic_flops,
            "collectives": self.collectives,
            "roofline_s": self.roofline_s,
            "bound": self.bound,
            "clips_per_s_per_device_ceiling": self.per_device_batch / self.roofline_s,
            "out_of_memory": self.out_of_memory,
            "failure": self.failure,
        }


def _memory(compiled) -> dict[str, int]:
    m = compiled.memory_analysis()
    out = {
        "arguments": int(m.argument_size_in_bytes),
        "outputs": int(m.output_size_in_bytes),
        "aliased": int(m.alias_size_in_bytes),
        "temporaries": int(m.temp_size_in_bytes),
        "code": int(m.generated_code_size_in_bytes),
    }
    out["total"] = out["arguments"] + out["outputs"] - out["aliased"] + out["temporaries"] + out["code"]
    return out


_OOM = re.compile(r"required for HLO temporaries \(([\d.]+)G\) exceeds available HBM \(([\d.]+)G\)")


def _out_of_memory(error: Exception, device_bytes: int) -> tuple[dict[str, int], int] | None:
    """(memory, usable device bytes) from the TPU compiler's refusal of a program larger than the device, or None
    for any other error. It says how much the temporaries need and how much of the device it can use (GiB)."""
    m = _OOM.search(str(error))
    if "RESOURCE_EXHAUSTED" not in str(error) or m is None:
        return None
    temporaries, usable = (int(float(g) * GIB) for g in m.groups())
    memory = {"arguments": 0, "outputs": 0, "aliased": 0, "temporaries": temporaries, "code": 0, "total": temporaries}
    return memory, min(usable, device_bytes)


def _cost(compiled, lowered) -> tuple[float | None, float | None]:
    """XLA's FLOPs and bytes accessed of the compiled program, or of the lowered one where the compiler gives none
    (the CUDA compiler without a GPU)."""
    for source in (compiled, lowered):
        if source is None:
            continue
        try:
            cost = source.cost_analysis()
        except Exception:  # noqa: BLE001 - a compiler without cost analysis
            cost = None
        if isinstance(cost, list):
            cost = cost[0] if cost else None
        if cost and cost.get("flops"):
            return float(cost["flops"]), float(cost.get("bytes accessed", 0.0)) or None
    return None, None


def macs_per_clip(config: ml_collections.ConfigDict) -> int:
    """Multiply-accumulates of one clip's forward pass (`summary`'s count) at the config's input shape."""
    model = nnx.eval_shape(lambda: steps.model_from_config(config))
    graphdef, state = nnx.split(model)
    shape = (1, config.data.num_frames, config.data.crop_size, config.data.crop_size, 3)
    forward = lambda state, clips: nnx.merge(graphdef, state)(clips)  # noqa: E731
    return count_macs(jax.make_jaxpr(forward)(state, jax.ShapeDtypeStruct(shape, jnp.float32)).jaxpr)


def _abstract(tree, shardings):
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings)


def require_compiler(target: Target) -> None:
    """`TargetError` saying how to install it when the compiler for `target`'s platform is missing."""
    module, what = (
        ("libtpu", "the TPU compiler (libtpu)")
        if target.platform == "tpu"
        else ("jax_plugins.xla_cuda12", "the CUDA compiler (jax-cuda12-plugin, jax-cuda12-pjrt)")
    )
    if importlib.util.find_spec(module) is None:
        raise TargetError(f"{what} is not installed; install the aot extra: {INSTALL_AOT}")


def target_devices(target: Target) -> list:
    """Compile-only devices of `target`, every slice's or host's, in the compiler's order."""
    require_compiler(target)
    if target.platform == "tpu":
        # Compiling only: several processes (pytest workers, two compiles) may load libtpu side by side. libtpu reads
        # the TPU VM it runs on from these variables (a TPU VM sets them) and warns without them: name the target.
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
        os.environ.setdefault("TPU_ACCELERATOR_TYPE", target.accelerator_type)
        os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
        topology = topologies.get_topology_desc(
            platform="tpu",
            topology_name=target.topology,
            chip_config_name="default",
            chips_per_host_bounds=target.host_bounds,
            num_slices=target.num_slices,
        )
    else:
        topology = topologies.get_topology_desc(
            target.name,
            "cuda",
            target_config=gpu_target_config(target.facts),
            topology=f"1x{target.num_hosts}x{GPUS_PER_SERVER}",
        )
    devices = list(topology.devices)
    if len(devices) != target.num_devices:
        raise RuntimeError(f"{target.describe()}: the compiler made {len(devices)} devices")
    return devices


def _peak_flops(config: ml_collections.ConfigDict, target: Target) -> float:
    """The device's peak FLOP/s in the config's compute dtype (bfloat16's where the table has no other)."""
    dtype = config.model.dtype if config.model.dtype in target.facts.peak_flops else "bfloat16"
    return target.facts.peak_flops[dtype]


def _analytic_flops(macs_per_clip: int, step: str, batch: int) -> float:
    """2 FLOPs per multiply-accumulate per clip; a train step 3 times the forward (the backward costs about 2)."""
    return float(2 * macs_per_clip * batch * (3 if step == "train" else 1))


def check_batches(config: ml_collections.ConfigDict, per_device_batches: Sequence[int]) -> None:
    """`TargetError` for a per-device batch that the config's micro-batches do not split."""
    k = config.grad_accum_steps
    for b in per_device_batches:
        if b < 1 or b % k:
            raise TargetError(f"per-device batch {b}: expected a positive multiple of grad_accum_steps={k}")


def compile_target(
    config: ml_collections.ConfigDict,
    target: Target,
    per_device_batches: Sequence[int],
    which: Sequence[str] = STEPS,
    log=print,
) -> list[Compiled]:
    """Compiles the config's `which` steps for `target` at each per-device batch (each checked against the config
    first: `TargetError` for a batch the config's micro-batches do not split)."""
    check_batches(config, per_device_batches)
    mesh = sharding.make_mesh(target_devices(target), num_slices=target.num_slices)
    peak = _peak_flops(config, target)
    macs = macs_per_clip(config)
    tx = make_optimizer(config, STEPS_PER_EPOCH)
    lr = learning_rate_schedule(config, STEPS_PER_EPOCH)
    graphdef, eval_graphdef = steps.model_graphdefs(config, mesh)
    abstract, shardings = steps.abstract_train_state(config, mesh, tx)
    state = _abstract(abstract, shardings)
    train_step = steps.make_train_step(graphdef, tx, config, mesh, shardings, lr)
    eval_step = steps.make_eval_step(eval_graphdef, mesh, steps.formulation(config, mesh))
    eval_params = state["ema_params"] if config.ema_decay else state["params"]
    batch_sharding = sharding.batch_sharding(mesh)
    frames, size = config.data.num_frames, config.data.crop_size
    results = []
    for b in per_device_batches:
        n = b * mesh.size
        clips = jax.ShapeDtypeStruct(
            (n, frames, size, size, 3), getattr(jnp, config.data.dtype), sharding=batch_sharding
        )
        labels = jax.ShapeDtypeStruct((n,), jnp.int32, sharding=batch_sharding)
        for step in which:
            log(f"compiling the {step} step, {b} clips per device, for {target.describe()} ...")
            start = time.perf_counter()
            if step == "train":
                lowered = train_step.lower(state, {"clip": clips, "label": labels})
            else:
                lowered = eval_step.lower(eval_params, state["batch_stats"], clips)
            device_bytes, refusal = target.facts.hbm_bytes, ""
            try:
                compiled = lowered.compile()
                memory, text = _memory(compiled), compiled.as_text()
            except jax.errors.JaxRuntimeError as error:
                if (oom := _out_of_memory(error, device_bytes)) is None:
                    raise
                (memory, device_bytes), compiled, text = oom, None, ""
                refusal = str(error).splitlines()[0]
            seconds = time.perf_counter() - start
            flops, bytes_accessed = _cost(compiled, lowered)
            results.append(
                Compiled(
                    step,
                    b,
                    seconds,
                    memory,
                    device_bytes,
                    flops,
                    bytes_accessed,
                    _analytic_flops(macs, step, b),
                    collectives_by_kind(collectives(text)),
                    peak,
                    target.facts.hbm_bandwidth,
                    text,
                    refusal,
                )
            )
            log(f"  {seconds:.1f} s; {results[-1].memory['total'] / GIB:.2f} GiB per device")
    return results


def failed_row(
    config: ml_collections.ConfigDict, target: Target, step: str, batch: int, seconds: float, failure: str
) -> Compiled:
    """The row of a step whose compile failed (`failure` says how): the analytic FLOPs, nothing measured."""
    return Compiled(
        step,
        batch,
        seconds,
        {},
        target.facts.hbm_bytes,
        None,
        None,
        _analytic_flops(macs_per_clip(config), step, batch),
        {},
        _peak_flops(config, target),
        target.facts.hbm_bandwidth,
        failure=failure,
    )


def largest_fitting(results: Sequence[Compiled]) -> int | None:
    """The largest per-device batch at which every compiled step fits (None: none fits)."""
    batches = sorted({r.per_device_batch for r in results})
    fitting = [b for b in batches if all(r.fits for r in results if r.per_device_batch == b)]
    return fitting[-1] if fitting else None


# --- Reporting --------------------------------------------------------------------------------------------------


def _collectives_text(by_kind: dict[str, dict[str, Any]]) -> str:
    if not by_kind:
        return "none"
    parts = []
    for kind, e in sorted(by_kind.items()):
        groups = "/".join(map(str, e["group_sizes"])) or "all"
        between = "point to point" if kind == "collective-permute" else f"groups of {groups}"
        parts.append(f"{kind} x{e['count']} {e['bytes'] / 1e6:.0f} MB ({between})")
    return "; ".join(parts)


def report(
    config: ml_collections.ConfigDict, target: Target, results: Sequence[Compiled], command: str
) -> dict[str, Any]:
    """The JSON record of one `smallbig-jax compile` run."""
    facts = target.facts
    return {
        "kind": "aot_compile",
        "label": "analysis of the compiled program (XLA memory and cost analysis), not a measured speed",
        "command": command,
        "target": target.name,
        "target_description": target.describe(),
        "num_devices": target.num_devices,
        "num_slices": target.num_slices,
        "num_hosts": target.num_hosts,
        "device": {
            "name": facts.name,
            "peak_flops": facts.peak_flops,
            "hbm_bytes": facts.hbm_bytes,
            "hbm_bandwidth": facts.hbm_bandwidth,
            "source": facts.source,
        },
        "model": {
            "variant": config.model.variant,
            "dtype": config.model.dtype,
            "param_dtype": config.model.param_dtype,
            "frames": config.data.num_frames,
            "crop_size": config.data.crop_size,
        },
        "params_sharding": config.params_sharding,
        "batchnorm": config.batchnorm,
        "remat": config.get("remat", "none"),
        "grad_accum_steps": config.grad_accum_steps,
        "largest_fitting_batch": largest_fitting(results),
        "rows": [r.record() for r in results],
        "jax": jax.__version__,
    }


def markdown(record: dict[str, Any]) -> str:
    """The markdown table of a `report` record (one row per step and batch)."""
    lines = [
        f"**{record['target_description']}**, {record['model']['variant']} {record['model']['frames']}x"
        f"{record['model']['crop_size']} {record['model']['dtype']}, params {record['params_sharding']}, remat "
        f"{record['remat']}: analysis of the compiled program, not a measured speed. `{record['command']}`",
        "",
        "| step | clips/device | args GiB | outputs GiB | temps GiB | total GiB | fits in | XLA TFLOP | analytic TFLOP "
        "| collectives (per device) | bound | roofline ms | clips/s/device ceiling | compile s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in record["rows"]:
        if r["failure"]:
            lines.append(
                f"| {r['step']} | {r['per_device_batch']} | - | - | - | - | **failed** | - | "
                f"{r['analytic_flops'] / 1e12:.2f} | - | - | - | - | {r['compile_s']:.0f} |"
            )
            continue
        m = r["memory_bytes"]
        fits = f"{'yes' if r['fits'] else '**no**'} ({r['device_bytes'] / GIB:.2f})"
        xla = f"{r['xla_flops'] / 1e12:.2f}" if r["xla_flops"] else "n/a"
        bound, roofline, ceiling = (
            ("-", "-", "-")  # a program the compiler refused has no cost analysis to bound
            if r["out_of_memory"]
            else (r["bound"], f"{r['roofline_s'] * 1e3:.1f}", f"{r['clips_per_s_per_device_ceiling']:.0f}")
        )
        lines.append(
            f"| {r['step']} | {r['per_device_batch']} | {m['arguments'] / GIB:.2f} | "
            f"{(m['outputs'] - m['aliased']) / GIB:.2f} | {m['temporaries'] / GIB:.2f} | {m['total'] / GIB:.2f} | "
            f"{fits} | {xla} | {r['analytic_flops'] / 1e12:.2f} | {_collectives_text(r['collectives'])} | "
            f"{bound} | {roofline} | {ceiling} | "
            f"{r['compile_s']:.0f} |"
        )
    lines += [
        f"\n{r['step']} step at {r['per_device_batch']}: the compiler refused it: {r['out_of_memory']}"
        for r in record["rows"]
        if r["out_of_memory"]
    ]
    lines += [
        f"\n{r['step']} step at {r['per_device_batch']}: failed: {r['failure']}" for r in record["rows"] if r["failure"]
    ]
    best = record["largest_fitting_batch"]
    lines += ["", f"Largest listed batch that fits: {best if best is not None else 'none'} clips per device."]
    return "\n".join(lines)
