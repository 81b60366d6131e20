"""Official SmallBigNet checkpoints <-> JAX: strict import, inference of variant/classes/width, and export.

Import (official -> JAX) is strict: every problem (missing keys, unexpected keys, shape mismatches, non-float
tensors) is collected and raised together in one `ConversionError`, by name, with expected and found shapes.
Export writes the official module names in the official order.
"""

from __future__ import annotations

import collections
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from smallbig_jax.convert.keys import (
    check_tensors,
    format_shape,
    key_table,
    shape_of,
    stage_depths,
    to_jax_layout,
    to_torch_layout,
)
from smallbig_jax.convert.pth import PREFIX, read_state_dict, to_numpy, torch_module, write_pth
from smallbig_jax.convert.state import arrays_to_model, model_arrays, warn_nonfinite
from smallbig_jax.errors import ConversionError
from smallbig_jax.models import VARIANTS, SmallBigNet

# ---------------------------------------------------------------------------------------------------------------
# What a state dict is


_OLD_DOWNSAMPLE = re.compile(r"^layer\d+\.\d+\.downsample\.(1\.weight|2\.\w+)$")


def check_layout(sd: Mapping[str, Any], source: str = "checkpoint") -> None:
    """Refuses the pre-2022 downsample layout (docs/model.md#state-dict-names-and-layout) and 2D torchvision files
    given as SmallBig checkpoints."""
    old = [k for k in sd if _OLD_DOWNSAMPLE.match(k) and (not k.endswith("1.weight") or sd[k].ndim == 5)]
    if old:
        raise ConversionError(
            f"{source}: this checkpoint uses the pre-2022 downsample layout of the official code (before commit "
            "9e6d9ea): downsample = [AvgPool3d((1,3,3), stride (1,s,s)), 1x1x1 conv with stride 1, BN], stored as "
            "'downsample.1.weight' (a 5-D conv) and 'downsample.2.*' (the BN). That shortcut averages 3x3 "
            "neighbourhoods (zero padding counted) before the conv, whereas the current layout and the JAX model "
            "use a strided 1x1x1 conv ('downsample.0') and a BN ('downsample.1'). Mapping these weights would give "
            "different predictions without any error, so they are refused. Retrain with the current layout, or "
            "add an avgpool-downsample mode to the JAX model first.",
            [f"old-layout key: {k} {format_shape(shape_of(sd[k]))}" for k in sorted(old)[:8]]
            + ([f"... and {len(old) - 8} more"] if len(old) > 8 else []),
        )
    w = sd.get("conv1.weight")
    if w is not None and w.ndim == 4:
        raise ConversionError(
            f"{source}: 'conv1.weight' is 4-D {format_shape(shape_of(w))}: this is a 2D (torchvision ImageNet) "
            "ResNet, not a SmallBigNet checkpoint. Inflate it with `--imagenet` (`inflate_imagenet`) instead."
        )


def infer_config(sd: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Guesses `variant`, `num_classes` and `base_width` from the keys and shapes; returns (values, explanations).

    A value that cannot be inferred is left out (the explanations say why).
    """
    found: dict[str, Any] = {}
    why: list[str] = []
    for key in ("conv1.weight", "bn1.weight", "layer1.0.conv1.weight"):
        if key in sd:
            found["base_width"] = shape_of(sd[key])[0]
            why.append(f"inferred base width {found['base_width']} from {key} {format_shape(shape_of(sd[key]))}")
            break
    for key in ("fc.weight", "fc.bias"):
        if key in sd:
            found["num_classes"] = shape_of(sd[key])[0]
            why.append(f"inferred {found['num_classes']} classes from {key} {format_shape(shape_of(sd[key]))}")
            break
    depths, kinds = stage_depths(sd), []
    for stage in range(1, 5):
        stage_keys = [k for k in sd if k.startswith(f"layer{stage}.")]
        big = any(".big1.1." in k or ".big2.1." in k or ".big3.1." in k for k in stage_keys)
        extra = any(".big4_1." in k or ".big4_2." in k for k in stage_keys)
        slow = any(k.endswith(".conv1.weight") and sd[k].ndim == 5 and shape_of(sd[k])[2] == 3 for k in stage_keys)
        kinds.append((big, slow, extra))
    matches = [
        name
        for name, v in VARIANTS.items()
        if tuple(v.depths) == depths
        and all((b.big_views, b.temporal_conv1, b.extra) == k for b, k in zip(v.blocks, kinds))
    ]
    desc = ", ".join(
        f"layer{i + 1}: {d} blocks"
        + ("".join(f" +{n}" for n, f in zip(("big views", "3x1x1 conv1", "extra gate"), k) if f))
        for i, (d, k) in enumerate(zip(depths, kinds))
    )
    if len(matches) == 1:
        found["variant"] = matches[0]
        why.append(f"inferred variant {matches[0]} ({VARIANTS[matches[0]].official_name}) from the blocks ({desc})")
    else:
        why.append(f"no single known variant has these blocks ({desc}); known: {sorted(VARIANTS)}")
    return found, why


def _resolve(sd, variant, num_classes, base_width, source) -> tuple[str, int, int, list[str]]:
    inferred, why = infer_config(sd)
    notes = []
    problems = []
    resolved = {}
    for name, given in (("variant", variant), ("num_classes", num_classes), ("base_width", base_width)):
        if given is not None:
            resolved[name] = given
            if name in inferred and inferred[name] != given:
                notes.append(f"{name} {given!r} was given; the keys suggest {inferred[name]!r}")
            else:
                notes.append(f"{name} {given!r} was given")
        elif name in inferred:
            resolved[name] = inferred[name]
        else:
            problems.append(f"cannot infer {name} from the keys; pass it explicitly")
    if problems:
        raise ConversionError(f"{source}: cannot tell which model these weights are for", problems + why)
    if resolved["variant"] not in VARIANTS:
        raise ConversionError(f"unknown variant {resolved['variant']!r}; expected one of {sorted(VARIANTS)}")
    return resolved["variant"], int(resolved["num_classes"]), int(resolved["base_width"]), why + notes


# ---------------------------------------------------------------------------------------------------------------
# Official checkpoint -> JAX


def validate_state_dict(
    sd: Mapping[str, Any], variant: str, num_classes: int, base_width: int = 64, source: str = "checkpoint"
) -> None:
    """Raises one `ConversionError` listing every missing key, unexpected key, shape mismatch and non-float tensor."""
    table = key_table(variant, num_classes, base_width)
    expected = {s.torch_key: s.torch_shape for s in table}
    check = check_tensors(sd, expected, table)
    problems = check.key_problems(sd, expected, variant) + check.mismatched + check.non_float
    if problems:
        raise ConversionError(
            f"{source}: does not match {variant} ({VARIANTS[variant].official_name}) with {num_classes} classes and "
            f"base width {base_width}: {check.counts()}; nothing was converted",
            problems,
        )


def state_dict_to_model(
    sd: Mapping[str, Any],
    variant: str | None = None,
    num_classes: int | None = None,
    base_width: int | None = None,
    source: str = "checkpoint",
) -> tuple[SmallBigNet, dict[str, Any]]:
    """Converts an official SmallBigNet state dict (prefix already stripped) to a ready `SmallBigNet` in eval mode.

    `variant`, `num_classes` and `base_width` are inferred from the keys when None. Returns (model, report).
    """
    check_layout(sd, source)
    variant, num_classes, base_width, notes = _resolve(sd, variant, num_classes, base_width, source)
    validate_state_dict(sd, variant, num_classes, base_width, source)
    table = key_table(variant, num_classes, base_width)
    arrays = {s.nnx_path: to_jax_layout(s, to_numpy(sd[s.torch_key])) for s in table}
    nonfinite = warn_nonfinite({s.torch_key: arrays[s.nnx_path] for s in table}, source)
    model = arrays_to_model(arrays, variant, num_classes, base_width)
    ignored = sorted(k for k in sd if k.endswith(".num_batches_tracked"))
    report = {
        "source": source,
        "variant": variant,
        "official_name": VARIANTS[variant].official_name,
        "num_classes": num_classes,
        "base_width": base_width,
        "notes": notes,
        "tensors_converted": len(table),
        "ignored_num_batches_tracked": len(ignored),
        "source_dtypes": sorted({str(sd[s.torch_key].dtype).replace("torch.", "") for s in table}),
        "nonfinite_tensors": nonfinite,
    }
    return model, report


def convert_pth(
    path: str | os.PathLike,
    variant: str | None = None,
    num_classes: int | None = None,
    base_width: int | None = None,
) -> tuple[SmallBigNet, dict[str, Any]]:
    """Reads an official checkpoint (`.pth`, any of the accepted forms) and returns (model in eval mode, report)."""
    sd, notes = read_state_dict(path)
    model, report = state_dict_to_model(sd, variant, num_classes, base_width, os.fspath(path))
    report["container"] = notes
    return model, report


# ---------------------------------------------------------------------------------------------------------------
# JAX -> official


def export_state_dict(model: SmallBigNet, *, prefix: str = "") -> collections.OrderedDict[str, Any]:
    """The model's weights as a PyTorch state dict with the official module names, in the official order.

    Loads with `load_state_dict(..., strict=True)` into the official `SmallBigNet` (or
    `smallbig_jax/torch_reference.py`).
    Tensors are float32; every BN also gets `num_batches_tracked` = 0 (JAX does not count batches). Pass
    `prefix="module."` for the keys of a DataParallel / DDP-wrapped model.
    """
    torch = torch_module()
    table = key_table(model.variant, model.num_classes, model.base_width)
    arrays = model_arrays(model)
    out: collections.OrderedDict[str, Any] = collections.OrderedDict()
    for spec in table:
        value = to_torch_layout(spec, np.asarray(arrays[spec.nnx_path], dtype=np.float32))
        out[prefix + spec.torch_key] = torch.from_numpy(np.array(value, dtype=np.float32, copy=True))
        if spec.torch_key.endswith("running_var"):
            out[prefix + spec.bn_module + ".num_batches_tracked"] = torch.tensor(0, dtype=torch.int64)
    return out


def save_pth(model: SmallBigNet, path: str | os.PathLike, *, official_format: bool = False) -> dict[str, Any]:
    """Writes `export_state_dict(model)` to `path` atomically (temp file + rename).

    `official_format=False`: a bare state dict, for `model.load_state_dict(torch.load(path))`.
    `official_format=True`: what the official training code saves and resumes from: `{'epoch': 0, 'best_metric': 0.0,
    'state_dict': {'module.' + key: tensor}}` (no optimizer state).
    """
    if official_format:
        obj: Any = {"epoch": 0, "best_metric": 0.0, "state_dict": export_state_dict(model, prefix=PREFIX)}
    else:
        obj = export_state_dict(model)
    path = write_pth(obj, path)
    sd = obj["state_dict"] if official_format else obj
    return {
        "output": path,
        "format": "official {'state_dict': module.*}" if official_format else "bare state dict",
        "variant": model.variant,
        "official_name": VARIANTS[model.variant].official_name,
        "num_classes": model.num_classes,
        "base_width": model.base_width,
        "keys": len(sd),
    }
