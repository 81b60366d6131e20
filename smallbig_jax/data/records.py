"""The ArrayRecord record of one video, defined once: what `prepare` writes (`features`, `record`) and what
`sources.ArrayRecordSource` reads back (`parse`).

A record holds ``name`` (bytes: the video's path in its list), ``label``, ``num_frames`` and either ``frames`` (the
JPEG bytes of every frame, builder config ``jpeg``) or ``video`` (the encoded video file's bytes, config ``video``);
the other one is empty. ``tfds.features.Video`` and ``Image`` would need TensorFlow, so frames are stored as object
(bytes) tensors and decoded by the source (only the frames a clip needs). A record is parsed straight from its
``tf.train.Example`` proto: TFDS's generic parser turns the frame list into a numpy array, copying every frame of
the video (tens of MB/s lost for 8 frames used), which was the slowest step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.proto import tf_example_pb2


def features() -> tfds.features.FeaturesDict:
    """The TFDS features of a record (the builder's `_info`)."""
    obj = lambda shape: tfds.features.Tensor(shape=shape, dtype=np.object_)
    return tfds.features.FeaturesDict(
        {
            "name": obj(()),
            "label": tfds.features.Tensor(shape=(), dtype=np.int64),
            "num_frames": tfds.features.Tensor(shape=(), dtype=np.int64),
            "frames": obj((None,)),
            "video": obj(()),
        }
    )


def record(name: str, label: int, num_frames: int, *, frames: Sequence[bytes] = (), video: bytes = b"") -> dict:
    """The example the builder writes for a video: its JPEG `frames` or its encoded `video`."""
    data = np.empty((len(frames),), np.object_)
    data[:] = list(frames)
    return {"name": name, "label": label, "num_frames": num_frames, "frames": data, "video": video}


def parse(raw: bytes) -> dict[str, Any]:
    """``{"name", "label", "num_frames", "frames" (a sequence of JPEG bytes), "video"}`` of a serialized record."""
    f = tf_example_pb2.Example.FromString(raw).features.feature
    return {
        "name": f["name"].bytes_list.value[0].decode(),
        "label": int(f["label"].int64_list.value[0]),
        "num_frames": int(f["num_frames"].int64_list.value[0]),
        "frames": f["frames"].bytes_list.value,
        "video": f["video"].bytes_list.value[0] if f["video"].bytes_list.value else b"",
    }
