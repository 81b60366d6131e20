"""The project's TFDS dataset builder: videos stored in ArrayRecord shards, read without TensorFlow.

One record per video: ``name`` (bytes), ``label``, ``num_frames``, and either ``frames`` (the JPEG-encoded
frames, config ``jpeg``) or ``video`` (the encoded video file's bytes, config ``video``). ``tfds.features.Video``
and ``Image`` would need TensorFlow, so frames are stored as object (bytes) tensors and decoded by the source
(only the frames a clip needs).

``scripts/prepare_dataset.py`` builds it: it writes ``manifest.json`` (splits, list files, input format) into
the manual dir and calls ``download_and_prepare``. Readers use ``tfds.data_source("small_big_video/jpeg",
data_dir=...)`` (with this module imported) or :func:`open_split`, which needs only the data dir.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds

MANIFEST = "manifest.json"
_CITATION = """@inproceedings{li2020smallbignet,
  title={SmallBigNet: Integrating Core and Contextual Views for Video Classification},
  author={Li, Xianhang and Wang, Yali and Zhou, Zhipeng and Qiao, Yu},
  booktitle={CVPR},
  note={arXiv:2006.14582},
  year={2020}
}"""


class SmallBigVideo(tfds.core.GeneratorBasedBuilder):
    """Videos with labels for SmallBigNet, as JPEG frames or encoded video bytes per record."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name="jpeg", description="JPEG-encoded frames per video."),
        tfds.core.BuilderConfig(name="video", description="The encoded video file (mp4, webm...) per video."),
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Run scripts/prepare_dataset.py, which writes manifest.json here."

    def _info(self) -> tfds.core.DatasetInfo:
        obj = lambda shape: tfds.features.Tensor(shape=shape, dtype=np.object_)
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "name": obj(()),
                    "label": tfds.features.Tensor(shape=(), dtype=np.int64),
                    "num_frames": tfds.features.Tensor(shape=(), dtype=np.int64),
                    "frames": obj((None,)),
                    "video": obj(()),
                }
            ),
            supervised_keys=None,
            homepage="https://github.com/xhl-video/SmallBigNet",
            citation=_CITATION,
            disable_shuffling=True,  # Records keep the list order (minus unreadable videos).
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        with open(os.path.join(dl_manager.manual_dir, MANIFEST)) as f:
            manifest = json.load(f)
        return {split: self._generate_examples(spec) for split, spec in manifest["splits"].items()}

    def _generate_examples(self, spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
        from smallbig_jax.data import prepare  # Deferred: prepare imports PyAV and PIL.

        yield from prepare.generate_examples(spec, self.builder_config.name)


def open_split(data_dir: str, split: str):
    """A random-access source over one split of a prepared dataset, from its directory alone.

    ``data_dir`` is the version folder (``.../small_big_video/jpeg/1.0.0``) or any parent that holds exactly
    one such folder."""
    builder = tfds.builder_from_directory(_find_version_dir(data_dir))
    return builder.as_data_source(split=split)


def _find_version_dir(data_dir: str) -> str:
    if os.path.exists(os.path.join(data_dir, "dataset_info.json")):
        return data_dir
    found = [root for root, _, files in os.walk(data_dir) if "dataset_info.json" in files]
    if len(found) != 1:
        raise FileNotFoundError(f"expected one prepared dataset (dataset_info.json) under {data_dir}, found {found}")
    return found[0]
