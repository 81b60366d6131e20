"""Converted checkpoints on disk: an Orbax checkpoint of the model state plus two small JSON files.

Layout of a converted checkpoint directory:

    DIR/model_config.json        {"format": "smallbig_jax.converted", "format_version": 1, "variant": ...,
                                  "official_name": ..., "num_classes": ..., "base_width": ..., "layout": "NTHWC"}
    DIR/conversion_report.json   what was read, inferred, checked and converted
    DIR/state/                   Orbax (StandardCheckpointer) checkpoint of `nnx.to_pure_dict(nnx.state(model))`:
                                 params and BatchNorm statistics, float32, NNX paths (`layer2/0/big_bn1/scale`, ...)

Writes are atomic: everything is built in a temporary sibling directory that is renamed to DIR only when complete,
so a failed conversion leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx, traverse_util

from smallbig_jax.convert.state import arrays_to_model
from smallbig_jax.errors import CheckpointFormatError, ConversionError
from smallbig_jax.models import VARIANTS, SmallBigNet

FORMAT = "smallbig_jax.converted"
FORMAT_VERSION = 1
CONFIG_FILE = "model_config.json"
REPORT_FILE = "conversion_report.json"
STATE_DIR = "state"


def model_config(model: SmallBigNet) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "variant": model.variant,
        "official_name": VARIANTS[model.variant].official_name,
        "num_classes": int(model.num_classes),
        "base_width": int(model.base_width),
        "param_dtype": "float32",
        "layout": "NTHWC",
    }


def atomic_directory(output_dir: str | os.PathLike, fill: Callable[[str], None], *, overwrite: bool = False) -> str:
    """Calls `fill(tmp)` on a fresh temporary sibling of `output_dir`, then renames it to `output_dir`.

    On any exception the temporary directory is removed and `output_dir` is left as it was.
    """
    output_dir = os.path.abspath(os.fspath(output_dir))
    if os.path.exists(output_dir) and not overwrite:
        raise FileExistsError(f"{output_dir} exists; choose a new path or pass overwrite=True (--overwrite)")
    parent = os.path.dirname(output_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(output_dir)}.tmp-{uuid.uuid4().hex[:8]}")
    old = None
    try:
        os.makedirs(tmp)
        fill(tmp)
        if os.path.exists(output_dir):
            old = f"{tmp}.old"
            os.rename(output_dir, old)
        os.rename(tmp, output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not os.path.exists(output_dir):
            os.rename(old, output_dir)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return output_dir


def save_converted(
    output_dir: str | os.PathLike, model: SmallBigNet, report: dict[str, Any] | None = None, *, overwrite: bool = False
) -> str:
    """Writes `model`'s state (Orbax), `model_config.json` and `conversion_report.json` to `output_dir` atomically."""
    pure = jax.tree.map(lambda x: np.asarray(x), nnx.to_pure_dict(nnx.state(model)))
    config = model_config(model)

    def fill(tmp: str) -> None:
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(os.path.join(tmp, STATE_DIR), pure)
            checkpointer.wait_until_finished()
        with open(os.path.join(tmp, CONFIG_FILE), "w") as f:
            json.dump(config, f, indent=2)
            f.write("\n")
        with open(os.path.join(tmp, REPORT_FILE), "w") as f:
            json.dump(report or {}, f, indent=2, default=str)
            f.write("\n")

    return atomic_directory(output_dir, fill, overwrite=overwrite)


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    path = os.fspath(path)
    config_path = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(config_path) or not os.path.isdir(os.path.join(path, STATE_DIR)):
        raise CheckpointFormatError(
            f"{path}: not a converted checkpoint (expected {CONFIG_FILE} and {STATE_DIR}/; "
            "write one with smallbig-jax convert)"
        )
    with open(config_path) as f:
        config = json.load(f)
    if config.get("format") != FORMAT or config.get("format_version") != FORMAT_VERSION:
        raise CheckpointFormatError(
            f"{config_path}: unknown format {config.get('format')!r} v{config.get('format_version')}"
        )
    return config


def load_converted_state(path: str | os.PathLike) -> tuple[dict[str, Any], dict]:
    """(config, pure state dict of numpy arrays) of a converted checkpoint."""
    config = read_config(path)
    with ocp.StandardCheckpointer() as checkpointer:
        pure = checkpointer.restore(os.path.join(os.path.abspath(os.fspath(path)), STATE_DIR))
    return config, pure


def load_converted_model(path: str | os.PathLike, *, dtype: Any = jnp.float32, train: bool = False) -> SmallBigNet:
    """A ready `SmallBigNet` from a converted checkpoint directory: eval mode unless `train=True`.

    `dtype` is the compute dtype (e.g. jnp.bfloat16); parameters stay float32. Raises `CheckpointFormatError` when
    the stored state does not match the model described by `model_config.json` (paths and shapes).
    """
    config, pure = load_converted_state(path)
    try:
        arrays = traverse_util.flatten_dict(pure)
        model = arrays_to_model(arrays, config["variant"], config["num_classes"], config["base_width"], dtype)
    except ConversionError as error:
        raise CheckpointFormatError(
            f"{path}: state does not match {config}:\n  " + "\n  ".join(error.problems)
        ) from None
    if train:
        model.train()
    return model
