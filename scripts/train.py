r"""Train (and evaluate) SmallBigNet from a config; resumes from the workdir's newest intact checkpoint.

  python scripts/train.py --config configs/synthetic_smallbig.py --workdir workdirs/synthetic
  python scripts/train.py --config configs/kinetics400_smallbig50_8x8.py --workdir gs://bucket/k400 \
      --config.data.arrayrecord_dir=/data/k400 --config.batch_size=256

Any config field can be overridden with --config.<field>=<value>.
"""

from smallbig_jax.host_memory import keep_freed_host_memory

keep_freed_host_memory()  # restarts once so that XLA:CPU steps do not page-fault their temporaries back in

import json

from absl import app, flags
from ml_collections import config_flags

from smallbig_jax import cli
from smallbig_jax.distributed import initialize_distributed
from smallbig_jax.train import train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file("config", None, "A config file in configs/.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, logs and the curves go.")
flags.mark_flags_as_required(["config", "workdir"])
cli.define_debug_flag()


@cli.user_errors_exit  # a bad config, checkpoint or data file: its message and exit status 2
def main(argv):
    del argv
    initialize_distributed()  # multi-host runs: see smallbig_jax/distributed.py (a no-op on one machine)
    workdir = _WORKDIR.value
    result = train_and_evaluate(_CONFIG.value, workdir)
    print(json.dumps(result))
    if "top1" in result:
        views = _CONFIG.value.data.num_clips * _CONFIG.value.data.num_crops
        print(
            f"\ntest top-1 {result['top1']:.4f}  top-5 {result['top5']:.4f}  over {result['videos']} videos x "
            f"{views} views"
        )
    print(f"checkpoints: {workdir}/checkpoints   TensorBoard: {workdir}/tensorboard   log: {workdir}/metrics.jsonl")
    predictions = f"   predictions: {workdir}/predictions_test.jsonl" if "top1" in result else ""  # final_eval
    print(f"curves: {workdir}/curves.png{predictions}")


if __name__ == "__main__":
    app.run(main)
