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
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator

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
_LEAF_BACK = {"running_mean": "mean", "running_var": "var"}


@dataclasses.dataclass(frozen=True)
class KeySpec:
    """One tensor: its official name, its NNX path, how it is laid out on each side."""

    torch_key: str
    nnx_path: tuple  # e.g. ("layer2", 0, "big_bn1", "scale")
    kind: str  # "conv", "linear", "bn_param", "bn_stat", "bias"
    jax_shape: tuple[int, ...]
    torch_shape: tuple[int, ...]
    collection: str  # "param" or "batch_stat"

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
                collection="batch_stat" if isinstance(var, nnx.BatchStat) else "param",
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


def iter_bn_modules(table: tuple[KeySpec, ...]) -> Iterator[str]:
    """Official names of all BatchNorm modules of a table, in order, each once."""
    seen = set()
    for spec in table:
        name = spec.bn_module
        if name is not None and name not in seen:
            seen.add(name)
            yield name


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
