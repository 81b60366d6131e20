"""SmallBigNet (Li et al., CVPR 2020) in Flax NNX, as the official PyTorch code builds it.

A SmallBig block is a ResNet bottleneck whose every conv also sees a *big view*: the same conv (shared weights) on
the max-pooled input, normalised by a BatchNorm of its own and added before the ReLU:

    u1 = relu(bn1(conv1(x))  + big_bn1(conv1(maxpool_3x3x3(x))))
    u2 = relu(bn2(conv2(u1)) + big_bn2(conv2(maxpool_3x3x3(u1))))
    y  = relu(bn3(conv3(u2)) + big_bn3(conv3(maxpool_Tx3x3(u2))) + shortcut(x))

The big-view BatchNorms start at zero, so at initialisation the network is exactly the 2D ResNet (`res50`).
Inputs are `[N, T, H, W, 3]` clips (NTHWC); outputs are `[N, num_classes]` logits in float32.
Names mirror the official state dict (`layer2[0].conv1` is `layer2.0.conv1`); `big_bn{1,2,3}` are `big{1,2,3}.1`.

Training-mode BatchNorm, the pools and the block-output ReLU come from the model's `Formulation` (`formulation`:
"plain", "cpu" or "auto", which is "cpu" on a CPU backend and "plain" elsewhere; formulations.py). The parameters do
not depend on it.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from smallbig_jax.models.formulations import resolve_formulation
from smallbig_jax.models.layers import PLAIN, BatchNorm, Conv, Formulation
from smallbig_jax.variants import VARIANTS, BlockKind

Array = jax.Array

STAGE_WIDTHS = (1, 2, 4, 8)  # planes per stage, in units of base_width
EXPANSION = 4
# Activation rematerialisation (`config.remat`): "none" keeps every activation for the backward pass; "block" keeps
# only each block's input and recomputes the rest of the block in the backward pass (jax.checkpoint); "block_keep_convs"
# keeps the conv outputs too and recomputes BatchNorms, ReLUs and pools.
REMAT_POLICIES = {
    "none": None,
    "block": jax.checkpoint_policies.nothing_saveable,
    "block_keep_convs": jax.checkpoint_policies.dots_saveable,
}


class Shortcut(nnx.Module):
    """Strided 1x1 conv + BN on the residual path of a stage's first block (`downsample.0`, `downsample.1`)."""

    def __init__(
        self, in_features: int, out_features: int, stride: int, *, dtype, param_dtype, formulation, rngs: nnx.Rngs
    ):
        self.conv = Conv(in_features, out_features, stride=stride, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.bn = BatchNorm(out_features, dtype=dtype, param_dtype=param_dtype, formulation=formulation)

    def __call__(self, x: Array) -> Array:
        return self.bn(self.conv(x))


class ContextGate(nnx.Module):
    """The "extra" unit: x + BN(expand(reduce(x) * sigmoid(reduce(global_max(x))))), no ReLU, BN zero-initialised.

    `reduce` is `big4_1` (used twice), `expand` is `big4_2.0`, `bn` is `big4_2.1`.
    """

    def __init__(self, features: int, *, dtype, param_dtype, formulation, rngs: nnx.Rngs):
        self.reduce = Conv(features, features // 4, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.expand = Conv(features // 4, features, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.bn = BatchNorm(features, zero_init=True, dtype=dtype, param_dtype=param_dtype, formulation=formulation)

    def __call__(self, x: Array) -> Array:
        context = jnp.max(x, axis=(1, 2, 3), keepdims=True)
        gated = self.reduce(x) * jax.nn.sigmoid(self.reduce(context))
        return x + self.bn(self.expand(gated))


class Block(nnx.Module):
    """Bottleneck (expansion 4) with optional big views, temporal conv1 and context gate; see the module docstring."""

    def __init__(
        self,
        in_features: int,
        planes: int,
        stride: int,
        kind: BlockKind,
        *,
        dtype: Any,
        param_dtype: Any,
        formulation: Formulation = PLAIN,
        rngs: nnx.Rngs,
    ):
        out_features = planes * EXPANSION
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        bn = dict(formulation=formulation, **kw)
        self.formulation = formulation
        self.extra = ContextGate(in_features, rngs=rngs, **bn) if kind.extra else None
        conv1_kernel = (3, 1, 1) if kind.temporal_conv1 else (1, 1, 1)
        self.conv1 = Conv(in_features, planes, conv1_kernel, rngs=rngs, **kw)
        self.bn1 = BatchNorm(planes, **bn)
        self.conv2 = Conv(planes, planes, (1, 3, 3), stride, rngs=rngs, **kw)
        self.bn2 = BatchNorm(planes, **bn)
        self.conv3 = Conv(planes, out_features, rngs=rngs, **kw)
        self.bn3 = BatchNorm(out_features, **bn)
        if kind.big_views:
            self.big_bn1 = BatchNorm(planes, zero_init=True, **bn)
            self.big_bn2 = BatchNorm(planes, zero_init=True, **bn)
            self.big_bn3 = BatchNorm(out_features, zero_init=True, **bn)
        else:
            self.big_bn1 = self.big_bn2 = self.big_bn3 = None
        needs_shortcut = stride != 1 or in_features != out_features
        self.downsample = Shortcut(in_features, out_features, stride, rngs=rngs, **bn) if needs_shortcut else None

    def __call__(self, x: Array) -> Array:
        ops = self.formulation
        if self.extra is not None:
            x = self.extra(x)
        residual = x if self.downsample is None else self.downsample(x)
        u = self.bn1(self.conv1(x))
        if self.big_bn1 is not None:
            u = u + self.big_bn1(self.conv1(ops.max_pool_3x3x3(x)))
        u = jax.nn.relu(u)
        v = self.bn2(self.conv2(u))
        if self.big_bn2 is not None:
            v = v + self.big_bn2(self.conv2(ops.max_pool_3x3x3(u)))
        v = jax.nn.relu(v)
        y = self.bn3(self.conv3(v)) + residual
        if self.big_bn3 is not None:
            big = self.big_bn3(self.conv3(ops.max_pool_global_t_3x3(v)))  # [N, 1, H, W, C]
            y = y + ops.broadcast_frames(big, y.shape[1])
        # The same ReLU as the two above, written by the formulation: the block's output is the residual stream that
        # the later blocks of the stage add to, which XLA:CPU would otherwise recompute in each of them.
        return ops.block_output_relu(y)


class SmallBigNet(nnx.Module):
    """A SmallBigNet variant (see `VARIANTS`) for any number of frames and classes.

    Args:
      variant: a key of `VARIANTS`, e.g. "smallbig50" (SmallBig-R50) or "res50" (its per-frame C2D baseline).
      num_classes: size of the classifier.
      base_width: channels of the stem and first stage; 64 is the paper's, smaller values give narrow
        networks of the same design for tests and CPU demos.
      dtype: compute dtype of convs and activations (e.g. jnp.bfloat16); parameters are `param_dtype`,
        BatchNorm statistics and the classifier head are float32.
      remat: what the backward pass recomputes (`REMAT_POLICIES`); the parameters do not depend on it.
    """

    def __init__(
        self,
        variant: str = "smallbig50",
        num_classes: int = 400,
        *,
        base_width: int = 64,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        formulation: str | Formulation = "auto",
        remat: str = "none",
        rngs: nnx.Rngs,
    ):
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; expected one of {sorted(VARIANTS)}")
        if num_classes < 1 or base_width < 1:
            raise ValueError(f"num_classes and base_width must be positive, got {num_classes}, {base_width}")
        if remat not in REMAT_POLICIES:
            raise ValueError(f"remat {remat!r}; expected one of {sorted(REMAT_POLICIES)}")
        spec = VARIANTS[variant]
        self.variant = variant
        self.num_classes = num_classes
        self.base_width = base_width
        self.dtype = dtype
        self.formulation = resolve_formulation(formulation)
        self.remat = remat
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        self.conv1 = Conv(3, base_width, (1, 7, 7), stride=2, rngs=rngs, **kw)
        self.bn1 = BatchNorm(base_width, formulation=self.formulation, **kw)
        in_features = base_width
        for index, (depth, kind, width) in enumerate(zip(spec.depths, spec.blocks, STAGE_WIDTHS)):
            planes = base_width * width
            blocks = []
            for i in range(depth):
                stride = 2 if (i == 0 and index > 0) else 1
                blocks.append(Block(in_features, planes, stride, kind, formulation=self.formulation, rngs=rngs, **kw))
                in_features = planes * EXPANSION
            setattr(self, f"layer{index + 1}", nnx.List(blocks))
        self.num_features = in_features
        self.fc = nnx.Linear(
            in_features, num_classes, param_dtype=param_dtype, rngs=rngs, **_torch_linear_init(in_features)
        )

    def stages(self, x: Array) -> dict[str, Array]:
        """Outputs of the stem, each stage, the pooled features and the logits, by name."""
        out = {}
        x = jax.nn.relu(self.bn1(self.conv1(x)))
        pool = self.formulation.max_pool_1d
        x = pool(pool(x, 2, stride=2), 3, stride=2)  # MaxPool3d (1,3,3), stride (1,2,2), pad (0,1,1)
        out["stem"] = x
        run = _run_block if self.remat == "none" else nnx.remat(_run_block, policy=REMAT_POLICIES[self.remat])
        for name in ("layer1", "layer2", "layer3", "layer4"):
            for block in getattr(self, name):
                x = run(block, x)
            out[name] = x
        features = jnp.mean(x.astype(jnp.promote_types(jnp.float32, x.dtype)), axis=(1, 2, 3))
        out["pool"] = features
        out["logits"] = self.fc(features)
        return out

    def __call__(self, x: Array) -> Array:
        """Logits `[N, num_classes]` (float32) of clips `[N, T, H, W, 3]`."""
        if x.ndim != 5 or x.shape[-1] != 3:
            raise ValueError(f"expected clips of shape [N, T, H, W, 3], got {x.shape}")
        return self.stages(x)["logits"]


def _run_block(block: Block, x: Array) -> Array:
    return block(x)


def _torch_linear_init(fan_in: int) -> dict:
    """nn.Linear's default init: weight kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in)), bias U(+-1/sqrt(fan_in))."""
    bound = 1.0 / fan_in**0.5

    def bias_init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return dict(kernel_init=jax.nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"), bias_init=bias_init)


def build_model(
    variant: str = "smallbig50",
    num_classes: int = 400,
    *,
    base_width: int = 64,
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
    seed: int = 0,
    formulation: str | Formulation = "auto",
    remat: str = "none",
) -> SmallBigNet:
    """A freshly initialised `SmallBigNet`, in train mode (`formulation`, `remat`: see `SmallBigNet`)."""
    return SmallBigNet(
        variant,
        num_classes,
        base_width=base_width,
        dtype=dtype,
        param_dtype=param_dtype,
        formulation=formulation,
        remat=remat,
        rngs=nnx.Rngs(seed),
    )


def set_batchnorm_groups(model: nnx.Module, groups: int) -> None:
    """Every BatchNorm of `model` takes training statistics over `groups` contiguous parts of the batch."""
    for _, module in nnx.iter_modules(model):
        if isinstance(module, BatchNorm):
            module.groups = groups


def count_params(model: nnx.Module) -> int:
    """Number of trainable parameters (BatchNorm running statistics excluded, as in PyTorch's `parameters()`)."""
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
