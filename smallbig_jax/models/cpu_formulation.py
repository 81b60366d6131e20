"""The CPU formulation of SmallBigNet's layers: the same values and gradients as `layers.PLAIN`, written for XLA:CPU.

XLA:CPU runs a program as about a thousand separate kernels on few threads, and it fuses cheap elementwise
producers into each of their consumers, recomputing them (and re-reading their inputs) once per consumer. So here:

- values read by several consumers (the block-output ReLU, the pools' tap indices and gradients) pass through
  `_stored`, which makes XLA:CPU compute them once and keep them in memory;
- training-mode BatchNorm has the textbook backward (two reductions, one elementwise pass), where autodiff of the
  forward makes several more passes over the activation, and sums one group as a 2D `[elements, C]` array;
- the max-pools' backward reads a one-byte index of each window's winning tap, kept from the forward, instead of
  autodiff's compare-and-select chains over the float input; the max over frames and its broadcast back are
  unrolled, since XLA:CPU's reductions over a middle axis are several times slower than one pass;
- programs are compiled with `COMPILER_OPTIONS` (`CPU.compiler_options("cpu")`), which keep convolutions with XLA's
  own conv.

What each of these gains is measured against its plain form in BENCHMARKS.md; tests/test_formulations.py checks that
the whole formulation equals the plain one in value and gradient (float64).
"""

from __future__ import annotations

import functools
import types

import jax
import jax.numpy as jnp
from jax import lax

from smallbig_jax.models.layers import Array, Formulation, first_maximum, pool_taps


@jax.custom_vjp
def batch_norm_train(x: Array, scale: Array, bias: Array, epsilon: float) -> tuple[Array, Array, Array]:
    """Training-mode BatchNorm of `x` `[groups, elements, C]` with each group's own statistics.

    Returns the normalised `x * scale + bias` and the statistics `mean`, biased `var` (`[groups, 1, C]`, two-pass:
    E[x^2] - E[x]^2 cancels), which only feed the running averages and carry no gradient. The backward pass is the
    textbook one (two reductions and one elementwise pass), where autodiff of the forward makes several more passes
    over the activation.
    """
    return _batch_norm_train_fwd(x, scale, bias, epsilon)[0]


def _sum_per_group(a: Array) -> Array:
    """`[groups, elements, C]` -> `[groups, 1, C]` sums. One group is summed as a 2D `[elements, C]` array: XLA:CPU's
    (YNNPACK's) fused multiply-and-sum over the middle axis of `[1, elements, C]` is much slower."""
    groups, _, c = a.shape
    if groups == 1:
        return jnp.sum(a.reshape(-1, c), axis=0).reshape(1, 1, c)
    return jnp.sum(a, axis=1, keepdims=True)


def _batch_norm_train_fwd(x, scale, bias, epsilon):
    count = x.shape[1]
    mean = _sum_per_group(x) / count
    var = _sum_per_group(jnp.square(x - mean)) / count
    inv_std = lax.rsqrt(var + epsilon)
    y = (x - mean) * (scale * inv_std) + bias
    return (y, mean, var), (x, mean, inv_std, scale)


def _batch_norm_train_bwd(residuals, cotangents):
    x, mean, inv_std, scale = residuals
    dy = cotangents[0]  # the statistics' cotangents are zero: they only update the running averages
    x_hat = (x - mean) * inv_std
    dy_sum = _sum_per_group(dy)
    dy_x_hat_sum = _sum_per_group(dy * x_hat)
    count = x.shape[1]
    dx = (scale * inv_std) * (dy - dy_sum / count - x_hat * (dy_x_hat_sum / count))
    return dx, jnp.sum(dy_x_hat_sum, axis=(0, 1)), jnp.sum(dy_sum, axis=(0, 1)), None


batch_norm_train.defvjp(_batch_norm_train_fwd, _batch_norm_train_bwd)


def max_pool_1d(x: Array, axis: int, window: int = 3, stride: int = 1, padding: int = 1) -> Array:
    """Max over a 1D window along `axis` as maxima of strided slices; same result as padding with -inf (PyTorch).

    The gradient goes to the first maximal element of each window, as in PyTorch.
    """
    axis = axis % x.ndim
    if (window, stride, padding) == (3, 1, 1) and x.shape[axis] >= 2:
        return _max_pool_3_tap(x, axis)
    return _max_pool_1d(x, axis, window, stride, padding)


def _cut(a: Array, axis: int, start: int, stop: int) -> Array:
    return lax.slice_in_dim(a, start, stop, axis=axis)


def _shift(a: Array, axis: int, by: int) -> Array:
    """`a` moved `by` places along `axis` (positive: towards higher indices), zero-filled, same shape."""
    n = a.shape[axis]
    config = [(0, 0, 0)] * a.ndim
    config[axis] = (max(by, 0), max(-by, 0), 0)
    return lax.pad(_cut(a, axis, max(-by, 0), n - max(by, 0)), jnp.zeros((), a.dtype), config)


def _stored(a: Array) -> Array:
    """`a` unchanged, computed where it stands and kept in memory on XLA:CPU.

    XLA:CPU fuses cheap elementwise producers into each of their consumers, recomputing them (and re-reading their
    inputs) as often as there are consumers. A reduction is never fused into its consumers, so `a` is passed
    through one: a bitwise OR with zero over a stacked axis of two, which XLA emits itself, fused with the ops
    that compute `a` (a float max or sum would go to YNNPACK, which runs it as separate, slower passes).
    `optimization_barrier` would say this directly, but XLA:CPU drops barriers before fusion.
    """
    floating = jnp.issubdtype(a.dtype, jnp.floating)
    bits = lax.bitcast_convert_type(a, jnp.dtype(f"uint{8 * a.dtype.itemsize}")) if floating else a
    pair = jnp.stack([bits, jnp.zeros_like(bits)], axis=-1)
    kept = lax.reduce(pair, jnp.zeros((), bits.dtype), lax.bitwise_or, (a.ndim,))
    return lax.bitcast_convert_type(kept, a.dtype) if floating else kept


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _max_pool_3_tap(x: Array, axis: int) -> Array:
    """The big views' pool (window 3, stride 1, padding 1) without a padded copy: pair maxima m[i] = max(x[i],
    x[i+1]), then y[i] = max(m[i-1], m[i]), the edges taking the one pair they have."""
    n = x.shape[axis]
    pairs = jnp.maximum(_cut(x, axis, 0, n - 1), _cut(x, axis, 1, n))
    inner = jnp.maximum(_cut(pairs, axis, 0, n - 2), _cut(pairs, axis, 1, n - 1))
    return jnp.concatenate([_cut(pairs, axis, 0, 1), inner, _cut(pairs, axis, n - 2, n - 1)], axis=axis)


def _max_pool_3_tap_fwd(x, axis):
    # The residual is which tap holds each window's first maximum (0: x[i-1], 1: x[i], 2: x[i+1]) in one byte per
    # element, so the backward reads that and dy only. It is decided by comparing x with its neighbours, never with
    # y: XLA may compute x once for y and again here, rounded differently, and then x == y would fail.
    n = x.shape[axis]
    index = lax.broadcasted_iota(jnp.int32, x.shape, axis)
    has_left, has_right = index > 0, index < n - 1
    left, right = _shift(x, axis, 1), _shift(x, axis, -1)
    left_wins = has_left & (left >= x) & (~has_right | (left >= right))
    centre_wins = ~has_right | (x >= right)
    tap = jnp.where(left_wins, 0, jnp.where(centre_wins, 1, 2)).astype(jnp.int8)
    return _max_pool_3_tap(x, axis), _stored(tap)


def _max_pool_3_tap_bwd(axis, tap, dy):
    zero = jnp.zeros((), dy.dtype)
    share = lambda k: jnp.where(tap == k, dy, zero)  # noqa: E731
    # x[i] receives the centre share of window i, the left share of window i + 1 and the right share of window i - 1.
    return (_stored(share(1) + _shift(share(0), axis, -1) + _shift(share(2), axis, 1)),)


_max_pool_3_tap.defvjp(_max_pool_3_tap_fwd, _max_pool_3_tap_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _max_pool_1d(x: Array, axis: int, window: int, stride: int, padding: int) -> Array:
    return functools.reduce(jnp.maximum, pool_taps(x, axis, window, stride, padding))


def _max_pool_1d_fwd(x, axis, window, stride, padding):
    return _max_pool_1d(x, axis, window, stride, padding), x


def _max_pool_1d_bwd(axis, window, stride, padding, x, dy):
    # dy goes to each window's first maximal tap (found by comparing the taps with each other, never with the
    # forward's y; see _max_pool_3_tap_fwd): one select per tap, each tap's share placed back on the padded axis
    # (interior padding undoes the stride), then a share that fell on the edge padding given to the edge element it
    # copies.
    _, winner = first_maximum(pool_taps(x, axis, window, stride, padding), index=True)
    n = x.shape[axis]
    padded = n + 2 * padding
    dx_padded = None
    for i in range(window):
        config = [(0, 0, 0)] * x.ndim
        config[axis] = (i, padded - i - ((dy.shape[axis] - 1) * stride + 1), stride - 1)
        part = lax.pad(jnp.where(winner == i, dy, jnp.zeros((), dy.dtype)), jnp.zeros((), dy.dtype), config)
        dx_padded = part if dx_padded is None else dx_padded + part
    if not padding:
        return (dx_padded,)
    if n == 1:
        return (jnp.sum(dx_padded, axis=axis, keepdims=True),)
    first = jnp.sum(_cut(dx_padded, axis, 0, padding + 1), axis=axis, keepdims=True)
    last = jnp.sum(_cut(dx_padded, axis, padding + n - 1, padded), axis=axis, keepdims=True)
    middle = _cut(dx_padded, axis, padding + 1, padding + n - 1)
    return (jnp.concatenate([first, middle, last], axis=axis),)


_max_pool_1d.defvjp(_max_pool_1d_fwd, _max_pool_1d_bwd)


def max_over_frames(x: Array) -> Array:
    """Max over axis 1 (frames), kept as size 1; the gradient goes to the first maximal frame, as in PyTorch.

    Unrolled over frames: XLA:CPU's reductions over a middle axis are several times slower than this one pass.
    """
    return _max_over_frames(x, x.shape[1])


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _max_over_frames(x: Array, frames: int) -> Array:
    return functools.reduce(jnp.maximum, [x[:, t : t + 1] for t in range(frames)])


def _max_over_frames_fwd(x, frames):
    y = _max_over_frames(x, frames)
    _, frame = first_maximum([x[:, t : t + 1] for t in range(frames)], index=True)
    return y, _stored(frame)


def _max_over_frames_bwd(frames, frame, dy):
    zero = jnp.zeros((), dy.dtype)
    return (jnp.concatenate([jnp.where(frame == t, dy, zero) for t in range(frames)], axis=1),)


_max_over_frames.defvjp(_max_over_frames_fwd, _max_over_frames_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def broadcast_frames(x: Array, frames: int) -> Array:
    """`[N, 1, ...]` repeated to `[N, frames, ...]`; its gradient sums the frames in one unrolled pass (XLA:CPU's
    reduction over the middle axis is several times slower)."""
    return jnp.broadcast_to(x, (x.shape[0], frames, *x.shape[2:]))


def _broadcast_frames_fwd(x, frames):
    return broadcast_frames(x, frames), None


def _broadcast_frames_bwd(frames, _, dy):
    return (functools.reduce(jnp.add, [dy[:, t : t + 1] for t in range(frames)]),)


broadcast_frames.defvjp(_broadcast_frames_fwd, _broadcast_frames_bwd)


@jax.custom_vjp
def block_output_relu(x: Array) -> Array:
    """ReLU of a residual stream (a block's output), which XLA:CPU then computes once and reads from memory.

    XLA:CPU otherwise fuses the cheap elementwise chain `relu(bn3(conv3) + residual + big_bn3(...))` into every
    consumer, and since the residual is itself such a chain, each block recomputes all earlier blocks' BatchNorms
    of its stage.
    """
    return _stored(jax.nn.relu(x))


def _block_output_relu_fwd(x):
    y = block_output_relu(x)
    return y, y


def _block_output_relu_bwd(y, dy):
    return (jnp.where(y > 0, dy, 0).astype(dy.dtype),)


block_output_relu.defvjp(_block_output_relu_fwd, _block_output_relu_bwd)


# XLA:CPU hands convolutions to YNNPACK by default, whose convs are slower on this model's shapes than XLA's own
# (Eigen) conv, forward and gradients alike; dots and reductions stay with YNNPACK, where they are fastest.
COMPILER_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"
}

CPU = Formulation(
    name="cpu",
    batch_norm_train=batch_norm_train,
    max_pool_1d=max_pool_1d,
    max_over_frames=max_over_frames,
    broadcast_frames=broadcast_frames,
    block_output_relu=block_output_relu,
    cpu_compiler_options=types.MappingProxyType(COMPILER_OPTIONS),
)
