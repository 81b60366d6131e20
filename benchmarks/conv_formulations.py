r"""Op-level timing of SmallBig-R50's convs in the formulations XLA:CPU offers, next to PyTorch.

  python benchmarks/conv_formulations.py --frames_x_batch 16 --steps 5

For every distinct conv of SmallBig-R50 at 8x224x224, batch 2 (frames folded into the batch: N*T = 16), times the
forward and the forward+backward (gradients of input and kernel) of:
  ynnpack  lax.conv_general_dilated compiled with XLA:CPU's defaults (convolutions go to YNNPACK)
  xla      the same compiled with the CPU formulation's options (`CPU.compiler_options("cpu")`: convolutions stay
           with XLA's own Eigen conv)
  extra    `xla` compiled with `--extra_options` added (XLA:CPU options to try), if given
  torch    torch.nn.functional.conv2d, channels_last, same shapes (oneDNN)
Rows alternate between formulations step by step, so machine load hits all of them alike. Results are printed as
a table; the whole-model effect of a formulation is measured with `smallbig-jax benchmark --compare_torch`.
"""

from __future__ import annotations

import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from jax import lax

from smallbig_jax import cli
from smallbig_jax.models.cpu_formulation import CPU

_NT = flags.DEFINE_integer("frames_x_batch", 16, "N*T of the folded batch.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps per formulation.")
_ONLY = flags.DEFINE_list("only", [], "Names of shapes to run (default all).")
_BWD = flags.DEFINE_boolean("backward", True, "Also time forward+backward.")
_EXTRA = flags.DEFINE_string(
    "extra_options",
    "",
    "XLA:CPU compile options 'key=value;key=value' added to the model's: times a fifth "
    "formulation, 'extra' (the model's conv2d compiled with them), e.g. xla_cpu_use_onednn=true.",
)

# name: (H_in, C_in, C_out, k, stride) at 224 input; count = how many times the model runs it (big views included).
SHAPES = {
    "stem7x7": (224, 3, 64, 7, 2, 1),
    "l1_3x3": (56, 64, 64, 3, 1, 3),
    "l1_1x1_in": (56, 256, 64, 1, 1, 2),
    "l1_1x1_out": (56, 64, 256, 1, 1, 3),
    "l2_3x3": (28, 128, 128, 3, 1, 6),
    "l2_1x1_in": (28, 512, 128, 1, 1, 6),
    "l2_1x1_out": (28, 128, 512, 1, 1, 4),
    "l3_3x3": (14, 256, 256, 3, 1, 10),
    "l3_1x1_in": (14, 1024, 256, 1, 1, 10),
    "l3_1x1_out": (14, 256, 1024, 1, 1, 6),
    "l4_3x3": (7, 512, 512, 3, 1, 4),
    "l4_1x1_in": (7, 2048, 512, 1, 1, 4),
    "l4_1x1_out": (7, 512, 2048, 1, 1, 3),
    "l2_3x3_s2": (56, 128, 128, 3, 2, 2),
}


def conv2d(x, w, stride, pad):
    return lax.conv_general_dilated(
        x, w, (stride, stride), ((pad, pad), (pad, pad)), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def timeit(fns, steps):
    times = {k: [] for k in fns}
    for i in range(steps + 1):
        for k, f in fns.items():
            s = time.perf_counter()
            f()
            if i:
                times[k].append((time.perf_counter() - s) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv):
    del argv
    import torch

    torch.set_num_threads(os.cpu_count())
    options = CPU.compiler_options("cpu")
    nt = _NT.value
    rng = np.random.default_rng(0)
    names = ("ynnpack", "xla") + (("extra",) if _EXTRA.value else ()) + ("torch",)
    extra = {
        k: {"true": True, "false": False}.get(v.lower(), v)
        for k, v in (item.split("=", 1) for item in _EXTRA.value.split(";") if item)
    }
    print(f"{'shape':12} {'x':>4} {'mode':4} " + " ".join(f"{k:>8}" for k in names) + "  (ms)")
    for name, (h, cin, cout, k, stride, count) in SHAPES.items():
        if _ONLY.value and name not in _ONLY.value:
            continue
        pad = k // 2
        x = rng.standard_normal((nt, h, h, cin), np.float32)
        w = (rng.standard_normal((k, k, cin, cout), np.float32) / np.sqrt(k * k * cin)).astype(np.float32)
        xj, wj = jnp.asarray(x), jnp.asarray(w)
        xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).contiguous(memory_format=torch.channels_last)
        wt = torch.from_numpy(w.transpose(3, 2, 0, 1).copy()).contiguous(memory_format=torch.channels_last)
        forms = {"ynnpack": (conv2d, None), "xla": (conv2d, options)}
        if extra:
            forms["extra"] = (conv2d, {**options, **extra})
        fwd = {
            key: jax.jit(lambda x, w, f=f: f(x, w, stride, pad), compiler_options=o) for key, (f, o) in forms.items()
        }
        ref = np.asarray(fwd["ynnpack"](xj, wj))
        err = max(float(np.abs(np.asarray(fwd[key](xj, wj)) - ref).max() / np.abs(ref).max()) for key in forms)
        with torch.inference_mode():
            t_out = torch.nn.functional.conv2d(xt, wt, stride=stride, padding=pad).permute(0, 2, 3, 1).numpy()
        terr = float(np.abs(t_out - ref).max() / np.abs(ref).max())

        def torch_fwd():
            with torch.inference_mode():
                torch.nn.functional.conv2d(xt, wt, stride=stride, padding=pad)

        steps = {key: (lambda f=f: f(xj, wj).block_until_ready()) for key, f in fwd.items()}
        r = timeit({**steps, "torch": torch_fwd}, _STEPS.value)
        print(
            f"{name:12} {count:>4} fwd  "
            + " ".join(f"{r[k]:>8.2f}" for k in names)
            + f"  rel.err {err:.1e} / torch {terr:.1e}",
            flush=True,
        )
        if not _BWD.value:
            continue
        bwd = {
            key: jax.jit(
                jax.grad(lambda x, w, f=f: jnp.sum(f(x, w, stride, pad) ** 2) * 0.5, argnums=(0, 1)), compiler_options=o
            )
            for key, (f, o) in forms.items()
        }
        xg = xt.clone().requires_grad_(True)
        wg = wt.clone().requires_grad_(True)

        def torch_bwd():
            y = torch.nn.functional.conv2d(xg, wg, stride=stride, padding=pad)
            (y.square().sum() * 0.5).backward()
            xg.grad = wg.grad = None

        steps = {key: (lambda f=f: jax.block_until_ready(f(xj, wj))) for key, f in bwd.items()}
        r = timeit({**steps, "torch": torch_bwd}, _STEPS.value)
        print(f"{name:12} {count:>4} f+b  " + " ".join(f"{r[k]:>8.2f}" for k in names), flush=True)


if __name__ == "__main__":
    cli.choose_jax_platforms()  # the aot extra's TPU and CUDA plugins left out on a CPU-only machine
    app.run(main)
