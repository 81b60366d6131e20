"""Accelerators by name, without their hardware: the one table of device facts (peak FLOP/s, memory and its
bandwidth, with where each number comes from) and the targets `smallbig-jax compile` builds devices for.

A target is a TPU slice (`v5e-16`, `v5p-128`, ...; its chip grid and chips per host are written once, in `TPU_SLICES`)
or a server of 8 NVIDIA GPUs (`h100x8`, ...), on one or several slices (`num_slices`) or hosts (`num_hosts`).
No JAX here: the command line reads target names before it chooses JAX's platforms. The compilers make the
target's devices in `aot.target_devices`.

Naming as Google Cloud names slices: v5e and v6e slices count chips (`v5e-8`: 8 chips); v4 and v5p slices count
TensorCores, two per chip (`v5p-8`: 4 chips, `v5p-128`: 64 chips).
"""

from __future__ import annotations

import dataclasses

from smallbig_jax.errors import ConfigError


class TargetError(ConfigError):
    """An unknown target, a slice/host count it does not allow, or its compiler not installed."""


@dataclasses.dataclass(frozen=True)
class DeviceFacts:
    """What a roofline and a memory check need of one accelerator (one TPU chip, one GPU), with sources."""

    name: str
    device_kinds: tuple[str, ...]  # what jax's `device.device_kind` reports for it
    peak_flops: dict[str, float]  # dense FLOP/s per device by compute dtype (matrix units)
    hbm_bytes: int  # device memory
    hbm_bandwidth: float  # bytes/s
    source: str
    # The GpuTargetConfigProto fields that differ between GPUs (XLA's own per-device target configs); None for TPUs.
    gpu: dict | None = None


_TPU_DOCS = "cloud.google.com/tpu/docs/{} (system architecture: per-chip peak bf16, HBM capacity and bandwidth)"
_XLA_SPEC = "openxla/xla xla/tools/hlo_opt/gpu_specs/{} (read via its fork fractalyze/zkx)"

# The one table of device facts. Peak FLOP/s are dense (no sparsity); float32 on TPUs runs on the bf16 matrix units
# (the default matmul precision), on NVIDIA GPUs as TF32.
# The compute fields of XLA's target config for the Hopper SXM die, which the H100 and the H200 share.
_HOPPER_SXM = dict(
    cc=(9, 0),
    core_count=132,
    fpus_per_core=128,
    shared_memory_per_core=233472,
    shared_memory_per_block_optin=232448,
    l2_cache_size=52428800,
    clock_rate_ghz=1.98,
)  # fmt: skip


DEVICES: dict[str, DeviceFacts] = {
    "tpu_v4": DeviceFacts(
        "TPU v4", ("TPU v4",), {"bfloat16": 275e12, "float32": 275e12}, 32 * 2**30, 1200e9, _TPU_DOCS.format("v4")
    ),
    "tpu_v5e": DeviceFacts(
        "TPU v5e",
        ("TPU v5 lite", "TPU v5e"),
        {"bfloat16": 197e12, "float32": 197e12},
        16 * 2**30,
        819e9,
        _TPU_DOCS.format("v5e"),
    ),
    "tpu_v5p": DeviceFacts(
        "TPU v5p",
        ("TPU v5", "TPU v5p"),
        {"bfloat16": 459e12, "float32": 459e12},
        95 * 2**30,
        2765e9,
        _TPU_DOCS.format("v5p"),
    ),
    "tpu_v6e": DeviceFacts(
        "TPU v6e",
        ("TPU v6 lite", "TPU v6e"),
        {"bfloat16": 918e12, "float32": 918e12},
        32 * 2**30,
        1640e9,
        _TPU_DOCS.format("v6e"),
    ),
    "a100": DeviceFacts(
        "NVIDIA A100 80GB SXM",
        ("NVIDIA A100-SXM4-80GB",),
        {"bfloat16": 312e12, "float16": 312e12, "float32": 156e12},
        85100068864,
        2039040000000,
        "peaks: NVIDIA A100 datasheet; memory and bandwidth: " + _XLA_SPEC.format("a100_sxm_80.txtpb"),
        gpu=dict(
            cc=(8, 0),
            core_count=108,
            fpus_per_core=64,
            shared_memory_per_core=167936,
            shared_memory_per_block_optin=166912,
            l2_cache_size=41943040,
            clock_rate_ghz=1.41,
        ),  # fmt: skip
    ),
    "h100": DeviceFacts(
        "NVIDIA H100 SXM",
        ("NVIDIA H100 80GB HBM3",),
        {"bfloat16": 989e12, "float16": 989e12, "float32": 494e12},
        84978434048,
        3352320000000,
        "peaks: NVIDIA H100 datasheet (SXM); memory and bandwidth: " + _XLA_SPEC.format("h100_sxm.txtpb"),
        gpu=_HOPPER_SXM,
    ),
    "h200": DeviceFacts(
        "NVIDIA H200 SXM",
        ("NVIDIA H200",),
        {"bfloat16": 989e12, "float16": 989e12, "float32": 494e12},
        141 * 10**9,
        4.8e12,
        "NVIDIA H200 datasheet (141 GB, 4.8 TB/s; the H100's Hopper die, so H100's compute fields)",
        gpu=_HOPPER_SXM,
    ),
    "b200": DeviceFacts(
        "NVIDIA B200",
        ("NVIDIA B200",),
        {"bfloat16": 2250e12, "float16": 2250e12, "float32": 1100e12},
        180 * 10**9,
        8e12,
        "NVIDIA HGX B200 datasheet (dense bf16 2.25 PFLOP/s, 180 GB, 8 TB/s per GPU); 148 SMs, sm_100",
        gpu=dict(
            cc=(10, 0),
            core_count=148,
            fpus_per_core=128,
            shared_memory_per_core=233472,
            shared_memory_per_block_optin=232448,
            l2_cache_size=132644864,
            clock_rate_ghz=1.965,
        ),  # fmt: skip
    ),
}


def device_facts_for_kind(device_kind: str) -> DeviceFacts | None:
    """The facts of a device by the `device_kind` jax reports (e.g. "TPU v5 lite"), or None."""
    for facts in DEVICES.values():
        if device_kind in facts.device_kinds:
            return facts
    return None


def gpu_target_config(facts: DeviceFacts) -> str:
    """The GpuTargetConfigProto text the CUDA compiler takes for `facts`' GPU (the fields common to every recent
    NVIDIA GPU, then those of the device)."""
    g = facts.gpu
    major, minor = g["cc"]
    fields = {
        "threads_per_block_limit": 1024,
        "threads_per_warp": 32,
        "shared_memory_per_block": 49152,
        "shared_memory_per_core": g["shared_memory_per_core"],
        "threads_per_core_limit": 2048,
        "core_count": g["core_count"],
        "fpus_per_core": g["fpus_per_core"],
        "block_dim_limit_x": 2147483647,
        "block_dim_limit_y": 65535,
        "block_dim_limit_z": 65535,
        "memory_bandwidth": int(facts.hbm_bandwidth),
        "l2_cache_size": g["l2_cache_size"],
        "clock_rate_ghz": g["clock_rate_ghz"],
        "device_memory_size": facts.hbm_bytes,
        "shared_memory_per_block_optin": g["shared_memory_per_block_optin"],
        "registers_per_core_limit": 65536,
        "registers_per_block_limit": 65536,
    }
    body = "\n".join(f"  {k}: {v}" for k, v in fields.items())
    cc = f"  cuda_compute_capability {{ major: {major} minor: {minor} }}"
    return (
        f'gpu_device_info {{\n{body}\n{cc}\n}}\nplatform_name: "CUDA"\n'
        f'device_description_str: "{facts.device_kinds[0]}"\n'
    )


# --- Targets ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TpuGeneration:
    device: str  # key of DEVICES
    cores_per_chip: int  # TensorCores per chip the slice name counts (v4, v5p: 2; v5e, v6e: 1)
    topology_prefix: str  # libtpu's topology name: "<prefix>:<grid>"
    grids: dict[int, tuple[int, ...]]  # chips in the slice -> chip grid
    host_bounds: dict[int, tuple[int, int, int]]  # chips in the slice -> chips per host (x, y, z)
    cloud_type: str  # Google Cloud's accelerator type prefix: "<cloud_type>-<count>" (v5e: v5litepod-8)


_4_PER_HOST = (2, 2, 1)
_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16), 256: (16, 16)}
_2D_HOSTS = {1: (1, 1, 1), 4: (2, 2, 1), 8: (2, 4, 1)}  # single-host slices; larger ones have 4 chips per host
_3D = {
    4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4), 128: (4, 4, 8), 256: (4, 8, 8),
    512: (8, 8, 8), 1024: (8, 8, 16),
}  # fmt: skip

# Slice shapes and hosts as Google Cloud TPU's documentation lists them (v4, v5e, v5p, v6e pages).
TPU_SLICES: dict[str, TpuGeneration] = {
    "v4": TpuGeneration("tpu_v4", 2, "v4", _3D, {}, "v4"),
    "v5p": TpuGeneration("tpu_v5p", 2, "v5p", _3D, {}, "v5p"),
    "v5e": TpuGeneration("tpu_v5e", 1, "v5e", _2D, _2D_HOSTS, "v5litepod"),
    "v6e": TpuGeneration("tpu_v6e", 1, "v6e", _2D, _2D_HOSTS, "v6e"),
}
GPU_SERVERS: dict[str, str] = {"a100x8": "a100", "h100x8": "h100", "h200x8": "h200", "b200x8": "b200"}
GPUS_PER_SERVER = 8


@dataclasses.dataclass(frozen=True)
class Target:
    """A named target: `num_slices` TPU slices of `grid` chips, or `num_hosts` servers of 8 GPUs."""

    name: str
    platform: str  # "tpu" or "gpu"
    facts: DeviceFacts
    num_devices: int  # over every slice / host
    num_slices: int = 1
    num_hosts: int = 1  # GPU servers; for TPUs the hosts per slice
    grid: tuple[int, ...] = ()
    host_bounds: tuple[int, int, int] = (1, 1, 1)
    topology: str = ""
    accelerator_type: str = ""  # TPU: Google Cloud's name of one slice (v5litepod-8)

    def describe(self) -> str:
        if self.platform == "tpu":
            slices = f"{self.num_slices} slices of " if self.num_slices > 1 else ""
            grid = "x".join(map(str, self.grid))
            hosts = f"{self.num_hosts} host{'s' if self.num_hosts > 1 else ''}"
            return f"{slices}{self.name} ({grid} chips, {hosts} per slice; {self.facts.name})"
        return f"{self.num_hosts} x {self.name} ({self.num_devices} x {self.facts.name})"


def known_targets() -> list[str]:
    names = []
    for gen, g in TPU_SLICES.items():
        names += [f"{gen}-{chips * g.cores_per_chip}" for chips in g.grids]
    return names + list(GPU_SERVERS)


def parse_target(name: str, num_slices: int = 1, num_hosts: int = 1) -> Target:
    """The `Target` named `name` (`known_targets()`), on `num_slices` slices (TPU) or `num_hosts` servers (GPU)."""
    if num_slices < 1 or num_hosts < 1:
        raise TargetError(f"--num_slices={num_slices}, --num_hosts={num_hosts}: expected positive counts")
    key = name.lower()
    if key in GPU_SERVERS:
        if num_slices != 1:
            raise TargetError(f"{name} is a GPU server: use --num_hosts for several, not --num_slices")
        facts = DEVICES[GPU_SERVERS[key]]
        return Target(key, "gpu", facts, GPUS_PER_SERVER * num_hosts, num_hosts=num_hosts)
    gen, _, count = key.partition("-")
    g = TPU_SLICES.get(gen)
    chips = int(count) // g.cores_per_chip if g is not None and count.isdigit() else None
    if g is None or chips not in g.grids or int(count) % g.cores_per_chip:
        raise TargetError(f"unknown target {name!r}; known: {', '.join(known_targets())}")
    if num_hosts != 1:
        raise TargetError(f"{name} is a TPU slice (its hosts are fixed): use --num_slices for several slices")
    grid = g.grids[chips]
    bounds = g.host_bounds.get(chips, _4_PER_HOST)
    hosts = chips // (bounds[0] * bounds[1] * bounds[2])
    topology = f"{g.topology_prefix}:{'x'.join(map(str, grid))}"
    return Target(
        key, "tpu", DEVICES[g.device], chips * num_slices, num_slices, hosts, grid, bounds, topology,
        f"{g.cloud_type}-{count}",
    )  # fmt: skip
