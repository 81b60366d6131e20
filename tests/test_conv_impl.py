"""The conv formulations ("xla": lax conv + autodiff; "matmul": 1x1 as matmuls, kxk with a hand-written backward)
give the same values and gradients, alone and in a whole network."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from smallbig_jax.models import build_model, layers


@pytest.fixture
def impl():
    saved = layers._conv_impl
    yield layers.set_conv_impl
    layers.set_conv_impl(saved)


@pytest.mark.parametrize("k,stride", [(3, 1), (3, 2), (7, 2), (1, 1), (1, 2)])
def test_conv2d_formulations_agree_in_value_and_gradient(impl, k, stride):
    x = jax.random.normal(jax.random.key(0), (3, 11, 10, 5))
    w = jax.random.normal(jax.random.key(1), (k, k, 5, 6))

    def run(name):
        impl(name)
        loss = lambda x, w: jnp.sum(jnp.sin(layers.conv2d(x, w, stride, k // 2)))
        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(x, w)

    (v_xla, g_xla), (v_mm, g_mm) = run("xla"), run("matmul")
    np.testing.assert_allclose(v_mm, v_xla, rtol=1e-5)
    for a, b in zip(g_mm, g_xla):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_auto_picks_matmul_on_cpu_only(impl):
    impl("auto")
    assert layers.conv_impl() == ("matmul" if jax.default_backend() == "cpu" else "xla")
    with pytest.raises(ValueError, match="conv impl"):
        impl("cudnn")


def test_whole_network_same_under_both_formulations(impl):
    """SmallBig-23 (narrow), train mode, float64: logits and every parameter gradient agree to rounding."""
    with jax.enable_x64(True):
        model = build_model("smallbig23", 5, base_width=4, seed=3, dtype=jnp.float64, param_dtype=jnp.float64)
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        x = jax.random.normal(jax.random.key(2), (2, 2, 32, 32, 3), jnp.float64)

        def loss(params):
            logits = nnx.merge(graphdef, params, rest, copy=True)(x)
            return jnp.sum(jnp.tanh(logits) * jnp.arange(5.0)), logits

        def run(name):
            impl(name)
            return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)

        (_, l_xla), g_xla = run("xla")
        (_, l_mm), g_mm = run("matmul")
    np.testing.assert_allclose(l_mm, l_xla, rtol=1e-10, atol=1e-10)
    flat = dict(nnx.to_flat_state(g_xla))
    for path, g in nnx.to_flat_state(g_mm):
        np.testing.assert_allclose(g[...], flat[path][...], rtol=1e-8, atol=1e-10, err_msg=str(path))


def test_fused_views_same_as_separate_calls(monkeypatch):
    """FUSE_VIEWS (each shared conv once on the concatenated small and big views) changes no value or gradient."""
    from smallbig_jax.models import smallbig

    with jax.enable_x64(True):  # float64: summation order alone cannot hide a real difference
        model = build_model("smallbig23", 5, base_width=4, seed=3, dtype=jnp.float64, param_dtype=jnp.float64)
        for path, bn in nnx.iter_graph(model):  # non-zero big-view BNs, so the big views matter
            if isinstance(bn, layers.BatchNorm) and any("big_bn" in str(p) for p in path):
                bn.scale[...] = jnp.full_like(bn.scale[...], 0.7)
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        x = jax.random.normal(jax.random.key(2), (2, 2, 32, 32, 3), jnp.float64)

        def run(fuse):
            monkeypatch.setattr(smallbig, "FUSE_VIEWS", fuse)

            def loss(params):
                logits = nnx.merge(graphdef, params, rest, copy=True)(x)
                return jnp.sum(jnp.tanh(logits) * jnp.arange(5.0)), logits

            return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)

        (_, l_sep), g_sep = run(False)
        (_, l_fused), g_fused = run(True)
    np.testing.assert_allclose(l_fused, l_sep, rtol=1e-10, atol=1e-10)
    flat = dict(nnx.to_flat_state(g_sep))
    for path, g in nnx.to_flat_state(g_fused):
        np.testing.assert_allclose(g[...], flat[path][...], rtol=1e-8, atol=1e-10, err_msg=str(path))
