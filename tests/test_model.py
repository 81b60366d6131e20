"""The SmallBig network family: parameter counts, shapes, equivalences and the fast layer formulations."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from smallbig_jax.models import build_model, count_params, cpu_formulation, layers

FORMULATIONS = [layers.PLAIN, cpu_formulation.CPU]  # each writes the pools, BatchNorm's training form, the ReLU

OFFICIAL_PARAMS = [
    ("smallbig50", 400, 24_370_640),
    ("smallbig50", 174, 23_907_566),
    ("smallbig101", 400, 43_414_992),
    ("res50", 400, 24_327_632),
    ("smallbig23", 400, 11_368_400),
    ("smallbig50_extra", 400, 32_292_816),
    ("slowonly50", 400, 32_454_096),
    ("slowonly50_extra", 400, 39_946_704),
]


def abstract_model(variant, num_classes):
    """Builds the full-size model's parameter shapes without allocating or initialising them."""
    return nnx.eval_shape(lambda: build_model(variant, num_classes))


@pytest.mark.parametrize("variant,num_classes,expected", OFFICIAL_PARAMS)
def test_parameter_counts_equal_official(variant, num_classes, expected):
    assert count_params(abstract_model(variant, num_classes)) == expected


def test_smallbig50_structure_matches_official_module_counts():
    model = abstract_model("smallbig50", 400)
    state = nnx.state(model)
    flat = nnx.to_flat_state(state)
    kernels = [p for p, _ in flat if p[-1] == "kernel" and p[0] != "fc"]
    bn_means = [p for p, _ in flat if p[-1] == "mean"]
    assert len(kernels) == 53  # Conv3d modules
    assert len(bn_means) == 92  # BatchNorm3d modules: stem 1, bottleneck 48, downsample 4, big 39
    assert sum(1 for p in bn_means if str(p[-2]).startswith("big_bn")) == 39
    assert model.layer2[0].conv1.kernel.shape == (1, 1, 1, 256, 128)
    assert model.layer4[2].conv3.kernel.shape == (1, 1, 1, 512, 2048)
    assert model.conv1.kernel.shape == (1, 7, 7, 3, 64)


def jitted(model):
    """A jitted forward of `model` with its current state (eval mode: the state does not change)."""
    graphdef, state = nnx.split(model)
    return jax.jit(lambda x: nnx.merge(graphdef, state)(x))


def apply(model, x):
    """Jitted `model(x)` that also writes back updated BatchNorm statistics (train mode)."""
    graphdef, state = nnx.split(model)

    def forward(state, x):
        m = nnx.merge(graphdef, state)
        return m(x), nnx.state(m)

    logits, new_state = jax.jit(forward)(state, x)
    nnx.update(model, new_state)
    return logits


def small_clip(key, n=2, t=8, size=32):
    return jax.random.normal(jax.random.key(key), (n, t, size, size, 3), jnp.float32)


def randomize_batchnorms(model, seed=0):
    """Non-trivial BN affine parameters (big views included) and running statistics."""
    rng = np.random.default_rng(seed)
    for _, module in nnx.iter_modules(model):
        if isinstance(module, layers.BatchNorm):
            c = module.scale.shape[0]
            module.scale[...] = jnp.asarray(rng.uniform(0.5, 1.5, c), jnp.float32)
            module.bias[...] = jnp.asarray(rng.normal(0, 0.1, c), jnp.float32)
            module.mean[...] = jnp.asarray(rng.normal(0, 0.1, c), jnp.float32)
            module.var[...] = jnp.asarray(rng.uniform(0.5, 2.0, c), jnp.float32)
    return model


def test_one_set_of_weights_serves_8_16_32_frames():
    model = build_model("smallbig50", num_classes=7, base_width=4)
    model.eval()
    forward = jitted(model)
    for t in (8, 16, 32):
        logits = forward(small_clip(t, n=2, t=t, size=32))
        assert logits.shape == (2, 7)
        assert logits.dtype == jnp.float32
        assert bool(jnp.all(jnp.isfinite(logits)))


def copy_shared_params(source, target):
    """Copies every variable `source` has into `target` (the small-view weights shared by res50 and SmallBig)."""
    target_flat = dict(nnx.to_flat_state(nnx.state(target)))
    for path, value in nnx.to_flat_state(nnx.state(source)):
        target_flat[path][...] = value[...]


@pytest.mark.parametrize("train", [True, False])
def test_smallbig_at_init_equals_res50_with_the_same_small_view_weights(train):
    sb = build_model("smallbig50", num_classes=5, base_width=8, seed=1)
    c2d = build_model("res50", num_classes=5, base_width=8, seed=2)
    copy_shared_params(c2d, sb)
    if not train:
        randomize_batchnorms(c2d)
        copy_shared_params(c2d, sb)
        for module in (sb, c2d):
            module.eval()
    x = small_clip(3, size=32)
    np.testing.assert_array_equal(np.asarray(apply(sb, x)), np.asarray(apply(c2d, x)))
    if train:  # the shared BNs saw identical batches, so their running statistics moved identically
        np.testing.assert_array_equal(np.asarray(sb.layer3[1].bn2.var[...]), np.asarray(c2d.layer3[1].bn2.var[...]))
        assert not np.allclose(np.asarray(sb.layer3[1].bn2.var[...]), 1.0)


def test_time_reversal_invariance_holds_and_frame_permutation_breaks_it():
    model = randomize_batchnorms(build_model("smallbig23", num_classes=6, base_width=8, seed=3), seed=4)
    model.eval()
    forward = jitted(model)
    x = small_clip(5, n=2, t=8, size=32)
    logits = forward(x)
    reversed_logits = forward(x[:, ::-1])
    np.testing.assert_allclose(np.asarray(reversed_logits), np.asarray(logits), rtol=1e-5, atol=1e-5)
    permuted = forward(x[:, jnp.array([0, 2, 4, 6, 1, 3, 5, 7])])
    assert float(jnp.max(jnp.abs(permuted - logits))) > 100 * float(jnp.max(jnp.abs(reversed_logits - logits))) + 1e-4


# --- The fast formulations against straightforward 3D references ---------------------------------------------


def reference_conv(self, x):
    """Conv via a 3D `lax.conv_general_dilated`, NDHWC, explicit padding."""
    kt, kh, kw = self.kernel_size
    s = self.stride
    return lax.conv_general_dilated(
        x.astype(self.dtype or x.dtype),
        self.kernel[...].astype(self.dtype or x.dtype),
        window_strides=(1, s, s),
        padding=[(k // 2, k // 2) for k in (kt, kh, kw)],
        dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
    )


def reference_pool(x, window, stride, padding):
    return lax.reduce_window(
        x, -jnp.inf, lax.max, (1, *window, 1), (1, *stride, 1), [(0, 0), *[(p, p) for p in padding], (0, 0)]
    )


def reference_max_pool_3x3x3(x):
    return reference_pool(x, (3, 3, 3), (1, 1, 1), (1, 1, 1))


def reference_max_pool_global_t_3x3(x):
    return reference_pool(x, (x.shape[1], 3, 3), (1, 1, 1), (0, 1, 1))


def reference_max_pool_1d(x, axis, window=3, stride=1, padding=1):
    win, strides, pads = [1] * 3, [1] * 3, [0] * 3
    win[axis - 1], strides[axis - 1], pads[axis - 1] = window, stride, padding
    return reference_pool(x, win, strides, pads)


@pytest.mark.parametrize(
    "kernel,stride,size",
    [((1, 3, 3), 1, 9), ((1, 3, 3), 1, 6), ((1, 3, 3), 2, 9), ((1, 3, 3), 2, 16), ((1, 7, 7), 2, 9), ((1, 1, 1), 2, 9)]
    + [((3, 1, 1), 1, 9)],
)
def test_folded_conv_equals_3d_conv_in_value_and_gradient(kernel, stride, size):
    conv = layers.Conv(5, 6, kernel, stride, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 4, size, size + 1, 5))
    graphdef, state = nnx.split(conv)

    def loss(state, x, fn):
        y = fn(nnx.merge(graphdef, state), x)
        return jnp.sum(y * jnp.cos(y)), y

    (_, fast), fast_grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(state, x, layers.Conv.__call__)
    (_, ref), ref_grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(state, x, reference_conv)
    np.testing.assert_allclose(fast, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(fast_grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "pool,ref",
    [
        (lambda m: m.max_pool_3x3x3, reference_max_pool_3x3x3),
        (lambda m: m.max_pool_global_t_3x3, reference_max_pool_global_t_3x3),
        (lambda m: lambda x: m.max_pool_1d(x, 2, stride=2), lambda x: reference_max_pool_1d(x, 2, stride=2)),
        (lambda m: lambda x: m.max_pool_1d(x, 3, stride=2), lambda x: reference_max_pool_1d(x, 3, stride=2)),
    ],
)
@pytest.mark.parametrize("shape", [(2, 8, 9, 10, 3), (1, 3, 7, 8, 2), (1, 1, 4, 5, 2)])
@pytest.mark.parametrize("formulation", FORMULATIONS, ids=lambda f: f.name)
def test_separable_max_pools_equal_reduce_window_in_value_and_gradient(pool, ref, shape, formulation):
    fast = pool(formulation)
    x = jax.random.normal(jax.random.key(0), shape)  # continuous values: no ties, so the gradient is unique
    weights = jax.random.normal(jax.random.key(1), jax.eval_shape(ref, x).shape)
    value_fast, grad_fast = jax.value_and_grad(lambda x: jnp.sum(fast(x) * weights))(x)
    value_ref, grad_ref = jax.value_and_grad(lambda x: jnp.sum(ref(x) * weights))(x)
    np.testing.assert_allclose(value_fast, value_ref, rtol=1e-6)
    np.testing.assert_allclose(grad_fast, grad_ref, rtol=1e-5, atol=1e-5)  # float32 summation order differs


@pytest.mark.parametrize("formulation", FORMULATIONS, ids=lambda f: f.name)
def test_max_pool_gradient_goes_to_the_first_maximum_of_each_window(formulation):
    """With ties (post-ReLU zeros, repeated values) each window's gradient goes to its first maximal element, as
    in PyTorch; the edge is repeated, so a window reaching past the end gives its share to the edge element."""
    rng = np.random.default_rng(0)
    for n, stride in [(7, 1), (2, 1), (6, 2), (7, 2)]:
        x = rng.integers(0, 3, size=(3, n, 2)).astype(np.float32)  # many ties
        dy_shape = jax.eval_shape(lambda x: formulation.max_pool_1d(x, 1, stride=stride), x).shape
        dy = rng.normal(size=dy_shape).astype(np.float32)
        _, vjp = jax.vjp(lambda x: formulation.max_pool_1d(x, 1, stride=stride), jnp.asarray(x))
        (dx,) = vjp(jnp.asarray(dy))
        expected = np.zeros_like(x)
        for b in range(3):
            for c in range(2):
                for i in range(dy_shape[1]):
                    window = [min(max(i * stride + k - 1, 0), n - 1) for k in range(3)]  # edge repeated
                    first = window[int(np.argmax(x[b, window, c]))]
                    expected[b, first, c] += dy[b, i, c]
        np.testing.assert_allclose(dx, expected, rtol=1e-6, err_msg=f"n={n} stride={stride}")


@pytest.mark.parametrize("formulation", FORMULATIONS, ids=lambda f: f.name)
def test_max_over_frames_gradient_goes_to_the_first_maximal_frame(formulation):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 3, size=(2, 5, 3, 4)).astype(np.float32)  # many ties between frames
    y, vjp = jax.vjp(formulation.max_over_frames, jnp.asarray(x))
    dy = rng.normal(size=y.shape).astype(np.float32)
    (dx,) = vjp(jnp.asarray(dy))
    expected = np.zeros_like(x)
    np.put_along_axis(expected, np.argmax(x, axis=1)[:, None], dy, axis=1)  # np.argmax: the first maximum
    np.testing.assert_array_equal(y, x.max(axis=1, keepdims=True))
    np.testing.assert_array_equal(dx, expected)


@pytest.mark.parametrize("formulation", FORMULATIONS, ids=lambda f: f.name)
def test_broadcast_frames_gradient_sums_the_frames(formulation):
    x = jax.random.normal(jax.random.key(0), (2, 1, 3, 4))
    y, vjp = jax.vjp(lambda x: formulation.broadcast_frames(x, 5), x)
    dy = jax.random.normal(jax.random.key(1), y.shape)
    (dx,) = vjp(dy)
    np.testing.assert_array_equal(y, jnp.broadcast_to(x, (2, 5, 3, 4)))
    np.testing.assert_allclose(dx, jnp.sum(dy, axis=1, keepdims=True), rtol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.int8])
def test_stored_keeps_every_bit(dtype):
    """The CPU formulation's memory barrier returns its input bit for bit: signed zeros, infinities and NaN too."""
    if jnp.issubdtype(dtype, jnp.floating):
        a = jnp.array([[-0.0, 0.0, 1.5, -2.25], [jnp.inf, -jnp.inf, jnp.nan, 3e-39]], dtype)
    else:
        a = jnp.array([[-128, 0, 1, 127], [-1, 2, 3, 4]], dtype)
    kept = jax.jit(cpu_formulation._stored)(a)
    assert kept.dtype == a.dtype and kept.shape == a.shape
    np.testing.assert_array_equal(lax.bitcast_convert_type(kept, jnp.uint8), lax.bitcast_convert_type(a, jnp.uint8))


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("formulation", FORMULATIONS, ids=lambda f: f.name)
def test_batchnorm_training_gradient_equals_autodiff_of_its_formula(groups, formulation):
    """BatchNorm's training form (the CPU one with its hand-written backward) against autodiff of
    (x - mean) / sqrt(var + eps) * scale + bias."""
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(0), (groups, 30, 5), jnp.float64) * 2 + 1
        scale = jax.random.normal(jax.random.key(1), (5,), jnp.float64)
        bias = jax.random.normal(jax.random.key(2), (5,), jnp.float64)
        w = jax.random.normal(jax.random.key(3), x.shape, jnp.float64)

        def reference(x, scale, bias):
            mean = jnp.mean(x, axis=1, keepdims=True)
            var = jnp.var(x, axis=1, keepdims=True)
            return (x - mean) / jnp.sqrt(var + 1e-5) * scale + bias

        def loss(fn):
            return lambda x, scale, bias: jnp.sum(jnp.sin(fn(x, scale, bias)) * w)

        ours = jax.grad(loss(lambda *a: formulation.batch_norm_train(*a, 1e-5)[0]), argnums=(0, 1, 2))(x, scale, bias)
        ref = jax.grad(loss(reference), argnums=(0, 1, 2))(x, scale, bias)
        for a, b in zip(ours, ref):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
        y, mean, var = formulation.batch_norm_train(x, scale, bias, 1e-5)
        np.testing.assert_allclose(y, reference(x, scale, bias), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(var, jnp.var(x, axis=1, keepdims=True), rtol=1e-12)


@pytest.mark.parametrize("formulation", [layers.PLAIN, cpu_formulation.CPU])
def test_block_output_relu_equals_relu_in_value_and_gradient(formulation):
    x = jnp.array([[-2.0, 0.0, 3.0], [1.5, -0.5, 0.0]])
    y, vjp = jax.vjp(formulation.block_output_relu, x)
    (dx,) = vjp(jnp.full_like(x, 2.0))
    np.testing.assert_array_equal(y, jax.nn.relu(x))
    np.testing.assert_array_equal(dx, jnp.where(x > 0, 2.0, 0.0))  # zero gradient at 0, as jax.nn.relu


@dataclasses.dataclass(frozen=True, eq=False)
class ReferenceFormulation(layers.Formulation):
    """The big views' pools as one 3D `reduce_window` each, not built from the 1D pool."""

    def max_pool_3x3x3(self, x):
        return reference_max_pool_3x3x3(x)

    def max_pool_global_t_3x3(self, x):
        return reference_max_pool_global_t_3x3(x)


REFERENCE = ReferenceFormulation(  # reduce_window pools; the convs are 3D convs (`reference_conv`)
    **{f.name: getattr(layers.PLAIN, f.name) for f in dataclasses.fields(layers.PLAIN)}
    | {"name": "reference", "max_pool_1d": reference_max_pool_1d}
)


def _whole_network_logits_and_grads(formulation):
    """Logits and parameter gradients of a narrow SmallBig-23 (eval mode, float64) in `formulation`, compiled with
    its options."""
    model = build_model(
        "smallbig23",
        num_classes=5,
        base_width=8,
        seed=6,
        dtype=jnp.float64,
        param_dtype=jnp.float64,
        formulation=formulation,
    )
    randomize_batchnorms(model, seed=7)
    model.eval()
    graphdef, state = nnx.split(model)
    x = small_clip(8, n=2, t=4, size=32).astype(jnp.float64)
    labels = jnp.array([1, 3])

    def loss(state):
        logits = nnx.merge(graphdef, state)(x)
        return jnp.mean(cross_entropy(logits, labels)), logits

    options = formulation.compiler_options("cpu")
    (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True), compiler_options=options)(state)
    return logits, nnx.state(grads, nnx.Param)


@pytest.fixture(scope="module")
def reference_network():
    with jax.enable_x64(True), pytest.MonkeyPatch.context() as patch:
        patch.setattr(layers.Conv, "__call__", reference_conv)
        return _whole_network_logits_and_grads(REFERENCE)


@pytest.mark.parametrize("formulation", [layers.PLAIN, cpu_formulation.CPU], ids=lambda f: f.name)
def test_whole_network_equals_its_3d_reference_in_value_and_gradient(reference_network, formulation):
    """SmallBig-23 (narrow) run with the model's layers in each formulation and with 3D convs and reduce_window
    pools, in float64.

    float64 so that "equal up to rounding" is sharp: in float32 the deep backward of a sum such as the stem BN's
    bias gradient cancels to a few 1e-4 of its terms and would hide a real difference of that size.
    """
    with jax.enable_x64(True):
        logits, grads = _whole_network_logits_and_grads(formulation)
    ref_logits, ref_grads = reference_network
    assert logits.dtype == jnp.float64
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-10, atol=1e-10)
    flat_ref = dict(nnx.to_flat_state(ref_grads))
    for path, g in nnx.to_flat_state(grads):
        np.testing.assert_allclose(g[...], flat_ref[path][...], rtol=1e-8, atol=1e-10, err_msg=str(path))


def cross_entropy(logits, labels):
    return -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1)[:, 0]


# --- Initialisation, BatchNorm, dtypes, bad input -------------------------------------------------------------


def test_initialisation_follows_the_official_code():
    model = build_model("smallbig50", num_classes=10, base_width=64, seed=0)
    block = model.layer3[2]
    for bn in (block.big_bn1, block.big_bn2, block.big_bn3):
        assert float(jnp.abs(bn.scale[...]).max()) == 0.0 and float(jnp.abs(bn.bias[...]).max()) == 0.0
    assert float(jnp.min(block.bn3.scale[...])) == 1.0  # bn3 is not zero-initialised
    kernel = np.asarray(model.layer3[0].conv1.kernel[...])  # [1,1,1,512,256]: fan_out = 256
    assert abs(kernel.std() / np.sqrt(2 / 256) - 1) < 0.02
    assert np.abs(kernel).max() > 3.5 * np.sqrt(2 / 256)  # an untruncated normal, like torch's kaiming_normal_
    bound = 1 / np.sqrt(2048)
    assert np.abs(np.asarray(model.fc.kernel[...])).max() <= bound
    assert np.abs(np.asarray(model.fc.bias[...])).max() <= bound


def test_batchnorm_matches_pytorch_semantics():
    bn = layers.BatchNorm(3)
    bn.scale[...] = jnp.array([1.0, 2.0, 0.5])
    bn.bias[...] = jnp.array([0.0, 1.0, -1.0])
    x = jax.random.normal(jax.random.key(0), (2, 3, 4, 5, 3)) * 3 + 1
    y = bn(x)
    x64 = np.asarray(x, np.float64).reshape(-1, 3)
    mean, var = x64.mean(0), x64.var(0)
    expected = (x64 - mean) / np.sqrt(var + 1e-5) * [1.0, 2.0, 0.5] + [0.0, 1.0, -1.0]
    np.testing.assert_allclose(np.asarray(y).reshape(-1, 3), expected, rtol=1e-5, atol=1e-5)
    n = x64.shape[0]
    np.testing.assert_allclose(bn.mean[...], 0.1 * mean, rtol=1e-5)
    np.testing.assert_allclose(bn.var[...], 0.9 + 0.1 * var * n / (n - 1), rtol=1e-5)  # unbiased, as torch
    bn.use_running_average = True
    before = np.asarray(bn.var[...])
    y_eval = bn(x)
    np.testing.assert_array_equal(np.asarray(bn.var[...]), before)
    expected_eval = (x64 - 0.1 * mean) / np.sqrt(before + 1e-5) * [1.0, 2.0, 0.5] + [0.0, 1.0, -1.0]
    np.testing.assert_allclose(np.asarray(y_eval).reshape(-1, 3), expected_eval, rtol=1e-4, atol=1e-4)


def test_model_train_and_eval_modes_switch_every_batchnorm():
    model = build_model("smallbig23", num_classes=3, base_width=4)
    bns = [m for _, m in nnx.iter_modules(model) if isinstance(m, layers.BatchNorm)]
    assert bns and not any(bn.use_running_average for bn in bns)
    model.eval()
    assert all(bn.use_running_average for bn in bns)
    x = small_clip(0, n=1, t=4, size=32)
    before = jax.tree.leaves(nnx.state(model, nnx.BatchStat))
    apply(model, x)
    after = jax.tree.leaves(nnx.state(model, nnx.BatchStat))
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
    model.train()
    apply(model, x)
    after_train = jax.tree.leaves(nnx.state(model, nnx.BatchStat))
    assert not all(np.array_equal(a, b) for a, b in zip(before, after_train))


def test_bfloat16_compute_stays_close_to_float32():
    """Same weights; bf16 convs/activations, float32 params, BN statistics and head. Bound: 5% of the logit range."""
    f32 = build_model("smallbig23", num_classes=10, base_width=8, seed=9)
    bf16 = build_model("smallbig23", num_classes=10, base_width=8, seed=9, dtype=jnp.bfloat16)
    copy_shared_params(f32, bf16)
    assert bf16.layer2[0].conv2.kernel.dtype == jnp.float32
    x = small_clip(10, n=4, t=8, size=32)
    ref, out = apply(f32, x), apply(bf16, x)
    assert out.dtype == jnp.float32
    assert bf16.layer2[0].bn1.var.dtype == jnp.float32
    span = float(jnp.max(ref) - jnp.min(ref))
    assert float(jnp.max(jnp.abs(out - ref))) <= 0.05 * span
    assert float(jnp.max(jnp.abs(out - ref))) > 0  # it really ran in a lower precision


def test_bad_arguments_get_clear_errors():
    with pytest.raises(ValueError, match="unknown variant 'smallbig34'.*smallbig50"):
        build_model("smallbig34", 10)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("res50", 0)
    model = build_model("smallbig23", 3, base_width=4)
    with pytest.raises(ValueError, match=r"\[N, T, H, W, 3\]"):
        model(jnp.zeros((1, 3, 8, 32, 32)))  # NCTHW instead of NTHWC


@pytest.mark.parametrize("variant", ["smallbig23", "smallbig50_extra", "slowonly50_extra"])
def test_every_block_kind_runs_forward_and_backward(variant):
    """Big views, the context gate and the 3x1x1 temporal conv (res50 and the depth variants are covered above)."""
    model = randomize_batchnorms(build_model(variant, num_classes=3, base_width=4))  # no zero BN blocks a gradient
    graphdef, state = nnx.split(model)
    x = small_clip(11, n=2, t=4, size=32)

    def loss(state):
        return jnp.sum(nnx.merge(graphdef, state)(x) ** 2)

    grads = jax.jit(jax.grad(loss))(state)
    norms = {str(p): float(jnp.linalg.norm(g[...])) for p, g in nnx.to_flat_state(nnx.state(grads, nnx.Param))}
    assert all(np.isfinite(list(norms.values())))
    assert all(n > 0 for n in norms.values()), [p for p, n in norms.items() if n == 0]
