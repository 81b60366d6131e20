r"""Train (and evaluate) SmallBigNet from a config; resumes from the workdir's newest intact checkpoint.

  smallbig-jax train --config configs/synthetic_smallbig.py --workdir workdirs/synthetic
  smallbig-jax train --config configs/kinetics400_smallbig50_8x8.py --workdir gs://bucket/k400 \
      --config.data.arrayrecord_dir=/data/k400 --config.batch_size=256

Any config field can be overridden with --config.<field>=<value>.
"""

import json

from absl import flags

from smallbig_jax import cli
from smallbig_jax.distributed import initialize_distributed
from smallbig_jax.train import train_and_evaluate

FLAGS = flags.FlagValues()
_CONFIG = cli.define_config_flag(FLAGS)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, logs and the curves go.", flag_values=FLAGS)
flags.mark_flags_as_required(["config", "workdir"], flag_values=FLAGS)
cli.define_debug_flag(FLAGS)


def main() -> int | None:
    initialize_distributed()  # multi-host runs: see smallbig_jax/distributed.py (a no-op on one machine)
    workdir = _WORKDIR.value
    config = cli.config_value(_CONFIG)
    result = train_and_evaluate(config, workdir)
    print(json.dumps(result))
    if "top1" in result:
        views = config.data.num_clips * config.data.num_crops
        print(
            f"\ntest top-1 {result['top1']:.4f}  top-5 {result['top5']:.4f}  over {result['videos']} videos x "
            f"{views} views"
        )
    print(f"checkpoints: {workdir}/checkpoints   TensorBoard: {workdir}/tensorboard   log: {workdir}/metrics.jsonl")
    predictions = f"   predictions: {workdir}/predictions_test.jsonl" if "top1" in result else ""  # final_eval
    print(f"curves: {workdir}/curves.png{predictions}")
