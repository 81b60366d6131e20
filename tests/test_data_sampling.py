"""Temporal samplers against the official rules (docs/protocol.md#temporal-sampling), 0-based."""

import numpy as np
import pytest

from smallbig_jax.data import sampling


def test_dense_train_long_video_keeps_stride_and_random_start():
    starts = set()
    for s in range(200):
        idx = sampling.dense_train_indices(np.random.default_rng(s), 100, 8, 8)
        assert np.all(np.diff(idx) == 8)
        assert 0 <= idx[0] <= 100 - 64 and idx[-1] <= 99
        starts.add(int(idx[0]))
    assert min(starts) == 0 and max(starts) == 36 and len(starts) > 25


def test_dense_stride_drops_until_span_fits():
    assert sampling.dense_stride(64, 8, 8) == 8
    assert sampling.dense_stride(63, 8, 8) == 7
    assert sampling.dense_stride(20, 8, 8) == 2
    idx = sampling.dense_train_indices(np.random.default_rng(0), 20, 8, 8)
    assert np.all(np.diff(idx) == 2) and idx[-1] <= 19


def test_dense_short_video_clamps_to_last_frame():
    idx = sampling.dense_train_indices(np.random.default_rng(0), 5, 8, 8)
    np.testing.assert_array_equal(idx, [0, 1, 2, 3, 4, 4, 4, 4])


def test_dense_multiclip_spread_and_wrap():
    idx = sampling.dense_multiclip_indices(300, 8, 8, 10)
    assert idx.shape == (10, 8)
    np.testing.assert_array_equal(idx[:, 0], np.linspace(0, 300 - 64 - 1, 10).astype(int))
    assert idx[0, 0] == 0 and idx[-1, 0] == 235
    short = sampling.dense_multiclip_indices(40, 8, 8, 3)
    assert short.max() < 40 and short[0, 5] == 0  # 0 + 40 wraps to 0.


def test_dense_center_is_centred():
    np.testing.assert_array_equal(sampling.dense_center_indices(100, 8, 8), 18 + 8 * np.arange(8))


def test_segment_train_one_frame_per_segment():
    for s in range(50):
        idx = sampling.segment_train_indices(np.random.default_rng(s), 37, 8)
        seg = 37 // 8
        assert np.all(idx // seg == np.arange(8))
    assert len({tuple(sampling.segment_train_indices(np.random.default_rng(s), 37, 8)) for s in range(20)}) > 10
    short = sampling.segment_train_indices(np.random.default_rng(0), 5, 8)
    assert short.shape == (8,) and short.max() < 5 and np.all(np.diff(short) >= 0)


def test_segment_eval_centres_and_starts():
    np.testing.assert_array_equal(sampling.segment_center_indices(16, 8), [1, 3, 5, 7, 9, 11, 13, 15])
    np.testing.assert_array_equal(sampling.segment_start_indices(16, 8), [0, 2, 4, 6, 8, 10, 12, 14])
    two = sampling.eval_indices(16, "segment", 8, 8, 2)
    np.testing.assert_array_equal(two[1], [0, 2, 4, 6, 8, 10, 12, 14])
    with pytest.raises(ValueError):
        sampling.eval_indices(16, "segment", 8, 8, 3)


def test_unknown_sampling_is_an_error():
    with pytest.raises(ValueError, match="unknown sampling"):
        sampling.train_indices(np.random.default_rng(0), 10, "tsm", 8, 8)
