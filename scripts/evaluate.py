r"""Multi-view evaluation (config.data.num_clips x num_crops views per video) of a training run or a converted
PyTorch checkpoint; prints top-1/top-5 over videos and writes one JSON line of predictions per video.

  python scripts/evaluate.py --config configs/synthetic_smallbig.py --workdir workdirs/synthetic [--best]
  python scripts/evaluate.py --config configs/kinetics400_smallbig50_8x8.py --converted converted/smallbig50_k400 \
      --config.data.arrayrecord_dir=/data/k400
"""

from smallbig_jax.host_memory import keep_freed_host_memory

keep_freed_host_memory()  # restarts once so that XLA:CPU steps do not page-fault their temporaries back in

import json
import os

from absl import app, flags
from ml_collections import config_flags

from smallbig_jax import cli
from smallbig_jax.distributed import initialize_distributed
from smallbig_jax.evaluate import evaluate_checkpoint, write_predictions

_CONFIG = config_flags.DEFINE_config_file("config", None, "A config file in configs/.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir: its newest intact checkpoint is evaluated.")
_CONVERTED = flags.DEFINE_string("converted", None, "A directory written by scripts/convert_pytorch.py.")
_STEP = flags.DEFINE_integer("step", None, "With --workdir: this checkpoint step instead of the latest.")
_BEST = flags.DEFINE_bool("best", False, "With --workdir: the checkpoint with the best (top1 + top5) / 2.")
_OUT = flags.DEFINE_string(
    "predictions", None, "Predictions file (default: <workdir or converted>/predictions_eval.jsonl)."
)
flags.mark_flag_as_required("config")
cli.define_debug_flag()


@cli.user_errors_exit  # a bad config, checkpoint or data file: its message and exit status 2
def main(argv):
    del argv
    initialize_distributed()  # multi-host runs: see smallbig_jax/distributed.py (a no-op on one machine)
    if (_WORKDIR.value is None) == (_CONVERTED.value is None):
        raise app.UsageError("give exactly one of --workdir and --converted")
    result = evaluate_checkpoint(
        _CONFIG.value, workdir=_WORKDIR.value, converted=_CONVERTED.value, step=_STEP.value, best=_BEST.value
    )
    out = _OUT.value or os.path.join(_WORKDIR.value or _CONVERTED.value, "predictions_eval.jsonl")
    write_predictions(out, result)
    views = _CONFIG.value.data.num_clips * _CONFIG.value.data.num_crops
    print(
        f"top-1 {result['top1']:.4f}  top-5 {result['top5']:.4f}  over {result['videos']} videos x {views} views "
        f"(step {result['step']}); predictions in {out}"
    )
    for name, reason in result.get("excluded", {}).items():
        print(f"excluded (data.eval_bad_input='exclude'): {name}: {reason}")
    print(json.dumps({k: v for k, v in result.items() if k not in ("predictions", "names", "excluded")}))


if __name__ == "__main__":
    app.run(main)
