"""The layers of SmallBigNet in plain Flax NNX and `lax`: frame-folded conv, BatchNorm, separable max-pools.

Layout is NTHWC throughout. Every conv of SmallBigNet has temporal kernel 1 (slowonly's 3x1x1 aside), so a conv is
a 2D conv over frames folded into the batch; a 3x3x3 max-pool is three 1D maxima of shifted slices (one axis at a
time), which keeps its backward elementwise instead of `lax.reduce_window`'s select-and-scatter.

The primitive operations whose fastest form depends on the compiler (training-mode BatchNorm, the 1D max-pool and
the max over frames that the big views' pools are built from, the broadcast over frames, the block-output ReLU) are
taken from a `Formulation`: `PLAIN` here (plain `lax` ops and autodiff, for any backend), or `cpu_formulation.CPU`
(XLA:CPU's). Both compute the same values and gradients.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

Array = jax.Array
Dtype = Any

# torch.nn.init.kaiming_normal_(mode='fan_out', nonlinearity='relu'): an untruncated normal, std sqrt(2 / fan_out).
kaiming_normal_fan_out = jax.nn.initializers.variance_scaling(2.0, "fan_out", "normal", in_axis=-2, out_axis=-1)


@dataclasses.dataclass(frozen=True, eq=False)  # compared and hashed by identity: a static part of the model graph
class Formulation:
    """How the model writes the primitive operations whose fastest form depends on the compiler, and how its
    programs are compiled; the big views' pools are built from the primitives here, once for every formulation.
    Chosen when the model is built (`build_model(formulation=...)`, `config.model.formulation`); the parameters are
    the same in every formulation, so a checkpoint of one restores in another."""

    name: str
    batch_norm_train: Callable[[Array, Array, Array, float], tuple[Array, Array, Array]]
    max_pool_1d: Callable[..., Array]  # (x, axis, window=3, stride=1, padding=1)
    max_over_frames: Callable[[Array], Array]
    broadcast_frames: Callable[[Array, int], Array]
    block_output_relu: Callable[[Array], Array]
    cpu_compiler_options: Mapping[str, str] = dataclasses.field(default_factory=dict)  # XLA:CPU's, by name

    def max_pool_3x3x3(self, x: Array) -> Array:
        """MaxPool3d(kernel 3, stride 1, padding 1) on NTHWC: the big view of conv1 and conv2."""
        for axis in (1, 2, 3):
            if x.shape[axis] > 1:
                x = self.max_pool_1d(x, axis)
        return x

    def max_pool_global_t_3x3(self, x: Array) -> Array:
        """Max over all frames (keeping T=1), then 3x3 spatial max, stride 1: the big view of conv3.

        Equals the official MaxPool3d((t_length, 3, 3), stride 1, padding (0, 1, 1)) when T == t_length, and lets
        one set of weights serve any T.
        """
        return self.max_pool_1d(self.max_pool_1d(self.max_over_frames(x), 2), 3)

    def compiler_options(self, platform: str) -> dict[str, str] | None:
        """`compiler_options` for `jax.jit` of a program that runs this model on `platform` ("cpu", "gpu", "tpu")."""
        return dict(self.cpu_compiler_options) if platform == "cpu" and self.cpu_compiler_options else None


def conv2d(x: Array, kernel: Array, stride: int, padding: int) -> Array:
    """2D conv, NHWC input, HWIO kernel, symmetric zero padding."""
    return lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )


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
    variance is updated with the unbiased batch variance (PyTorch's rule, which the official training used);
    `momentum` is PyTorch's (0.1 = flax's 0.9). `use_running_average` is toggled by `model.train()` / `model.eval()`.

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
        formulation: Formulation | None = None,
    ):
        self.formulation = formulation or PLAIN
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
            scale, bias = self.scale[...].astype(self.stat_dtype), self.bias[...].astype(self.stat_dtype)
            y, mean, var = self.formulation.batch_norm_train(grouped, scale, bias, self.epsilon)
            count = grouped.shape[1]
            unbiased = var * (count / max(count - 1, 1))
            m = self.momentum
            self.mean[...] = (1 - m) * self.mean[...] + m * lax.stop_gradient(jnp.mean(mean, axis=(0, 1)))
            self.var[...] = (1 - m) * self.var[...] + m * lax.stop_gradient(jnp.mean(unbiased, axis=(0, 1)))
            return y.reshape(x.shape).astype(dtype)
        # In float32 even under bfloat16 compute: folding the mean into a low-precision offset (x * a + b) cancels
        # catastrophically when |mean| >> std. XLA fuses this elementwise work, so it costs no extra memory traffic.
        multiplier = self.scale[...].astype(self.stat_dtype) * lax.rsqrt(var + self.epsilon)
        return ((x.astype(self.stat_dtype) - mean) * multiplier + self.bias[...].astype(self.stat_dtype)).astype(dtype)


def batch_norm_train(x: Array, scale: Array, bias: Array, epsilon: float) -> tuple[Array, Array, Array]:
    """Training-mode BatchNorm of `x` `[groups, elements, C]` with each group's own statistics.

    Returns the normalised `x * scale + bias` and the statistics `mean`, biased `var` (`[groups, 1, C]`, two-pass:
    E[x^2] - E[x]^2 cancels), which only feed the running averages.
    """
    mean = jnp.mean(x, axis=1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=1, keepdims=True)
    return (x - mean) * (scale * lax.rsqrt(var + epsilon)) + bias, mean, var


def first_maximum(candidates: Sequence[Array], *, index: bool = False) -> tuple[Array, Array | None]:
    """The elementwise maximum of `candidates`, ties going to the earliest: autodiff of it sends each gradient to
    the first maximal candidate, as PyTorch's pools do (`jnp.maximum` would split it between tied elements); with
    `index`, also which candidate that is (int8, int32 past 127 candidates), found by comparing them with each other
    only. The one tie-break of every formulation."""
    best = candidates[0]
    first = jnp.zeros(best.shape, jnp.int8 if len(candidates) <= 127 else jnp.int32) if index else None
    for i, candidate in enumerate(candidates[1:], 1):
        later = candidate > best
        best = jnp.where(later, candidate, best)
        if first is not None:
            first = jnp.where(later, i, first).astype(first.dtype)
    return best, first


def pool_taps(x: Array, axis: int, window: int, stride: int, padding: int) -> list[Array]:
    """The `window` strided slices of `x` (padded along `axis`) whose elementwise maximum is the 1D max-pool.

    Pads by repeating the edge instead of -inf: with padding <= window // 2 every window that reaches into the
    padding also holds the edge element, so the maximum is PyTorch's. The edge slices are concatenated on rather
    than `jnp.pad(mode="edge")`, whose transpose XLA's SPMD partitioner turned into clip-sized sends from the first
    chip to the last (docs/aot.md).
    """
    if padding > window // 2:
        raise ValueError(f"edge padding equals -inf padding only for padding <= window // 2, got {padding}, {window}")
    if padding:
        n = x.shape[axis]
        first, last = lax.slice_in_dim(x, 0, 1, axis=axis), lax.slice_in_dim(x, n - 1, n, axis=axis)
        x = jnp.concatenate([first] * padding + [x] + [last] * padding, axis=axis)
    n_out = (x.shape[axis] - window) // stride + 1
    return [lax.slice_in_dim(x, i, i + (n_out - 1) * stride + 1, stride, axis) for i in range(window)]


def max_pool_1d(x: Array, axis: int, window: int = 3, stride: int = 1, padding: int = 1) -> Array:
    """Max over a 1D window along `axis` as the maximum of `window` strided slices (`pool_taps`); the gradient goes
    to the first maximal element of each window, as in PyTorch."""
    return first_maximum(pool_taps(x, axis % x.ndim, window, stride, padding))[0]


def max_over_frames(x: Array) -> Array:
    """Max over axis 1 (frames), kept as size 1; the gradient goes to the first maximal frame, as in PyTorch."""
    return first_maximum([x[:, t : t + 1] for t in range(x.shape[1])])[0]


def broadcast_frames(x: Array, frames: int) -> Array:
    """`[N, 1, ...]` repeated to `[N, frames, ...]`."""
    return jnp.broadcast_to(x, (x.shape[0], frames, *x.shape[2:]))


PLAIN = Formulation(
    name="plain",
    batch_norm_train=batch_norm_train,
    max_pool_1d=max_pool_1d,
    max_over_frames=max_over_frames,
    broadcast_frames=broadcast_frames,
    block_output_relu=jax.nn.relu,
)
