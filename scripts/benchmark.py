r"""Model throughput on this machine's first device: evaluation forward and training step.

  python scripts/benchmark.py                       # SmallBig-R50, 8x224x224, batch 2, float32
  python scripts/benchmark.py --variant res50 --batch 4 --dtype bfloat16

Prints a table and appends a JSON record to benchmarks/results.jsonl (see BENCHMARKS.md).
"""

import json
import pathlib
import sys

from absl import app, flags

from smallbig_jax.benchmark import benchmark_model, format_results
from smallbig_jax.config import DTYPES
from smallbig_jax.models import VARIANTS

_VARIANT = flags.DEFINE_enum("variant", "smallbig50", sorted(VARIANTS), "Model variant.")
_CLASSES = flags.DEFINE_integer("num_classes", 400, "Classifier size.")
_FRAMES = flags.DEFINE_integer("frames", 8, "Frames per clip.")
_SIZE = flags.DEFINE_integer("size", 224, "Crop size.")
_BATCH = flags.DEFINE_integer("batch", 2, "Clips per step.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", sorted(DTYPES), "Compute dtype (parameters stay float32).")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps after warm-up.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")
_OUT = flags.DEFINE_string("results", "benchmarks/results.jsonl", "JSON-lines file the record is appended to.")


def main(argv):
    del argv
    record = benchmark_model(
        _VARIANT.value,
        num_classes=_CLASSES.value,
        frames=_FRAMES.value,
        size=_SIZE.value,
        batch=_BATCH.value,
        dtype=_DTYPE.value,
        steps=_STEPS.value,
        warmup=_WARMUP.value,
    )
    record["command"] = " ".join(["python", *sys.argv])
    print(format_results(record))
    path = pathlib.Path(_OUT.value)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
    print(f"appended to {path}")


if __name__ == "__main__":
    app.run(main)
