r"""How far bfloat16 training gradients are from float32 ones, in JAX and in PyTorch autocast, same network and data.

  python benchmarks/bf16_gradients.py --base_width 8 --size 32     # the test suite's tiny network
  python benchmarks/bf16_gradients.py --base_width 16 --size 64

A train-mode SmallBig network (BatchNorm affine parameters drawn at random so that the big views carry gradient)
and one batch of random clips: the gradient of the mean cross-entropy with respect to every parameter, computed with
float32 compute and with bfloat16 compute (float32 parameters, BatchNorm statistics and head), in both
formulations ("plain" and "cpu"); and the same in PyTorch (`smallbig_jax.torch_reference`, identical weights)
without and with `torch.autocast("cpu", torch.bfloat16)`. Printed: |g_bf16 - g_f32| / |g_f32| over all
parameters, and the leaves that differ most. This is a precision measurement, not a speed one: it tells whether
the bfloat16 path loses more than PyTorch's does (BENCHMARKS.md, "bfloat16 gradients").
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from flax import nnx

from smallbig_jax import cli
from smallbig_jax.models import build_model, layers

_VARIANT = flags.DEFINE_string("variant", "smallbig23", "Model variant.")
_WIDTH = flags.DEFINE_integer("base_width", 8, "Channels of the stem and first stage.")
_CLIPS = flags.DEFINE_integer("clips", 4, "Clips in the batch.")
_FRAMES = flags.DEFINE_integer("frames", 8, "Frames per clip.")
_SIZE = flags.DEFINE_integer("size", 32, "Height and width of the clips.")
NUM_CLASSES = 5


def relative_difference(got: dict, want: dict) -> float:
    return float(np.sqrt(sum(np.sum((got[k] - want[k]) ** 2) for k in want) / sum(np.sum(want[k] ** 2) for k in want)))


def jax_gradients(state, clips, labels, dtype, formulation: str) -> dict[str, np.ndarray]:
    model = build_model(_VARIANT.value, NUM_CLASSES, base_width=_WIDTH.value, dtype=dtype, formulation=formulation)
    nnx.update(model, state)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(params):
        logits = nnx.merge(graphdef, params, rest, copy=True)(clips)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    grads = jax.jit(jax.grad(loss), compiler_options=model.formulation.compiler_options("cpu"))(params)
    return {"/".join(map(str, path)): np.asarray(g, np.float64) for path, g in nnx.to_flat_state(grads)}


def torch_gradients(model, clips, labels, bf16: bool) -> dict[str, np.ndarray]:
    import torch

    state = {k: v.clone() for k, v in model.state_dict().items()}  # the running statistics move in train mode
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = torch.nn.functional.cross_entropy(model(clips).float(), labels)
    loss.backward()
    model.load_state_dict(state)
    return {k: p.grad.double().numpy().copy() for k, p in model.named_parameters()}


def report(name: str, got: dict, want: dict) -> None:
    per_leaf = sorted((np.linalg.norm(got[k] - want[k]) / (np.linalg.norm(want[k]) + 1e-30), k) for k in want)
    print(
        f"{name:<28} {relative_difference(got, want):9.4g}   worst: "
        + ", ".join(f"{k} {r:.2f}" for r, k in per_leaf[:-4:-1])
    )


def main(_):
    rng = np.random.default_rng(0)
    shape = (_CLIPS.value, _FRAMES.value, _SIZE.value, _SIZE.value, 3)
    clips = rng.standard_normal(shape).astype(np.float32)
    labels = rng.integers(0, NUM_CLASSES, _CLIPS.value)
    reference = build_model(_VARIANT.value, NUM_CLASSES, base_width=_WIDTH.value)
    for _, module in nnx.iter_modules(reference):
        if isinstance(module, layers.BatchNorm):
            module.scale[...] = jnp.asarray(rng.uniform(0.5, 1.5, module.scale.shape), jnp.float32)
            module.bias[...] = jnp.asarray(rng.normal(0, 0.1, module.bias.shape), jnp.float32)
    state = nnx.state(reference)
    print(f"{_VARIANT.value}, width {_WIDTH.value}, clips {shape}, train mode: |g - g_float32| / |g_float32|")
    f32 = jax_gradients(state, clips, labels, jnp.float32, "plain")
    for formulation in ("plain", "cpu"):
        report(f"JAX {formulation} float32", jax_gradients(state, clips, labels, jnp.float32, formulation), f32)
        report(f"JAX {formulation} bfloat16", jax_gradients(state, clips, labels, jnp.bfloat16, formulation), f32)
    try:
        import torch
    except ImportError:
        print("PyTorch not installed: `pip install -e '.[torch]'` for its autocast figure")
        return
    from smallbig_jax.convert import export_state_dict
    from smallbig_jax.torch_reference import TorchSmallBigNet

    model = TorchSmallBigNet(_VARIANT.value, NUM_CLASSES, t_length=_FRAMES.value, base_width=_WIDTH.value).train()
    model.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in export_state_dict(reference).items()})
    x = torch.as_tensor(clips).permute(0, 4, 1, 2, 3).contiguous()
    y = torch.as_tensor(labels)
    torch_f32 = torch_gradients(model, x, y, bf16=False)
    report("PyTorch autocast bfloat16", torch_gradients(model, x, y, bf16=True), torch_f32)


if __name__ == "__main__":
    cli.choose_jax_platforms()  # the aot extra's TPU and CUDA plugins left out on a CPU-only machine
    app.run(main)
