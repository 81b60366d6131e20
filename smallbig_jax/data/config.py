"""Every data option and its default, without loading the input pipeline (grain, PyAV, JAX): a config file builds
its data config from `default_data_config()` in a fraction of a second."""

from __future__ import annotations

import ml_collections


def default_data_config() -> ml_collections.ConfigDict:
    """Every data option and its default (Kinetics-style dense 8x8, 224 crops). Fields:

    * ``format``: 'frames' (frame folders), 'video' (files decoded by PyAV) or 'arrayrecord' (prepared TFDS).
    * ``root``, ``train_list``, ``val_list``: list files and the folder their names are relative to
      (frames/video). ``frame_template`` (1-based), ``kinetics_ids`` (folders named by the 11-char YouTube ID).
    * ``arrayrecord_dir``, ``train_split``, ``val_split``: the prepared dataset and its split names.
    * ``num_frames`` (T), ``stride``, ``sampling`` ('dense' Kinetics / 'segment' Something-Something).
    * ``crop_size``, ``scale_size`` (eval short side), ``train_short_side`` (0: as stored; 320 mimics the
      official rawframes_320), ``scales``, ``max_distort``, ``flip`` (off for Something-Something).
    * ``num_clips``, ``num_crops`` (1 or 3): eval views per video.
    * ``bad_input`` ('error'|'resample'), ``max_resample``, ``eval_bad_input`` ('error'|'exclude').
    * ``worker_count``, ``worker_buffer_size`` (grain worker processes and batches queued per worker),
      ``reader_threads``, ``reader_buffer`` (threads computing batches in each process, batches they may hold),
      ``device_prefetch`` (global batches on the devices ahead), ``dtype``, ``decode_threads`` (PyAV threads).
    """
    c = ml_collections.ConfigDict()
    c.format = "arrayrecord"
    c.root = ""
    c.train_list = ""
    c.val_list = ""
    c.frame_template = "img_{:05d}.jpg"
    c.kinetics_ids = False
    c.arrayrecord_dir = ""
    c.train_split = "train"
    c.val_split = "val"
    c.num_frames = 8
    c.stride = 8
    c.sampling = "dense"
    c.crop_size = 224
    c.scale_size = 256
    c.train_short_side = 0
    c.scales = (1.0, 0.875, 0.75, 0.66)
    c.max_distort = 1
    c.flip = True
    c.num_clips = 1
    c.num_crops = 1
    c.bad_input = "error"
    c.max_resample = 10
    c.eval_bad_input = "error"
    c.worker_count = 0
    c.worker_buffer_size = 2
    c.reader_threads = 2
    c.reader_buffer = 2
    c.device_prefetch = 2
    c.dtype = "float32"
    c.decode_threads = False
    return c
