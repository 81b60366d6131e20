"""Spatial transforms: official multi-scale crop, eval crops, resize, flip, normalisation."""

import numpy as np
import pytest

from smallbig_jax.data import transforms
from conftest import sbdata_video


def test_multiscale_crop_sizes_and_fixed_offsets():
    h, w, size = 320, 426, 224
    allowed = [int(320 * s) for s in transforms.MULTISCALE_SCALES]  # 320, 280, 240, 211
    allowed = [224 if abs(a - 224) < 3 else a for a in allowed]
    seen_pairs, seen_offsets = set(), set()
    for s in range(600):
        x, y, cw, ch = transforms.multiscale_crop_box(np.random.default_rng(s), h, w, size)
        assert cw in allowed and ch in allowed
        assert abs(allowed.index(cw) - allowed.index(ch)) <= 1  # max_distort 1
        assert (x, y) in transforms.fix_offsets(w, h, cw, ch)
        assert x + cw <= w and y + ch <= h
        seen_pairs.add((cw, ch))
        seen_offsets.add((x, y, cw, ch))
    assert len(seen_pairs) == 10  # 4 + 3 + 3 pairs within distortion 1
    assert len(transforms.fix_offsets(w, h, 224, 224)) == 13
    assert any(o[:2] == (0, 0) for o in seen_offsets)


def test_snap_within_3_pixels():
    # short side 256: 256*.875 = 224 exactly, 256*.66 = 168; short 340: 340*.66=224.4 -> 224
    sizes = {transforms.multiscale_crop_box(np.random.default_rng(s), 340, 400, 224)[2] for s in range(300)}
    assert 224 in sizes and 224 == int(340 * 0.66)


def test_eval_boxes_centre_and_three_crops():
    # 240x320 -> short side 256 gives 256x341 (factor 16/15).
    (box,) = transforms.eval_crop_boxes(240, 320, 256, 224, 1)
    f = 256 / 240
    assert box == pytest.approx(((341 - 224) // 2 / f, 16 / f, ((341 - 224) // 2 + 224) / f, 240 / f))
    boxes = transforms.eval_crop_boxes(240, 320, 256, 224, 3)
    assert boxes[0] == pytest.approx((42 / f, 0, 298 / f, 240))  # centre
    assert boxes[1] == pytest.approx((85 / f, 0, 341 / f, 240))  # bottom-right
    assert boxes[2] == pytest.approx((0, 0, 240, 240))  # top-left


def test_resize_crop_takes_the_box():
    clip = sbdata_video(2, 48, 64)
    out = transforms.resize_crop(clip, (32, 0, 64, 32), 16)
    assert out.shape == (2, 16, 16, 3) and out.dtype == np.uint8
    # The red ramp is 0..255 over x: the right half starts near 128.
    assert out[..., 0].min() >= 120 and out[..., 2].max() <= 180
    left = transforms.resize_crop(clip, (0, 0, 32, 32), 16)
    assert left[..., 0].max() <= 135


def test_flip_mirrors_width():
    clip = sbdata_video(2, 8, 10)
    f = transforms.flip(clip)
    np.testing.assert_array_equal(f[:, :, 0], clip[:, :, -1])
    assert f[0, 0, 0, 0] == 255 and clip[0, 0, 0, 0] == 0
    np.testing.assert_array_equal(transforms.flip(f), clip)
    box = (2, 1, 9, 8)
    np.testing.assert_array_equal(
        transforms.resize_crop(clip, box, 5, flip=True), transforms.flip(transforms.resize_crop(clip, box, 5))
    )


def test_normalize_values():
    x = np.array([[0, 0, 0], [255, 255, 255], [124, 116, 104]], np.uint8)
    y = transforms.normalize(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y[0], -transforms.IMAGENET_MEAN / transforms.IMAGENET_STD, rtol=1e-6)
    np.testing.assert_allclose(y[1], (1 - transforms.IMAGENET_MEAN) / transforms.IMAGENET_STD, rtol=1e-6)
    np.testing.assert_allclose(y[2], 0, atol=0.01)
