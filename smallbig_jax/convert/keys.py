"""Official PyTorch state-dict names <-> Flax NNX state paths, for any SmallBigNet variant.

The table is derived from the JAX model's own structure (its flat `nnx.state`), so it follows the model for every
variant, depth, width and class count instead of being a hand-written list. Renames
(docs/model.md#state-dict-names-and-layout):

    NNX module path            official module          NNX leaf     official tensor
    big_bn1 / big_bn2 / big_bn3  big1.1 / big2.1 / big3.1  kernel       weight      (conv: THWIO <-> OITHW;
                                                                                     fc: [in,out] <-> [out,in])
    downsample.conv / .bn      downsample.0 / .1        scale        weight
    extra.reduce               big4_1                   bias         bias
    extra.expand / extra.bn    big4_2.0 / big4_2.1      mean / var   running_mean / running_var

Every BatchNorm also has a `num_batches_tracked` buffer in PyTorch; it carries no information for inference and
is ignored on import (and written as 0 on export).

Also here: the depth of each stage read from a state dict's keys, and a state dict held against the tensors a
target expects (`check_tensors`), for the official checkpoints and the torchvision ResNets alike.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from flax import nnx

from smallbig_jax.models import build_model

_MODULE_RENAMES = {
    "big_bn1": "big1.1",
    "big_bn2": "big2.1",
    "big_bn3": "big3.1",
}
_PAIR_RENAMES = {
    ("downsample", "conv"): "downsample.0",
    ("downsample", "bn"): "downsample.1",
    ("extra", "reduce"): "big4_1",
    ("extra", "expand"): "big4_2.0",
    ("extra", "bn"): "big4_2.1",
}
_LEAF_RENAMES = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


@dataclasses.dataclass(frozen=True)
class KeySpec:
    """One tensor: its official name, its NNX path, how it is laid out on each side."""

    torch_key: str
    nnx_path: tuple  # e.g. ("layer2", 0, "big_bn1", "scale")
    kind: str  # "conv", "linear", "bn_param", "bn_stat", "bias"
    jax_shape: tuple[int, ...]
    torch_shape: tuple[int, ...]

    @property
    def bn_module(self) -> str | None:
        """The official BN module name (`layer2.0.big1.1`) for BN tensors, else None."""
        return self.torch_key.rsplit(".", 1)[0] if self.kind.startswith("bn") else None


def torch_module_name(path: tuple) -> str:
    """Official module name of an NNX module path, e.g. ("layer2", 0, "downsample", "bn") -> "layer2.0.downsample.1"."""
    parts: list[str] = []
    i = 0
    while i < len(path):
        pair = tuple(str(p) for p in path[i : i + 2])
        if pair in _PAIR_RENAMES:
            parts.append(_PAIR_RENAMES[pair])
            i += 2
            continue
        name = str(path[i])
        parts.append(_MODULE_RENAMES.get(name, name))
        i += 1
    return ".".join(parts)


# Axis orders between the layouts: conv kernels JAX [kt, kh, kw, in, out] <-> torch [out, in, kt, kh, kw]; linear
# kernels are transposed; BatchNorm and bias vectors are the same in both.
_TO_TORCH = {"conv": (4, 3, 0, 1, 2), "linear": (1, 0)}
_TO_JAX = {"conv": (2, 3, 4, 1, 0), "linear": (1, 0)}


def _torch_shape(kind: str, jax_shape: tuple[int, ...]) -> tuple[int, ...]:
    axes = _TO_TORCH.get(kind)
    return tuple(jax_shape) if axes is None else tuple(jax_shape[i] for i in axes)


def _kind(path: tuple, leaf: str, ndim: int) -> str:
    if leaf == "kernel":
        return "conv" if ndim == 5 else "linear"
    if leaf in ("mean", "var"):
        return "bn_stat"
    if path and path[0] == "fc":
        return "bias"
    return "bn_param"


@functools.lru_cache(maxsize=64)
def key_table(variant: str, num_classes: int, base_width: int = 64) -> tuple[KeySpec, ...]:
    """Every tensor of `variant` in the official state-dict order (num_batches_tracked excluded)."""
    abstract = nnx.eval_shape(lambda: build_model(variant, num_classes, base_width=base_width))
    specs = []
    for path, var in nnx.to_flat_state(nnx.state(abstract)):
        leaf = path[-1]
        shape = tuple(var.get_value().shape)
        kind = _kind(path, leaf, len(shape))
        module = torch_module_name(path[:-1])
        specs.append(
            KeySpec(
                torch_key=f"{module}.{_LEAF_RENAMES[leaf]}",
                nnx_path=tuple(path),
                kind=kind,
                jax_shape=shape,
                torch_shape=_torch_shape(kind, shape),
            )
        )
    return tuple(sorted(specs, key=lambda s: _official_order(s.torch_key)))


# Official order inside a block: conv1, bn1, conv2, bn2, conv3, bn3, big1, big2, big3, downsample
# (docs/model.md#state-dict-names-and-layout);
# the extra gate's big4_1 / big4_2 (absent from the official smallbig50 key list) are placed before downsample;
# BN tensors: weight, bias, running_mean, running_var (then num_batches_tracked).
_MODULE_ORDER = [
    "conv1",
    "bn1",
    "conv2",
    "bn2",
    "conv3",
    "bn3",
    "big1",
    "big2",
    "big3",
    "big4_1",
    "big4_2",
    "downsample",
]
_TENSOR_ORDER = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]


def _official_order(key: str):
    parts = key.split(".")
    top = {"conv1": 0, "bn1": 1, "layer1": 2, "layer2": 3, "layer3": 4, "layer4": 5, "fc": 6}
    out = [(0, top.get(parts[0], 99), parts[0])]
    for p in parts[1:]:
        if p.isdigit():
            out.append((1, int(p), ""))
        elif p in _TENSOR_ORDER:
            out.append((3, _TENSOR_ORDER.index(p), ""))
        elif p in _MODULE_ORDER:
            out.append((2, _MODULE_ORDER.index(p), ""))
        else:
            out.append((4, 0, p))
    return out


def torch_state_dict_shapes(variant: str, num_classes: int, base_width: int = 64) -> dict[str, tuple[int, ...]]:
    """Official key -> torch shape, including `num_batches_tracked` (shape ()) after each BN, in official order."""
    table = key_table(variant, num_classes, base_width)
    out: dict[str, tuple[int, ...]] = {}
    for spec in table:
        out[spec.torch_key] = spec.torch_shape
        if spec.kind == "bn_stat" and spec.torch_key.endswith("running_var"):
            out[spec.bn_module + ".num_batches_tracked"] = ()
    return out


def _transposed(array: np.ndarray, axes: tuple[int, ...] | None) -> np.ndarray:
    return np.asarray(array) if axes is None else np.ascontiguousarray(np.transpose(array, axes))


def to_torch_layout(spec: KeySpec, array: np.ndarray) -> np.ndarray:
    return _transposed(array, _TO_TORCH.get(spec.kind))


def to_jax_layout(spec: KeySpec, array: np.ndarray) -> np.ndarray:
    return _transposed(array, _TO_JAX.get(spec.kind))


def shape_of(tensor: Any) -> tuple[int, ...]:
    """The shape of a torch tensor or numpy array as a tuple of ints."""
    return tuple(int(d) for d in tensor.shape)


def format_shape(shape: Iterable[int]) -> str:
    """`[64, 3, 1, 7, 7]`: a shape as the messages write it."""
    return "[" + ", ".join(str(d) for d in shape) + "]"


_BLOCK_INDEX = re.compile(r"^layer([1-4])\.(\d+)\.")


def stage_depths(keys: Iterable[str]) -> tuple[int, int, int, int]:
    """Blocks in each of layer1..layer4 of a (SmallBig or torchvision ResNet) state dict, from its keys."""
    depths = [0, 0, 0, 0]
    for key in keys:
        if m := _BLOCK_INDEX.match(key):
            stage = int(m.group(1)) - 1
            depths[stage] = max(depths[stage], int(m.group(2)) + 1)
    return tuple(depths)


@dataclasses.dataclass
class TensorCheck:
    """A state dict held against the tensors a target expects (`check_tensors`)."""

    missing: list[str]  # expected keys it lacks
    unexpected: list[str]  # its keys with no place in the target
    mismatched: list[str]  # "shape mismatch ..." lines
    non_float: list[str]  # "dtype of ..." lines
    used: list[str]  # its keys that fit: right shape, floating point

    def counts(self) -> str:
        counts = (
            f"{len(self.missing)} missing, {len(self.unexpected)} unexpected, {len(self.mismatched)} shape mismatches"
        )
        return counts + (f", {len(self.non_float)} non-float tensors" if self.non_float else "")

    def key_problems(self, sd: Mapping[str, Any], expected: Mapping[str, tuple[int, ...]], target: str) -> list[str]:
        """The missing and unexpected keys as message lines."""
        missing = [f"missing key {k} (expected shape {format_shape(expected[k])})" for k in self.missing]
        return missing + [
            f"unexpected key {k} (shape {format_shape(shape_of(sd[k]))}): no place for it in {target}"
            for k in self.unexpected
        ]


def check_tensors(
    sd: Mapping[str, Any],
    expected: Mapping[str, tuple[int, ...]],
    table: tuple[KeySpec, ...],
    ignore: tuple[str, ...] = (),
) -> TensorCheck:
    """Every key of `sd` against `expected` (key -> torch shape): missing, unexpected, wrong shape, not floating
    point. A BatchNorm's `num_batches_tracked` (BatchNorms of `table`) and keys starting with `ignore` are passed."""
    bn_modules = {s.bn_module for s in table if s.bn_module}
    check = TensorCheck([k for k in expected if k not in sd], [], [], [], [])
    for key, t in sd.items():
        if key.startswith(ignore) or (key.endswith(".num_batches_tracked") and key.rsplit(".", 1)[0] in bn_modules):
            continue
        if key not in expected:
            check.unexpected.append(key)
        elif shape_of(t) != expected[key]:
            check.mismatched.append(
                f"shape mismatch {key}: expected {format_shape(expected[key])}, found {format_shape(shape_of(t))}"
            )
        elif not t.dtype.is_floating_point:
            check.non_float.append(
                f"dtype of {key}: expected a floating-point tensor, found {str(t.dtype).replace('torch.', '')}"
            )
        else:
            check.used.append(key)
    return check
