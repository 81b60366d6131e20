"""Model summary: parameters, per-stage output shapes and compute of one clip at an exact input shape.

Two compute figures, each labelled for what it is:
- **MACs** (multiply-accumulates of convs and the classifier), counted from the traced program at the exact input
  shape with the convention of PyTorch's `FlopCounterMode`, fvcore and the paper: every kernel tap of every output
  element, zero-padding taps included. This is the number to compare with published "GFLOPs" of video CNNs,
  which are MACs (SmallBig-R50, 8x224x224: 51.97 G).
- **XLA FLOPs**, from XLA's HLO cost analysis of the same program: every op (BatchNorm, ReLU, pools too), but
  convolution taps that fall on zero padding are *not* counted, so it lands a few percent below 2 x MACs for
  networks with many small feature maps. This is the figure MFU should use.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.extend import core as jex_core

from smallbig_jax.models.smallbig import SmallBigNet, count_params


@dataclasses.dataclass
class ModelSummary:
    variant: str
    num_classes: int
    base_width: int
    input_shape: tuple[int, ...]  # [N, T, H, W, 3]
    params: int
    params_by_part: dict[str, int]
    stage_shapes: dict[str, tuple[int, ...]]
    macs: int  # per clip, conv + linear, padding taps included
    xla_flops: float  # per clip, XLA cost analysis (all ops, padding taps excluded)

    def format(self) -> str:
        n, t, h, w, c = self.input_shape
        lines = [
            f"{self.variant}: {self.num_classes} classes, base width {self.base_width}, input [N,T,H,W,C] = "
            f"[{n},{t},{h},{w},{c}]",
            f"  parameters          {self.params:>14,}",
        ]
        lines += [f"    {part:<17} {count:>14,}" for part, count in self.params_by_part.items()]
        lines.append("  output shapes (per batch of N)")
        lines += [f"    {name:<17} {list(shape)}" for name, shape in self.stage_shapes.items()]
        lines.append(
            f"  GMACs per clip      {self.macs / 1e9:>14.2f}   (conv + linear multiply-adds, padded taps counted)"
        )
        lines.append(
            f"  XLA GFLOPs per clip {self.xla_flops / 1e9:>14.2f}   "
            "(XLA cost analysis: all ops, padded taps not counted)"
        )
        return "\n".join(lines)


def _sub_jaxprs(value: Any) -> Iterator[jex_core.Jaxpr]:
    if isinstance(value, jex_core.ClosedJaxpr):
        yield value.jaxpr
    elif isinstance(value, jex_core.Jaxpr):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _sub_jaxprs(item)


def count_macs(jaxpr: jex_core.Jaxpr) -> int:
    """Multiply-accumulates of every convolution and dot product in a jaxpr (recursing into sub-jaxprs)."""
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            lhs, rhs = (v.aval.shape for v in eqn.invars)
            dn = eqn.params["dimension_numbers"]
            kernel_spatial = int(np.prod([rhs[d] for d in dn.rhs_spec[2:]]))
            in_per_group = rhs[dn.rhs_spec[1]]
            total += int(np.prod(eqn.outvars[0].aval.shape)) * kernel_spatial * in_per_group
        elif name == "dot_general":
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += int(np.prod(eqn.outvars[0].aval.shape)) * int(np.prod([lhs[d] for d in lhs_contract]))
        for value in eqn.params.values():
            for sub in _sub_jaxprs(value):
                total += count_macs(sub)
    return total


def summarize(model: SmallBigNet, frames: int = 8, size: int = 224, batch: int = 1) -> ModelSummary:
    """Summary of `model` in eval mode at input `[batch, frames, size, size, 3]`; compute is reported per clip."""
    graphdef, state = nnx.split(model)
    clips = jax.ShapeDtypeStruct((batch, frames, size, size, 3), jnp.float32)

    def forward(state, clips):
        m = nnx.merge(graphdef, state)
        m.eval()
        return m.stages(clips)

    shapes = jax.eval_shape(forward, state, clips)
    stage_shapes = {
        k: tuple(shapes[k].shape) for k in ("stem", "layer1", "layer2", "layer3", "layer4", "pool", "logits")
    }
    logits = lambda state, clips: forward(state, clips)["logits"]  # noqa: E731
    macs = count_macs(jax.make_jaxpr(logits)(state, clips).jaxpr)
    xla_flops = jax.jit(logits).lower(state, clips).cost_analysis()["flops"]
    params = nnx.state(model, nnx.Param)
    by_part = {}
    for name in ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc"):
        by_part[name] = sum(x.size for x in jax.tree.leaves(params[name]))
    return ModelSummary(
        variant=model.variant,
        num_classes=model.num_classes,
        base_width=model.base_width,
        input_shape=(batch, frames, size, size, 3),
        params=count_params(model),
        params_by_part=by_part,
        stage_shapes=stage_shapes,
        macs=macs // batch,
        xla_flops=float(xla_flops) / batch,
    )
