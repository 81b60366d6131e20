r"""Train (and evaluate) SmallBigNet from a config; resumes from the workdir's latest checkpoint.

  python scripts/train.py --config configs/synthetic_smallbig.py --workdir workdirs/synthetic
  python scripts/train.py --config configs/kinetics400_smallbig50_8x8.py --workdir gs://bucket/k400 \
      --config.data.arrayrecord_dir=/data/k400 --config.batch_size=256

Any config field can be overridden with --config.<field>=<value>.
"""

import json
import logging

from absl import app, flags
from ml_collections import config_flags

from smallbig_jax.train import train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file("config", None, "A config file in configs/.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, logs and the curves go.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    logging.getLogger().setLevel(logging.INFO)
    result = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    app.run(main)
