r"""Multi-view evaluation (config.data.num_clips x num_crops views per video) of a training run or a converted
PyTorch checkpoint; prints top-1/top-5 over videos and writes one JSON line of predictions per video.

  smallbig-jax evaluate --config configs/synthetic_smallbig.py --workdir workdirs/synthetic [--best]
  smallbig-jax evaluate --config configs/kinetics400_smallbig50_8x8.py --converted converted/smallbig50_k400 \
      --config.data.arrayrecord_dir=/data/k400
"""

import json
import os

from absl import app, flags

from smallbig_jax import cli
from smallbig_jax.distributed import initialize_distributed
from smallbig_jax.evaluate import evaluate_checkpoint, write_predictions

FLAGS = flags.FlagValues()
_CONFIG = cli.define_config_flag(FLAGS)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "A training workdir: its newest intact checkpoint is evaluated.", flag_values=FLAGS
)
_CONVERTED = flags.DEFINE_string("converted", None, "A directory written by smallbig-jax convert.", flag_values=FLAGS)
_STEP = flags.DEFINE_integer(
    "step", None, "With --workdir: this checkpoint step instead of the latest.", flag_values=FLAGS
)
_BEST = flags.DEFINE_bool(
    "best", False, "With --workdir: the checkpoint with the best (top1 + top5) / 2.", flag_values=FLAGS
)
_OUT = flags.DEFINE_string(
    "predictions",
    None,
    "Predictions file (default: <workdir or converted>/predictions_eval.jsonl).",
    flag_values=FLAGS,
)
flags.mark_flag_as_required("config", flag_values=FLAGS)
cli.define_debug_flag(FLAGS)


def main() -> int | None:
    initialize_distributed()  # multi-host runs: see smallbig_jax/distributed.py (a no-op on one machine)
    if (_WORKDIR.value is None) == (_CONVERTED.value is None):
        raise app.UsageError("give exactly one of --workdir and --converted")
    config = cli.config_value(_CONFIG)
    result = evaluate_checkpoint(
        config, workdir=_WORKDIR.value, converted=_CONVERTED.value, step=_STEP.value, best=_BEST.value
    )
    out = _OUT.value or os.path.join(_WORKDIR.value or _CONVERTED.value, "predictions_eval.jsonl")
    write_predictions(out, result)
    views = config.data.num_clips * config.data.num_crops
    print(
        f"top-1 {result['top1']:.4f}  top-5 {result['top5']:.4f}  over {result['videos']} videos x {views} views "
        f"(step {result['step']}); predictions in {out}"
    )
    for name, reason in result.get("excluded", {}).items():
        print(f"excluded (data.eval_bad_input='exclude'): {name}: {reason}")
    print(json.dumps({k: v for k, v in result.items() if k not in ("predictions", "names", "excluded")}))
