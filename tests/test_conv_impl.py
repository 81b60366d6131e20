"""The formulations ("xla": plain lax ops and autodiff; "cpu": the CPU layouts of the elementwise passes) give the
same values and gradients in a SmallBig block; the CPU compiler options reach XLA."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from smallbig_jax.models import layers


@pytest.fixture
def impl():
    saved = layers._conv_impl
    yield layers.set_conv_impl
    layers.set_conv_impl(saved)


def test_cpu_compiler_options_give_convolutions_to_xla_and_keep_dots_in_ynnpack():
    cpu = jax.devices("cpu")[0]
    x, w = jax.device_put(jnp.ones((2, 16, 16, 64)), cpu), jax.device_put(jnp.ones((3, 3, 64, 64)), cpu)

    def conv_then_dot(x, w):
        y = layers.conv2d(x, w, 1, 1)
        return y.reshape(-1, 64) @ w[0, 0]

    hlo = jax.jit(conv_then_dot, compiler_options=layers.compiler_options("cpu")).lower(x, w).compile().as_text()
    ynn_bodies = [
        hlo.split(f"%{name} ")[1].split("\n}")[0] for name in re.findall(r"calls=%([\w.-]+).*__ynn_fusion", hlo)
    ]
    assert "convolution(" in hlo and not any("convolution(" in body for body in ynn_bodies), hlo
    assert any(" dot(" in body for body in ynn_bodies), hlo
    assert layers.compiler_options("gpu") is None and layers.compiler_options("tpu") is None


def test_auto_picks_cpu_formulation_on_cpu_only(impl):
    impl("auto")
    assert layers.conv_impl() == ("cpu" if jax.default_backend() == "cpu" else "xla")
    with pytest.raises(ValueError, match="conv impl"):
        impl("cudnn")


def _smallbig_block_grads(impl_name: str, stride: int, dtype=jnp.float64):
    """Value and parameter gradients of one SmallBig block (train mode, non-zero big-view BNs); parameters in float64
    (float32 for a bfloat16 block). The "cpu" run is compiled with the CPU compiler options, as training is."""
    from smallbig_jax.models import smallbig
    from smallbig_jax.variants import SMALLBIG

    layers.set_conv_impl(impl_name)
    kw = dict(dtype=dtype, param_dtype=jnp.float64 if dtype == jnp.float64 else jnp.float32)
    block = smallbig.Block(8, 4, stride, SMALLBIG, rngs=nnx.Rngs(3), **kw)
    for bn in (block.big_bn1, block.big_bn2, block.big_bn3):
        bn.scale[...] = jnp.full_like(bn.scale[...], 0.7)
    graphdef, params, rest = nnx.split(block, nnx.Param, ...)
    x = jax.random.normal(jax.random.key(2), (2, 3, 12, 12, 8), kw["param_dtype"]).astype(dtype)

    def loss(params):
        y = nnx.merge(graphdef, params, rest, copy=True)(x)
        return jnp.sum(jnp.tanh(y) * jnp.cos(y)), y

    options = layers.compiler_options("cpu") if impl_name == "cpu" else None  # compiled as the CPU train step is
    return jax.jit(jax.value_and_grad(loss, has_aux=True), compiler_options=options)(params)


@pytest.mark.parametrize("stride", [1, 2])
def test_block_same_under_both_formulations(impl, stride):
    """A SmallBig block (3 shared convs, big views, shortcut; train mode) gives the same output and gradients with
    the "xla" and "cpu" formulations. (The whole network, in the default formulation, is checked against 3D
    convs in float64 by tests/test_model.py.)"""
    with jax.enable_x64(True):
        (_, y_ref), g_ref = _smallbig_block_grads("xla", stride)
        runs = [_smallbig_block_grads("cpu", stride)]
    flat_ref = dict(nnx.to_flat_state(g_ref))
    for (_, y), g in runs:
        np.testing.assert_allclose(y, y_ref, rtol=1e-10, atol=1e-10)
        for path, v in nnx.to_flat_state(g):
            np.testing.assert_allclose(v[...], flat_ref[path][...], rtol=1e-8, atol=1e-10, err_msg=str(path))


def test_bfloat16_block_gradient_same_under_both_formulations(impl):
    """The CPU formulation's bfloat16 path (one-byte pool indices, values kept through `_stored` as 16-bit words)
    gives the plain XLA formulation's gradient up to bfloat16 rounding in another order (measured: identical).
    Bound: 5% of its norm."""
    grads = {}
    for name in ("xla", "cpu"):
        (_, y), g = _smallbig_block_grads(name, 1, jnp.bfloat16)
        assert y.dtype == jnp.bfloat16
        grads[name] = jnp.concatenate([v[...].astype(jnp.float32).ravel() for _, v in nnx.to_flat_state(g)])
    difference = float(jnp.linalg.norm(grads["cpu"] - grads["xla"]))
    assert bool(jnp.all(jnp.isfinite(grads["cpu"])))
    assert difference <= 0.05 * float(jnp.linalg.norm(grads["xla"])), difference
