"""The formulations ("plain": plain lax ops and autodiff; "cpu": XLA:CPU's, smallbig_jax/models/cpu_formulation.py)
give the same values and gradients in a SmallBig block; the choice is made when the model or step is built, by
name or by platform ("auto"), and brings its compiler options with it."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from smallbig_jax import config as config_lib
from smallbig_jax import sharding, steps
from smallbig_jax.models import FORMULATIONS, build_model, resolve_formulation, smallbig
from smallbig_jax.models.cpu_formulation import CPU
from smallbig_jax.models.layers import PLAIN, conv2d
from smallbig_jax.variants import SMALLBIG


def test_cpu_compiler_options_give_convolutions_to_xla_and_keep_dots_in_ynnpack():
    cpu = jax.devices("cpu")[0]
    x, w = jax.device_put(jnp.ones((2, 16, 16, 64)), cpu), jax.device_put(jnp.ones((3, 3, 64, 64)), cpu)

    def conv_then_dot(x, w):
        y = conv2d(x, w, 1, 1)
        return y.reshape(-1, 64) @ w[0, 0]

    hlo = jax.jit(conv_then_dot, compiler_options=CPU.compiler_options("cpu")).lower(x, w).compile().as_text()
    ynn_bodies = [
        hlo.split(f"%{name} ")[1].split("\n}")[0] for name in re.findall(r"calls=%([\w.-]+).*__ynn_fusion", hlo)
    ]
    assert "convolution(" in hlo and not any("convolution(" in body for body in ynn_bodies), hlo
    assert any(" dot(" in body for body in ynn_bodies), hlo
    assert CPU.compiler_options("gpu") is None and CPU.compiler_options("tpu") is None
    assert PLAIN.compiler_options("cpu") is None


def test_formulation_is_chosen_by_name_or_by_platform():
    assert resolve_formulation("auto", "cpu") is CPU and resolve_formulation("auto", "gpu") is PLAIN
    assert resolve_formulation("plain", "cpu") is PLAIN and resolve_formulation("cpu", "tpu") is CPU
    assert resolve_formulation(CPU) is CPU
    with pytest.raises(ValueError, match="formulation 'xla'"):
        resolve_formulation("xla")
    assert config_lib.FORMULATIONS == ("auto", *FORMULATIONS)  # the config's names, kept without importing JAX
    config = config_lib.official_recipe(variant="smallbig23", num_classes=3, num_frames=4, sampling="dense")
    assert config.model.formulation == "auto"
    mesh = sharding.make_mesh(num_devices=1)
    assert steps.formulation(config, mesh) is CPU  # the mesh is on the CPU
    config.model.formulation = "plain"
    assert steps.formulation(config, mesh) is PLAIN
    config.model.formulation = "cudnn"
    with pytest.raises(ValueError, match="formulation 'cudnn'"):  # config.check_config refuses it first
        steps.formulation(config, mesh)
    config.model.formulation = "cpu"
    config.model.base_width = 4
    model = nnx.eval_shape(lambda: steps.model_from_config(config, mesh))
    assert model.formulation is CPU and model.layer1[0].bn1.formulation is CPU
    # The parameters do not depend on the formulation: a checkpoint of one restores in the other.
    plain = nnx.eval_shape(lambda: build_model("smallbig23", 3, base_width=4, formulation="plain"))
    shapes = lambda m: jax.tree.map(lambda v: (v.shape, v.dtype), nnx.to_pure_dict(nnx.state(m)))  # noqa: E731
    assert shapes(plain) == shapes(model)


def _smallbig_block_grads(formulation, stride: int, dtype=jnp.float64):
    """Value and parameter gradients of one SmallBig block (train mode, non-zero big-view BNs); parameters in float64
    (float32 for a bfloat16 block), compiled with the formulation's options, as the train step is."""
    kw = dict(dtype=dtype, param_dtype=jnp.float64 if dtype == jnp.float64 else jnp.float32)
    block = smallbig.Block(8, 4, stride, SMALLBIG, formulation=formulation, rngs=nnx.Rngs(3), **kw)
    for bn in (block.big_bn1, block.big_bn2, block.big_bn3):
        bn.scale[...] = jnp.full_like(bn.scale[...], 0.7)
    graphdef, params, rest = nnx.split(block, nnx.Param, ...)
    x = jax.random.normal(jax.random.key(2), (2, 3, 12, 12, 8), kw["param_dtype"]).astype(dtype)

    def loss(params):
        y = nnx.merge(graphdef, params, rest, copy=True)(x)
        return jnp.sum(jnp.tanh(y) * jnp.cos(y)), y

    options = formulation.compiler_options("cpu")
    return jax.jit(jax.value_and_grad(loss, has_aux=True), compiler_options=options)(params)


@pytest.mark.parametrize("stride", [1, 2])
def test_block_same_under_both_formulations(stride):
    """A SmallBig block (3 shared convs, big views, shortcut; train mode) gives the same output and gradients with
    the "plain" and "cpu" formulations. (The whole network in both is checked against 3D convs and `reduce_window`
    pools in float64 by tests/test_model.py.)"""
    with jax.enable_x64(True):
        (_, y_ref), g_ref = _smallbig_block_grads(PLAIN, stride)
        (_, y), g = _smallbig_block_grads(CPU, stride)
    flat_ref = dict(nnx.to_flat_state(g_ref))
    np.testing.assert_allclose(y, y_ref, rtol=1e-10, atol=1e-10)
    for path, v in nnx.to_flat_state(g):
        np.testing.assert_allclose(v[...], flat_ref[path][...], rtol=1e-8, atol=1e-10, err_msg=str(path))


def test_bfloat16_block_gradient_same_under_both_formulations():
    """The CPU formulation's bfloat16 path (one-byte pool indices, values kept through `_stored` as 16-bit words)
    gives the plain formulation's gradient up to bfloat16 rounding in another order. Bound: 5% of its norm."""
    grads = {}
    for formulation in (PLAIN, CPU):
        (_, y), g = _smallbig_block_grads(formulation, 1, jnp.bfloat16)
        assert y.dtype == jnp.bfloat16
        grads[formulation.name] = jnp.concatenate([v[...].astype(jnp.float32).ravel() for _, v in nnx.to_flat_state(g)])
    difference = float(jnp.linalg.norm(grads["cpu"] - grads["plain"]))
    assert bool(jnp.all(jnp.isfinite(grads["cpu"])))
    assert difference <= 0.05 * float(jnp.linalg.norm(grads["plain"])), difference
