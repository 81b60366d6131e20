"""A model's state as arrays by NNX path, and the one write of such arrays into a model."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from smallbig_jax.errors import ConversionError
from smallbig_jax.models import SmallBigNet, build_model

log = logging.getLogger(__name__)


def model_arrays(model: nnx.Module) -> dict[tuple, np.ndarray]:
    """NNX path -> numpy array of every state leaf of `model`."""
    return {tuple(p): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model))}


def set_arrays(model: nnx.Module, arrays: Mapping[tuple, Any], *, complete: bool = False) -> None:
    """Overwrites, in place, the model's state leaves whose NNX paths are in `arrays` (path parts compared as text:
    "0" and 0 are the same index), each cast to the leaf's dtype; `complete`: every leaf must be given.

    Raises one `ConversionError` whose `problems` list every missing leaf, array without a leaf and wrong shape;
    nothing is written then. The one write of arrays into a model.
    """
    flat = nnx.to_flat_state(nnx.state(model))
    leaves = {tuple(map(str, path)): var for path, var in flat}
    given = {tuple(map(str, path)): value for path, value in arrays.items()}
    expected = {path: tuple(var.get_value().shape) for path, var in leaves.items()}
    problems = [f"missing {'.'.join(p)} {s}" for p, s in expected.items() if complete and p not in given]
    problems += [f"unexpected {'.'.join(p)} {np.shape(v)}" for p, v in given.items() if p not in expected]
    problems += [
        f"shape of {'.'.join(p)}: expected {expected[p]}, found {np.shape(v)}"
        for p, v in given.items()
        if p in expected and expected[p] != np.shape(v)
    ]
    if problems:
        raise ConversionError("the arrays do not fit the model", problems)
    for path, var in leaves.items():
        if path in given:
            var.set_value(jnp.asarray(given[path], dtype=var.get_value().dtype))
    nnx.update(model, nnx.from_flat_state(flat))


def arrays_to_model(
    arrays: Mapping[tuple, Any], variant: str, num_classes: int, base_width: int = 64, dtype: Any = jnp.float32
) -> SmallBigNet:
    """A `SmallBigNet` (eval mode, compute `dtype`) whose every state leaf comes from `arrays` (NNX path -> array,
    JAX layout), written by `set_arrays(complete=True)`."""
    model = nnx.eval_shape(lambda: build_model(variant, num_classes, base_width=base_width, dtype=dtype))
    set_arrays(model, arrays, complete=True)
    model.eval()
    return model


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
