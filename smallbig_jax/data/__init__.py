"""Video input: list files, sources (frame folders, PyAV video files, ArrayRecord/TFDS), sampling, transforms,
and the grain pipelines. Start at :mod:`smallbig_jax.data.pipeline`."""
