"""torchvision ImageNet ResNets -> SmallBig initial weights, inflated as the official code does."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from smallbig_jax.convert.keys import (
    KeySpec,
    check_tensors,
    format_shape,
    key_table,
    shape_of,
    stage_depths,
    to_jax_layout,
)
from smallbig_jax.convert.pth import read_state_dict, to_numpy
from smallbig_jax.convert.state import model_arrays, set_arrays, warn_nonfinite
from smallbig_jax.errors import ConversionError
from smallbig_jax.models import VARIANTS, SmallBigNet, build_model

_TORCHVISION_DEPTHS = {(3, 4, 6, 3): "resnet50", (3, 4, 23, 3): "resnet101"}


def _imagenet_source_key(spec: KeySpec) -> str | None:
    """The torchvision key that initialises `spec`, or None (classifier, big-view BNs, extra gate)."""
    key = spec.torch_key
    if key.startswith("fc.") or ".big" in key:
        return None
    return key


def _2d(spec: KeySpec) -> tuple[int, ...]:
    if spec.kind == "conv":
        o, i, _, kh, kw = spec.torch_shape
        return (o, i, kh, kw)
    return spec.torch_shape


def inflate_imagenet(
    sd: Mapping[str, Any],
    variant: str | None = None,
    num_classes: int = 400,
    base_width: int | None = None,
    *,
    seed: int = 0,
    allow_partial: bool = False,
    source: str = "torchvision state dict",
    model: SmallBigNet | None = None,
) -> tuple[SmallBigNet, dict[str, Any]]:
    """SmallBig initial weights from a torchvision `resnet50` / `resnet101` state dict, as the official code inflates.

    Each 2D kernel [O,I,kh,kw] becomes [O,I,1,kh,kw]; where the model's kernel has kT > 1 (slowonly's 3x1x1) it is
    repeated kT times along T and divided by kT. BN tensors are copied. The classifier is skipped (a fresh one of
    `num_classes` is initialised), and the big-view BNs and the extra gate keep the model's initialisation (the
    big-view BNs zero, so the network starts as the inflated 2D ResNet).

    `variant` defaults to smallbig50 for a ResNet-50 file and smallbig101 for a ResNet-101 file. Unlike the official
    code (whose always-true `'50' or '23' in name` loads ResNet-50 weights into smallbig101 and leaves layer3.6-22
    random, docs/model.md#imagenet-initialisation), every tensor the target takes from ImageNet must be in the file
    and every file tensor must have a place in the target, unless `allow_partial=True` (the official
    `part_state_dict` behaviour: take the intersection, e.g. ResNet-50 weights for smallbig23; the report lists what
    was left at init and what unused).
    With `model` given, its variant, classes and width are the target and it is updated in place (tensors not taken
    from ImageNet keep their current values). Returns (model in train mode, report).
    """
    depths = stage_depths(sd)
    arch = _TORCHVISION_DEPTHS.get(depths, f"unknown ResNet with blocks {depths}")
    w = sd.get("conv1.weight")
    if w is None or w.ndim != 4:
        raise ConversionError(
            f"{source}: not a torchvision 2D ResNet state dict: "
            + (
                "no 'conv1.weight'"
                if w is None
                else f"'conv1.weight' is {w.ndim}-D {format_shape(shape_of(w))}, expected 4-D"
            )
        )
    if any(k.endswith(".weight") and v.ndim == 5 for k, v in sd.items()):
        raise ConversionError(f"{source}: holds 5-D (3D conv) kernels; it is not a 2D torchvision ResNet")
    if model is not None:
        variant, num_classes, base_width = model.variant, model.num_classes, model.base_width
    if variant is None:
        variant = {"resnet50": "smallbig50", "resnet101": "smallbig101"}.get(arch)
        if variant is None:
            raise ConversionError(f"{source}: {arch}; pass the target variant explicitly")
    if variant not in VARIANTS:
        raise ConversionError(f"unknown variant {variant!r}; expected one of {sorted(VARIANTS)}")
    if base_width is None:
        base_width = shape_of(w)[0]
    if model is None:
        model = build_model(variant, num_classes, base_width=base_width, seed=seed)
    table = key_table(variant, num_classes, base_width)
    wanted = {k: s for s in table if (k := _imagenet_source_key(s)) is not None}
    expected = {k: _2d(s) for k, s in wanted.items()}  # the torchvision (2D) shapes
    check = check_tensors(sd, expected, table, ignore=("fc.",))
    used = check.used
    keys = check.key_problems(sd, expected, variant)
    if check.mismatched or check.non_float or (keys and not allow_partial):
        hint = []
        if check.missing and variant == "smallbig101" and arch == "resnet50":
            hint = [
                "this file is a ResNet-50 (layer3 has 6 blocks) but smallbig101 needs torchvision resnet101 weights. "
                "(The official code loads ResNet-50 weights into smallbig101 by mistake and leaves layer3.6-22 random; "
                "this converter refuses. Pass allow_partial / --allow_partial to reproduce that on purpose.)"
            ]
        raise ConversionError(
            f"{source} ({arch}): cannot initialise {variant} (base width {base_width}) from it: {check.counts()}; "
            "nothing was converted",
            hint + keys + check.mismatched + check.non_float,
        )
    arrays = model_arrays(model)
    for key in used:
        spec = wanted[key]
        value = to_numpy(sd[key])
        if spec.kind == "conv":
            kt = spec.torch_shape[2]
            value = np.repeat(value[:, :, None], kt, axis=2) / kt
        arrays[spec.nnx_path] = to_jax_layout(spec, value)
    nonfinite = warn_nonfinite({key: arrays[wanted[key].nnx_path] for key in used}, source)
    set_arrays(model, arrays)
    left = sorted(s.torch_key for s in table if _imagenet_source_key(s) is None or _imagenet_source_key(s) not in used)
    report = {
        "source": source,
        "source_arch": arch,
        "variant": variant,
        "official_name": VARIANTS[variant].official_name,
        "num_classes": num_classes,
        "base_width": base_width,
        "tensors_from_imagenet": len(used),
        "tensors_at_init": len(left),
        "at_init_examples": left[:6],
        "skipped_from_file": sorted(k for k in sd if k.startswith("fc.")) + sorted(check.unexpected),
        "missing_left_at_init": check.missing,
        "temporal_inflation": sorted({f"kT={s.torch_shape[2]}" for s in wanted.values() if s.kind == "conv"}),
        "nonfinite_tensors": nonfinite,
    }
    return model, report


def inflate_imagenet_pth(
    path: str | os.PathLike, variant: str | None = None, num_classes: int = 400, **kw
) -> tuple[SmallBigNet, dict[str, Any]]:
    """`inflate_imagenet` on a torchvision `.pth` file (read with weights_only=True)."""
    sd, notes = read_state_dict(path)
    model, report = inflate_imagenet(sd, variant, num_classes, source=os.fspath(path), **kw)
    report["container"] = notes
    return model, report
