"""`init_from`: start training from pretrained weights (the `init_from` config option).

    report = init_from(model, "resnet50-19c8e357.pth")   # torchvision ImageNet ResNet-50/101: inflated
    report = init_from(model, "model_best.pth")          # official SmallBigNet checkpoint (fine-tuning)
    report = init_from(model, "converted_dir/")          # a directory written by smallbig-jax convert

torchvision weights are inflated as the official code does (docs/model.md#imagenet-initialisation). The model is
updated in place. Its variant and width must fit the weights; the classifier is taken only when its class count
matches (otherwise it keeps its fresh init, and the report says so).
"""

from __future__ import annotations

import os
from typing import Any

from smallbig_jax.convert.checkpoint import load_converted_model
from smallbig_jax.convert.imagenet import inflate_imagenet
from smallbig_jax.convert.official import state_dict_to_model
from smallbig_jax.convert.pth import read_state_dict
from smallbig_jax.convert.state import model_arrays, set_arrays
from smallbig_jax.errors import ConversionError
from smallbig_jax.models import SmallBigNet


def _copy(model: SmallBigNet, source: SmallBigNet, origin: str) -> dict[str, Any]:
    if (source.variant, source.base_width) != (model.variant, model.base_width):
        raise ConversionError(
            f"{origin}: holds {source.variant} with base width {source.base_width}, but the model is {model.variant} "
            f"with base width {model.base_width}"
        )
    arrays = model_arrays(source)
    skipped = []
    if source.num_classes != model.num_classes:
        skipped = [p for p in arrays if p[0] == "fc"]
        for p in skipped:
            del arrays[p]
    set_arrays(model, arrays)
    return {
        "tensors_loaded": len(arrays),
        "classifier": "loaded"
        if not skipped
        else f"kept at init ({source.num_classes} classes in the file, {model.num_classes} in the model)",
    }


def init_from(model: SmallBigNet, path: str | os.PathLike, *, allow_partial: bool = False) -> dict[str, Any]:
    """Loads pretrained weights from `path` into `model` in place; returns a report of what was loaded."""
    path = os.fspath(path)
    if os.path.isdir(path):
        report = _copy(model, load_converted_model(path), path)
        report["source"] = {"kind": "converted checkpoint", "path": path}
        return report
    sd, notes = read_state_dict(path)
    w = sd.get("conv1.weight")
    if w is not None and w.ndim == 4:
        _, report = inflate_imagenet(sd, model=model, allow_partial=allow_partial, source=path)
        report["kind"] = "torchvision ImageNet, inflated"
        return report
    source, conv_report = state_dict_to_model(sd, model.variant, None, model.base_width, source=path)
    report = _copy(model, source, path)
    report["source"] = {"kind": "official SmallBigNet checkpoint", "path": path, **conv_report, "container": notes}
    return report
