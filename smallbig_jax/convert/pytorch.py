"""PyTorch <-> JAX weights for SmallBigNet: official checkpoints, torchvision ImageNet ResNets, and export back.

torch is imported lazily, inside the functions that need it, so `import smallbig_jax` works without it. `.pth` files
are read with `torch.load(..., weights_only=True)`: no code from the file is executed.

Import (official -> JAX) is strict: every problem (missing keys, unexpected keys, shape mismatches, non-float
tensors) is collected and raised together in one `ConversionError`, by name, with expected and found shapes.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import re
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from smallbig_jax.convert.keys import KeySpec, key_table, to_jax_layout, to_torch_layout, torch_state_dict_shapes
from smallbig_jax.errors import ConversionError
from smallbig_jax.models import VARIANTS, SmallBigNet, build_model

PREFIX = "module."

log = logging.getLogger(__name__)


def warn_nonfinite(arrays: Mapping[str, np.ndarray], source: str) -> list[str]:
    """Logs a warning naming the tensors that hold NaN or Inf (a damaged file, or a training run that diverged):
    they convert, but the model's outputs will be NaN. Returns their names."""
    bad = sorted(name for name, a in arrays.items() if not np.isfinite(a).all())
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        log.warning(
            "%s: %d tensors hold NaN or Inf values (%s); the converted model will output NaN", source, len(bad), shown
        )
    return bad


def _torch():
    try:
        import torch
    except ImportError as e:  # pragma: no cover - exercised only without torch
        raise ImportError(
            "PyTorch is needed to read or write .pth files: pip install 'smallbig_jax[torch]' (torch==2.13.0)"
        ) from e
    return torch


def _shape(x) -> tuple[int, ...]:
    return tuple(int(d) for d in x.shape)


def _fmt(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


# ---------------------------------------------------------------------------------------------------------------
# Reading


def load_pth(path: str | os.PathLike) -> Any:
    """`torch.load(path, map_location='cpu', weights_only=True)`, with every failure turned into a `ConversionError`."""
    torch = _torch()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConversionError(f"{path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError, UnpicklingError, EOFError, ...
        text = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            why = (
                "it holds Python objects other than tensors and plain containers, and loading them would execute "
                "code from the file (torch.load weights_only=True refused it). If it is a whole pickled model, "
                "save `model.state_dict()` instead"
            )
        elif os.path.getsize(path) == 0:
            why = "the file is empty"
        else:
            why = "it is not a PyTorch checkpoint, or it is truncated or corrupt"
        raise ConversionError(
            f"{path}: cannot be read as a PyTorch checkpoint: {why}", [f"{type(e).__name__}: {text}"]
        ) from e


def extract_state_dict(obj: Any, source: str = "checkpoint") -> tuple[dict[str, Any], dict[str, Any]]:
    """The tensors of a checkpoint object, without the `module.` prefix, and notes on what was found.

    Accepts what the official code writes (`{'epoch', 'state_dict', 'best_metric', 'optimizer'}` with `module.`
    keys) and bare state dicts, with or without the prefix.
    """
    torch = _torch()
    notes: dict[str, Any] = {}
    if not isinstance(obj, Mapping):
        raise ConversionError(f"{source}: not a checkpoint: expected a dict of tensors, found {type(obj).__name__}")
    if "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        notes["wrapper"] = "dict with 'state_dict'"
        notes["other_entries"] = sorted(str(k) for k in obj if k != "state_dict")
        for k in ("epoch", "best_metric"):
            v = obj.get(k)
            if isinstance(v, (int, float)) or (isinstance(v, torch.Tensor) and v.numel() == 1):
                notes[k] = float(v) if not isinstance(v, int) else v
        sd = obj["state_dict"]
    else:
        notes["wrapper"] = "bare state dict"
        sd = obj
    non_tensors = [f"{k}: {type(v).__name__}" for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if not sd or len(non_tensors) == len(sd):
        raise ConversionError(
            f"{source}: not a checkpoint: it holds no tensors (top-level entries: {sorted(map(str, sd))[:10]}); "
            "expected a state dict or the official {'state_dict': ...} dict"
        )
    if non_tensors:
        raise ConversionError(f"{source}: the state dict holds entries that are not tensors", non_tensors)
    keys = [str(k) for k in sd]
    if all(k.startswith(PREFIX) for k in keys):
        sd = {k[len(PREFIX) :]: v for k, v in sd.items()}
        notes["prefix_stripped"] = PREFIX
    else:
        sd = {str(k): v for k, v in sd.items()}
        notes["prefix_stripped"] = None
    notes["dtypes"] = sorted({str(v.dtype).replace("torch.", "") for v in sd.values()})
    return dict(sd), notes


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
            [f"old-layout key: {k} {_fmt(_shape(sd[k]))}" for k in sorted(old)[:8]]
            + ([f"... and {len(old) - 8} more"] if len(old) > 8 else []),
        )
    w = sd.get("conv1.weight")
    if w is not None and w.ndim == 4:
        raise ConversionError(
            f"{source}: 'conv1.weight' is 4-D {_fmt(_shape(w))}: this is a 2D (torchvision ImageNet) ResNet, not a "
            "SmallBigNet checkpoint. Inflate it with `--imagenet` (`inflate_imagenet`) instead."
        )


# ---------------------------------------------------------------------------------------------------------------
# Inference of variant / classes / width


def infer_config(sd: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Guesses `variant`, `num_classes` and `base_width` from the keys and shapes; returns (values, explanations).

    A value that cannot be inferred is left out (the explanations say why).
    """
    found: dict[str, Any] = {}
    why: list[str] = []
    for key in ("conv1.weight", "bn1.weight", "layer1.0.conv1.weight"):
        if key in sd:
            found["base_width"] = _shape(sd[key])[0]
            why.append(f"inferred base width {found['base_width']} from {key} {_fmt(_shape(sd[key]))}")
            break
    for key in ("fc.weight", "fc.bias"):
        if key in sd:
            found["num_classes"] = _shape(sd[key])[0]
            why.append(f"inferred {found['num_classes']} classes from {key} {_fmt(_shape(sd[key]))}")
            break
    depths, kinds = [], []
    for stage in range(1, 5):
        pat = re.compile(rf"^layer{stage}\.(\d+)\.")
        blocks = {int(m.group(1)) for k in sd if (m := pat.match(k))}
        depths.append(max(blocks) + 1 if blocks else 0)
        stage_keys = [k for k in sd if k.startswith(f"layer{stage}.")]
        big = any(".big1.1." in k or ".big2.1." in k or ".big3.1." in k for k in stage_keys)
        extra = any(".big4_1." in k or ".big4_2." in k for k in stage_keys)
        slow = any(k.endswith(".conv1.weight") and sd[k].ndim == 5 and _shape(sd[k])[2] == 3 for k in stage_keys)
        kinds.append((big, slow, extra))
    matches = [
        name
        for name, v in VARIANTS.items()
        if tuple(v.depths) == tuple(depths)
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
        elif _shape(t) != expected[key]:
            check.mismatched.append(f"shape mismatch {key}: expected {_fmt(expected[key])}, found {_fmt(_shape(t))}")
        elif not t.dtype.is_floating_point:
            check.non_float.append(
                f"dtype of {key}: expected a floating-point tensor, found {str(t.dtype).replace('torch.', '')}"
            )
        else:
            check.used.append(key)
    return check


def _key_problems(
    check: TensorCheck, sd: Mapping[str, Any], expected: Mapping[str, tuple[int, ...]], target: str
) -> list[str]:
    """The missing and unexpected keys of `check` as message lines."""
    missing = [f"missing key {k} (expected shape {_fmt(expected[k])})" for k in check.missing]
    return missing + [
        f"unexpected key {k} (shape {_fmt(_shape(sd[k]))}): no place for it in {target}" for k in check.unexpected
    ]


def validate_state_dict(
    sd: Mapping[str, Any], variant: str, num_classes: int, base_width: int = 64, source: str = "checkpoint"
) -> None:
    """Raises one `ConversionError` listing every missing key, unexpected key, shape mismatch and non-float tensor."""
    table = key_table(variant, num_classes, base_width)
    expected = {s.torch_key: s.torch_shape for s in table}
    check = check_tensors(sd, expected, table)
    problems = _key_problems(check, sd, expected, variant) + check.mismatched + check.non_float
    if problems:
        raise ConversionError(
            f"{source}: does not match {variant} ({VARIANTS[variant].official_name}) with {num_classes} classes and "
            f"base width {base_width}: {check.counts()}; nothing was converted",
            problems,
        )


def set_arrays(model: nnx.Module, arrays: Mapping[tuple, np.ndarray], *, complete: bool = False) -> None:
    """Overwrites, in place, the model's state leaves whose NNX paths are in `arrays`, each cast to the leaf's dtype
    once its shape is checked; `complete`: every leaf must be given. The one write of arrays into a model."""
    flat = nnx.to_flat_state(nnx.state(model))
    for path, var in flat:
        value = arrays.get(tuple(path))
        if value is None:
            if complete:
                raise ConversionError(f"{'.'.join(map(str, path))}: no array given")
            continue
        old = var.get_value()
        if tuple(value.shape) != tuple(old.shape):
            raise ConversionError(f"{'.'.join(map(str, path))}: expected {old.shape}, got {value.shape}")
        var.set_value(jnp.asarray(value, dtype=old.dtype))
    nnx.update(model, nnx.from_flat_state(flat))


def arrays_to_model(
    arrays: Mapping[tuple, np.ndarray], variant: str, num_classes: int, base_width: int = 64, dtype: Any = jnp.float32
) -> SmallBigNet:
    """A `SmallBigNet` (eval mode, compute `dtype`) whose every state leaf comes from `arrays` (NNX path -> array, JAX
    layout)."""
    model = nnx.eval_shape(lambda: build_model(variant, num_classes, base_width=base_width, dtype=dtype))
    set_arrays(model, arrays, complete=True)
    model.eval()
    return model


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
    arrays = {s.nnx_path: to_jax_layout(s, sd[s.torch_key].detach().to("cpu").float().numpy()) for s in table}
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
    source = os.fspath(path)
    sd, notes = extract_state_dict(load_pth(source), source)
    model, report = state_dict_to_model(sd, variant, num_classes, base_width, source)
    report["container"] = notes
    return model, report


# ---------------------------------------------------------------------------------------------------------------
# JAX -> PyTorch


def model_arrays(model: SmallBigNet) -> dict[tuple, np.ndarray]:
    """NNX path -> numpy array of every state leaf of `model`."""
    return {tuple(p): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model))}


def export_state_dict(model: SmallBigNet, *, prefix: str = "") -> collections.OrderedDict[str, Any]:
    """The model's weights as a PyTorch state dict with the official module names, in the official order.

    Loads with `load_state_dict(..., strict=True)` into the official `SmallBigNet` (or
    `smallbig_jax/torch_reference.py`).
    Tensors are float32; every BN also gets `num_batches_tracked` = 0 (JAX does not count batches). Pass
    `prefix="module."` for the keys of a DataParallel / DDP-wrapped model.
    """
    torch = _torch()
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
    torch = _torch()
    path = os.fspath(path)
    if official_format:
        obj: Any = {"epoch": 0, "best_metric": 0.0, "state_dict": export_state_dict(model, prefix=PREFIX)}
    else:
        obj = export_state_dict(model)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
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


# ---------------------------------------------------------------------------------------------------------------
# torchvision ImageNet ResNet -> SmallBig initial weights

_TORCHVISION_DEPTHS = {(3, 4, 6, 3): "resnet50", (3, 4, 23, 3): "resnet101"}


def _imagenet_source_key(spec: KeySpec) -> str | None:
    """The torchvision key that initialises `spec`, or None (classifier, big-view BNs, extra gate)."""
    key = spec.torch_key
    if key.startswith("fc.") or ".big" in key:
        return None
    return key


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
    depths = []
    for stage in range(1, 5):
        pat = re.compile(rf"^layer{stage}\.(\d+)\.")
        blocks = {int(m.group(1)) for k in sd if (m := pat.match(k))}
        depths.append(max(blocks) + 1 if blocks else 0)
    arch = _TORCHVISION_DEPTHS.get(tuple(depths), f"unknown ResNet with blocks {tuple(depths)}")
    w = sd.get("conv1.weight")
    if w is None or w.ndim != 4:
        raise ConversionError(
            f"{source}: not a torchvision 2D ResNet state dict: "
            + ("no 'conv1.weight'" if w is None else f"'conv1.weight' is {w.ndim}-D {_fmt(_shape(w))}, expected 4-D")
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
        base_width = _shape(w)[0]
    if model is None:
        model = build_model(variant, num_classes, base_width=base_width, seed=seed)
    table = key_table(variant, num_classes, base_width)
    wanted = {k: s for s in table if (k := _imagenet_source_key(s)) is not None}
    expected = {k: _2d(s) for k, s in wanted.items()}  # the torchvision (2D) shapes
    check = check_tensors(sd, expected, table, ignore=("fc.",))
    used = check.used
    keys = _key_problems(check, sd, expected, variant)
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
        value = sd[key].detach().to("cpu").float().numpy()
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


def _2d(spec: KeySpec) -> tuple[int, ...]:
    if spec.kind == "conv":
        o, i, _, kh, kw = spec.torch_shape
        return (o, i, kh, kw)
    return spec.torch_shape


def inflate_imagenet_pth(path: str | os.PathLike, variant: str | None = None, num_classes: int = 400, **kw):
    """`inflate_imagenet` on a torchvision `.pth` file (read with weights_only=True)."""
    source = os.fspath(path)
    sd, notes = extract_state_dict(load_pth(source), source)
    model, report = inflate_imagenet(sd, variant, num_classes, source=source, **kw)
    report["container"] = notes
    return model, report


__all__ = [
    "ConversionError",
    "load_pth",
    "extract_state_dict",
    "check_layout",
    "infer_config",
    "validate_state_dict",
    "state_dict_to_model",
    "convert_pth",
    "export_state_dict",
    "save_pth",
    "inflate_imagenet",
    "inflate_imagenet_pth",
    "model_arrays",
    "arrays_to_model",
    "torch_state_dict_shapes",
]
