"""Layers of SmallBigNet written for speed on XLA: frame-folded convs, separable max-pools, BatchNorm.

Layout is NTHWC throughout. Every conv of SmallBigNet has temporal kernel 1 (slowonly's 3x1x1 aside), so a conv is
a 2D conv over frames folded into the batch; a 3x3x3 max-pool is three 1D maxima of shifted slices, whose backward
is far cheaper than `lax.reduce_window`'s select-and-scatter.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

Array = jax.Array
Dtype = Any

# torch.nn.init.kaiming_normal_(mode='fan_out', nonlinearity='relu'): an untruncated normal, std sqrt(2 / fan_out).
kaiming_normal_fan_out = jax.nn.initializers.variance_scaling(2.0, "fan_out", "normal", in_axis=-2, out_axis=-1)


def _matmul(a: Array, b: Array) -> Array:
    """a @ b accumulated in at least float32 (XLA:CPU would accumulate a bfloat16 dot in bfloat16), in a's dtype."""
    return jnp.matmul(a, b, preferred_element_type=jnp.promote_types(a.dtype, jnp.float32)).astype(a.dtype)


def conv2d_im2col(x: Array, kernel: Array, stride: int, padding: int) -> Array:
    """A 2D conv (NHWC, kernel HWIO, symmetric zero padding) as im2col + one matmul.

    The kh*kw shifted (strided) windows of the padded input are concatenated on the channel axis, `[N, Ho, Wo,
    kh*kw*C]`, and multiplied by the kernel reshaped to `[kh*kw*C, O]`. Same result as `lax.conv_general_dilated`
    up to float summation order.
    """
    kh, kw, c, o = kernel.shape
    if padding:
        x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    n, h, w, _ = x.shape
    ho, wo = (h - kh) // stride + 1, (w - kw) // stride + 1
    pieces = [
        lax.slice(x, (0, i, j, 0), (n, i + (ho - 1) * stride + 1, j + (wo - 1) * stride + 1, c), (1, stride, stride, 1))
        for i in range(kh)
        for j in range(kw)
    ]
    patches = jnp.concatenate(pieces, axis=-1) if len(pieces) > 1 else pieces[0]
    y = _matmul(patches.reshape(n * ho * wo, kh * kw * c), kernel.reshape(kh * kw * c, o))
    return y.reshape(n, ho, wo, o)


# How a frame-folded 2D conv is computed. "xla": `lax.conv_general_dilated` and its autodiff (cuDNN on GPU, the MXU
# conv emitter on TPU: best there). "matmul": 1x1 convs as plain matmuls; kxk convs forward with
# `lax.conv_general_dilated` (fast on XLA:CPU) and a hand-written backward (input gradient as a forward conv with the
# flipped kernel, kernel gradient as an im2col matmul), because XLA:CPU's own conv backward is 3-10x slower than
# its forward (BENCHMARKS.md, "Model speed on CPU"). "auto" (default): "matmul" on CPU, "xla" elsewhere.
# Override with the environment variable SMALLBIG_CONV_IMPL or `set_conv_impl`; read when a function is traced.
CONV_IMPLS = ("auto", "xla", "matmul")
_conv_impl = os.environ.get("SMALLBIG_CONV_IMPL", "auto")


def set_conv_impl(impl: str) -> None:
    """Selects the conv formulation ("auto", "xla" or "matmul") for functions traced from now on."""
    global _conv_impl
    if impl not in CONV_IMPLS:
        raise ValueError(f"conv impl {impl!r}; expected one of {CONV_IMPLS}")
    _conv_impl = impl


def conv_impl() -> str:
    """The formulation in effect: "xla" or "matmul" ("auto" resolved by the default backend)."""
    if _conv_impl not in CONV_IMPLS:
        raise ValueError(f"SMALLBIG_CONV_IMPL={_conv_impl!r}; expected one of {CONV_IMPLS}")
    if _conv_impl == "auto":
        return "matmul" if jax.default_backend() == "cpu" else "xla"
    return _conv_impl


def _conv2d_xla(x: Array, kernel: Array, stride: int, padding: int) -> Array:
    return lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )


def _conv1x1_matmul(x: Array, kernel: Array, stride: int) -> Array:
    if stride > 1:
        x = x[:, ::stride, ::stride]
    n, h, w, c = x.shape
    return _matmul(x.reshape(n * h * w, c), kernel[0, 0]).reshape(n, h, w, kernel.shape[-1])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv2d_fast_backward(x: Array, kernel: Array, stride: int, padding: int) -> Array:
    return _conv2d_xla(x, kernel, stride, padding)


def _conv2d_fast_backward_fwd(x, kernel, stride, padding):
    return _conv2d_xla(x, kernel, stride, padding), (x, kernel)


def _conv2d_fast_backward_bwd(stride, padding, residuals, dy):
    x, kernel = residuals
    kh, kw, c, o = kernel.shape
    if stride != 1 or kh - 1 - padding < 0:  # strided: autodiff of the im2col form (no dilated conv needed)
        _, vjp = jax.vjp(lambda x, k: conv2d_im2col(x, k, stride, padding), x, kernel)
        return vjp(dy)
    # dx: the transposed conv of stride 1 is a forward conv of dy with the spatially flipped, I/O-swapped kernel.
    flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)
    dx = _conv2d_xla(dy, flipped, 1, kh - 1 - padding) if kh == kw else None
    if dx is None:
        _, vjp = jax.vjp(lambda x: conv2d_im2col(x, kernel, stride, padding), x)
        (dx,) = vjp(dy)
    # dkernel: im2col patches^T @ dy, one matmul contracting over every output pixel.
    xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0))) if padding else x
    n, ho, wo, _ = dy.shape
    pieces = [lax.slice(xp, (0, i, j, 0), (n, i + ho, j + wo, c)) for i in range(kh) for j in range(kw)]
    patches = jnp.concatenate(pieces, axis=-1).reshape(n * ho * wo, kh * kw * c)
    dkernel = _matmul(patches.T, dy.reshape(n * ho * wo, o)).reshape(kh, kw, c, o)
    return dx.astype(x.dtype), dkernel.astype(kernel.dtype)


_conv2d_fast_backward.defvjp(_conv2d_fast_backward_fwd, _conv2d_fast_backward_bwd)


def conv2d(x: Array, kernel: Array, stride: int, padding: int) -> Array:
    """2D conv, NHWC input, HWIO kernel, symmetric zero padding, in the formulation `conv_impl()` selects."""
    if conv_impl() == "xla":
        return _conv2d_xla(x, kernel, stride, padding)
    if kernel.shape[0] == kernel.shape[1] == 1 and padding == 0:
        return _conv1x1_matmul(x, kernel, stride)
    return _conv2d_fast_backward(x, kernel, stride, padding)


class Conv(nnx.Module):
    """Bias-free conv with kernel THWIO `[kt, kh, kw, in, out]`, explicit symmetric padding, no temporal stride.

    With kt == 1 (every SmallBig conv) it runs as a 2D conv on `[N*T, H, W, C]`. The kernel keeps its time axis so
    that PyTorch's `[O, I, kt, kh, kw]` maps onto it by a plain transpose.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: Sequence[int] = (1, 1, 1),
        stride: int = 1,
        *,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        kt, kh, kw = kernel_size
        self.kernel_size = (kt, kh, kw)
        self.stride = stride
        self.padding = (kt // 2, kh // 2, kw // 2)
        self.dtype = dtype
        shape = (kt, kh, kw, in_features, out_features)
        self.kernel = nnx.Param(kaiming_normal_fan_out(rngs.params(), shape, param_dtype))

    def __call__(self, x: Array) -> Array:
        dtype = self.dtype or x.dtype
        x = x.astype(dtype)
        kernel = self.kernel[...].astype(dtype)
        _, pad_h, pad_w = self.padding
        s = self.stride
        if self.kernel_size[0] == 1:
            n, t, h, w, c = x.shape
            if pad_h != pad_w:
                raise ValueError(f"square kernels only, got {self.kernel_size}")
            y = conv2d(x.reshape(n * t, h, w, c), kernel[0], s, pad_h)
            return y.reshape(n, t, *y.shape[1:])
        pad_t = self.padding[0]
        return lax.conv_general_dilated(
            x,
            kernel,
            window_strides=(1, s, s),
            padding=((pad_t, pad_t), (pad_h, pad_h), (pad_w, pad_w)),
            dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
        )


class BatchNorm(nnx.Module):
    """BatchNorm over all axes but the last, as `torch.nn.BatchNorm3d` computes it.

    Statistics are reduced and stored in float32 (or `param_dtype` if wider) whatever the compute dtype. The running
    variance is updated with the unbiased batch variance (PyTorch's rule, which the official training used); `momentum` is PyTorch's
    (0.1 = flax's 0.9). `use_running_average` is toggled by `model.train()` / `model.eval()`.

    `groups` > 1 splits the batch into that many contiguous groups with statistics of their own ("ghost" BN). With
    the batch sharded over G devices and groups = G this is per-device BatchNorm as in PyTorch DDP training, with no
    cross-device reduction; the running statistics move by the mean of the groups' statistics.
    """

    def __init__(
        self,
        num_features: int,
        *,
        zero_init: bool = False,
        momentum: float = 0.1,
        epsilon: float = 1e-5,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        use_running_average: bool = False,
        groups: int = 1,
    ):
        self.groups = groups
        self.momentum = momentum
        self.epsilon = epsilon
        self.dtype = dtype
        self.use_running_average = use_running_average
        init = jnp.zeros if zero_init else jnp.ones
        self.scale = nnx.Param(init((num_features,), param_dtype))
        self.bias = nnx.Param(jnp.zeros((num_features,), param_dtype))
        self.stat_dtype = jnp.promote_types(jnp.float32, param_dtype)
        self.mean = nnx.BatchStat(jnp.zeros((num_features,), self.stat_dtype))
        self.var = nnx.BatchStat(jnp.ones((num_features,), self.stat_dtype))

    def __call__(self, x: Array) -> Array:
        dtype = self.dtype or x.dtype
        if self.use_running_average:
            mean, var = self.mean[...], self.var[...]
        else:
            g = self.groups
            if x.shape[0] % g:
                raise ValueError(f"batch of {x.shape[0]} does not split into {g} BatchNorm groups")
            grouped = x.astype(self.stat_dtype).reshape(g, -1, x.shape[-1])  # [groups, elements, C]
            mean = jnp.mean(grouped, axis=1, keepdims=True)
            var = jnp.mean(jnp.square(grouped - mean), axis=1, keepdims=True)  # two-pass: E[x^2] - E[x]^2 cancels
            count = grouped.shape[1]
            unbiased = var * (count / max(count - 1, 1))
            m = self.momentum
            self.mean[...] = (1 - m) * self.mean[...] + m * lax.stop_gradient(jnp.mean(mean, axis=(0, 1)))
            self.var[...] = (1 - m) * self.var[...] + m * lax.stop_gradient(jnp.mean(unbiased, axis=(0, 1)))
            y = self._normalize(grouped, mean, var)
            return y.reshape(x.shape).astype(dtype)
        return self._normalize(x.astype(self.stat_dtype), mean, var).astype(dtype)

    def _normalize(self, x: Array, mean: Array, var: Array) -> Array:
        # In float32 even under bfloat16 compute: folding the mean into a low-precision offset (x * a + b) cancels
        # catastrophically when |mean| >> std. XLA fuses this elementwise work, so it costs no extra memory traffic.
        multiplier = self.scale[...].astype(self.stat_dtype) * lax.rsqrt(var + self.epsilon)
        return (x - mean) * multiplier + self.bias[...].astype(self.stat_dtype)


def max_pool_1d(x: Array, axis: int, window: int = 3, stride: int = 1, padding: int = 1) -> Array:
    """Max over a 1D window along `axis` as maxima of strided slices; same result as padding with -inf (PyTorch).

    Pads by repeating the edge instead of -inf: with padding <= window // 2 every window that reaches into the
    padding also holds the edge element, so the maximum is unchanged, and no infinities reach the backward pass.
    """
    if padding:
        if padding > window // 2:
            raise ValueError(f"edge padding equals -inf padding only for padding <= window // 2, got {padding}, {window}")
        pad = [(0, 0)] * x.ndim
        pad[axis] = (padding, padding)
        x = jnp.pad(x, pad, mode="edge")
    n_out = (x.shape[axis] - window) // stride + 1
    out = None
    for offset in range(window):
        piece = lax.slice_in_dim(x, offset, offset + (n_out - 1) * stride + 1, stride, axis)
        out = piece if out is None else jnp.maximum(out, piece)
    return out


def max_pool_3x3x3(x: Array) -> Array:
    """MaxPool3d(kernel 3, stride 1, padding 1) on NTHWC: the big view of conv1 and conv2."""
    for axis in (1, 2, 3):
        if x.shape[axis] > 1:
            x = max_pool_1d(x, axis)
    return x


def max_pool_global_t_3x3(x: Array) -> Array:
    """Max over all frames (keeping T=1), then 3x3 spatial max, stride 1: the big view of conv3.

    Equals the official MaxPool3d((t_length, 3, 3), stride 1, padding (0, 1, 1)) when T == t_length, and lets one
    set of weights serve any T.
    """
    x = jnp.max(x, axis=1, keepdims=True)
    return max_pool_1d(max_pool_1d(x, 2), 3)
