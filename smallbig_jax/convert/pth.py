"""`.pth` files: reading them safely, the tensors of a checkpoint object, writing one atomically.

torch is imported lazily, inside the functions that need it, so `import smallbig_jax` works without it. `.pth` files
are read with `torch.load(..., weights_only=True)`: no code from the file is executed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from smallbig_jax.errors import ConversionError

PREFIX = "module."  # the key prefix of a DataParallel / DDP-wrapped model's state dict (the official checkpoints)


def torch_module():
    """The `torch` module, or an ImportError that says how to install it."""
    try:
        import torch
    except ImportError as e:  # pragma: no cover - exercised only without torch
        raise ImportError(
            "PyTorch is needed to read or write .pth files: pip install 'smallbig_jax[torch]' (torch==2.13.0)"
        ) from e
    return torch


def to_numpy(tensor: Any) -> np.ndarray:
    """A torch tensor as a float32 numpy array."""
    return tensor.detach().to("cpu").float().numpy()


def load_pth(path: str | os.PathLike) -> Any:
    """`torch.load(path, map_location='cpu', weights_only=True)`, with every failure turned into a `ConversionError`."""
    torch = torch_module()
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
    torch = torch_module()
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


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """`extract_state_dict` of the `.pth` file at `path` (read with weights_only=True), named by its path."""
    source = os.fspath(path)
    return extract_state_dict(load_pth(source), source)


def write_pth(obj: Any, path: str | os.PathLike) -> str:
    """`torch.save(obj)` to `path` atomically (a temporary file renamed when complete); returns the path."""
    torch = torch_module()
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
