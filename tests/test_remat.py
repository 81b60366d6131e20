"""`config.remat`: recomputing each block's activations in the backward pass changes memory, never results: the
train step's loss, gradients and BatchNorm statistics are those without it."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

from smallbig_jax import config as config_lib
from smallbig_jax import sharding, steps
from smallbig_jax.models import REMAT_POLICIES


def test_config_names_the_model_policies():
    assert config_lib.REMAT == tuple(REMAT_POLICIES)


@functools.cache  # the step without remat is compiled once for both policies
def _step(remat: str):
    config = config_lib.official_recipe(variant="smallbig23", num_classes=5, num_frames=2, sampling="dense")
    config.model.base_width, config.data.crop_size, config.remat = 4, 32, remat
    mesh = sharding.make_mesh(num_devices=1)
    setup = steps.train_setup(config, mesh, steps_per_epoch=10)
    rng = np.random.default_rng(0)
    batch = {
        "clip": rng.standard_normal((2, 2, 32, 32, 3)).astype(np.float32),
        "label": np.array([1, 3], np.int32),
    }
    fn = steps.train_step_fn(setup.graphdef, setup.tx, config, setup.lr_schedule)
    return jax.jit(fn)(setup.state, batch)


@pytest.mark.parametrize("remat", ["block", "block_keep_convs"])
def test_remat_gives_the_same_step(remat):
    (plain_state, plain_metrics), (state, metrics) = _step("none"), _step(remat)
    np.testing.assert_allclose(metrics["loss"], plain_metrics["loss"], rtol=1e-6)
    for key in ("params", "batch_stats"):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), state[key], plain_state[key])
