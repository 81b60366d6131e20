"""Spatial transforms: official multi-scale crop, eval geometry for every frame size, resize filters, flip,
normalisation."""

import numpy as np
from conftest import sbdata_video

from smallbig_jax.data import transforms


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


SHORT_SIDES = (100, 128, 240, 256, 288, 320, 360, 480)


def _all_sizes():
    """Every (h, w) with a short side above, from portrait 1:2 to landscape 2.5:1, every long side in between."""
    for s in SHORT_SIDES:
        for long in range(s, 5 * s // 2 + 1):
            yield s, long  # landscape and square
            if s < long <= 2 * s:
                yield long, s  # portrait


def test_eval_geometry_equals_the_official_for_every_frame_size():
    """The official resize size and crop corners (tests/protocol_reference.py, from docs/protocol.md) for every
    frame size, for the 3-crop test (256) and the single view (224 of 256); every crop fits; the resize and the
    crops run on a real (one-frame) clip of each size without error."""
    import protocol_reference as ref

    sizes = list(_all_sizes())
    assert len(sizes) == 5438
    for h, w in sizes:
        rh, rw = transforms.scaled_size(h, w, 256)
        assert (rw, rh) == ref.resized_wh(w, h, 256), (w, h)
        assert min(rh, rw) == 256 and rh <= 256 * h / min(h, w) and rw <= 256 * w / min(h, w)
        assert transforms.eval_crop_corners(rh, rw, 256, 3) == ref.fntest_corners(rw, rh, 256), (w, h)
        assert transforms.eval_crop_corners(rh, rw, 224, 1) == [ref.centre_corner(rw, rh, 224)], (w, h)
    clip = np.zeros((1, 1, 1, 3), np.uint8)
    for h, w in sizes[::7]:  # the actual resize and slices, on a seventh of the sizes (all short sides)
        frames = transforms.eval_resize(np.broadcast_to(clip, (1, h, w, 3)).copy(), 256, 3)
        for x, y in transforms.eval_crop_corners(*frames.shape[1:3], 256, 3):
            assert transforms.crop(frames, x, y, 256).shape == (1, 256, 256, 3)


def test_eval_geometry_cases_from_the_issue():
    # Kinetics rawframes_320: 426x320 -> 340x256 (truncated, not 341); bottom-right crop at x = 84.
    assert transforms.scaled_size(320, 426, 256) == (256, 340)
    assert transforms.eval_crop_corners(256, 340, 256, 3) == [(42, 0), (84, 0), (0, 0)]
    # 483x360 -> 343x256: (343 - 256) / 2 = 43.5 rounds to even 44, as the official code; 86.5 -> 86, 87.5 -> 88.
    assert transforms.scaled_size(360, 483, 256) == (256, 343)
    assert transforms.eval_crop_corners(256, 343, 256, 1)[0] == (44, 0)
    assert transforms.eval_crop_corners(256, 429, 256, 1)[0] == (86, 0)
    assert transforms.eval_crop_corners(256, 431, 256, 1)[0] == (88, 0)
    # Short side already 256: left as it is. Portrait 240x427 -> 256x455.
    assert transforms.scaled_size(256, 340, 256) == (256, 340)
    assert transforms.scaled_size(427, 240, 256) == (455, 256)


def test_train_crops_stay_inside_every_frame_size():
    """Many seeded multi-scale crops per frame size, with and without the resize to short side 320: every box lies
    inside the stored frame and has a positive size; PIL crops a sample of them without error."""
    clip = np.zeros((1, 1, 1, 3), np.uint8)
    for n, (h, w) in enumerate(_all_sizes()):
        rng = np.random.default_rng(n)
        for short in (None, 320):
            for _ in range(8):
                x0, y0, x1, y1 = transforms.train_crop_box(rng, h, w, 224, short)
                assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h, (w, h, short, (x0, y0, x1, y1))
        if n % 97 == 0:
            frames = np.broadcast_to(clip, (1, h, w, 3)).copy()
            assert transforms.resize_crop(frames, (x0, y0, x1, y1), 224).shape == (1, 224, 224, 3)
    # The case from the issue: 341x240 frames (resized to 454x320 by the official truncation) never overflow.
    rng = np.random.default_rng(0)
    boxes = [transforms.train_crop_box(rng, 240, 341, 224, 320) for _ in range(400)]
    assert all(b[2] <= 341 and b[3] <= 240 for b in boxes)


def test_eval_resize_filters_are_the_official_ones():
    """Three crops: OpenCV's bilinear on the stacked clip (as officially); one view: PIL's bilinear per frame."""
    import cv2
    from PIL import Image

    clip = np.random.default_rng(0).integers(0, 256, (3, 100, 176, 3), dtype=np.uint8)
    stacked = cv2.resize(clip.transpose(1, 2, 0, 3).reshape(100, 176, 9), (450, 256), interpolation=cv2.INTER_LINEAR)
    stacked = stacked.reshape(256, 450, 3, 3).transpose(2, 0, 1, 3)
    np.testing.assert_array_equal(transforms.eval_resize(clip, 256, 3), stacked)
    pil = np.stack([np.asarray(Image.fromarray(f).resize((450, 256), Image.BILINEAR)) for f in clip])
    np.testing.assert_array_equal(transforms.eval_resize(clip, 256, 1), pil)
    np.testing.assert_array_equal(transforms.eval_resize(clip[:, :, :120], 100, 3), clip[:, :, :120])  # as it is


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
    f = transforms.resize_crop(clip, (0, 0, 10, 8), 8, flip=True)  # the whole frame, mirrored (and squeezed)
    assert (np.diff(f[0, 0, :, 0].astype(int)) < 0).all() and (np.diff(clip[0, 0, :, 0].astype(int)) > 0).all()
    box = (2, 1, 9, 8)
    mirror = lambda x: x[:, :, ::-1]
    np.testing.assert_array_equal(
        transforms.resize_crop(clip, box, 5, flip=True), mirror(transforms.resize_crop(clip, box, 5))
    )


def test_normalize_values():
    x = np.array([[0, 0, 0], [255, 255, 255], [124, 116, 104]], np.uint8)
    y = transforms.normalize(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y[0], -transforms.IMAGENET_MEAN / transforms.IMAGENET_STD, rtol=1e-6)
    np.testing.assert_allclose(y[1], (1 - transforms.IMAGENET_MEAN) / transforms.IMAGENET_STD, rtol=1e-6)
    np.testing.assert_allclose(y[2], 0, atol=0.01)
