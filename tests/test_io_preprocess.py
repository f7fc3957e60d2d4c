"""Per-model preprocessing against the reference rules, and the model ↔ original pixel transform."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import PHOTOS_DIR
from PIL import Image

from lite3r.errors import InputError, UnsupportedError
from lite3r.io.preprocess import IMAGENET_MEAN, IMAGENET_STD, preprocess

LEFT = PHOTOS_DIR / "motorcycle_left.jpg"  # 741 × 500
CAT = PHOTOS_DIR / "chelsea.jpg"  # 451 × 300


def smooth_image(w, h) -> Image.Image:
    """A smooth colour ramp, so resampled colours can be compared across transforms."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    arr = np.stack([255 * x / (w - 1), 255 * y / (h - 1), 128 + 60 * np.sin(x / 17 + y / 23)], -1)
    return Image.fromarray(np.round(arr).astype(np.uint8))


def test_vggt_crop_matches_reference_formula():
    out = preprocess([LEFT], "vggt_crop")
    assert out.colors.shape == (1, 350, 518, 3)  # round(500·518/741/14)·14 = 350
    ref = np.asarray(Image.open(LEFT).convert("RGB").resize((518, 350), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(out.colors[0], ref)
    t = out.transforms[0]
    assert t.original_size == (500, 741) and t.model_size == (350, 518)
    assert t.scale == (518 / 741, 350 / 500) and t.offset == (0.0, 0.0)
    x = out.tensor()
    assert x.shape == (1, 1, 3, 350, 518) and float(x.max()) <= 1.0
    np.testing.assert_array_equal(x[0, 0].permute(1, 2, 0).numpy(), ref.astype(np.float32) / 255)
    assert out.metadata["rule"] == "vggt_crop" and out.metadata["mixed_sizes"] is None


def test_vggt_crop_bankers_rounding_and_portrait_crop():
    # 74 × 25: 25·518/74/14 = 12.5 exactly → Python round → 12 → height 168 (not 182)
    out = preprocess([smooth_image(74, 25)], "vggt_crop")
    assert out.image_size == (168, 518)
    img = smooth_image(300, 600)  # portrait: height 1036 → centre crop to 518, top 259 rows dropped
    out = preprocess([img], "vggt_crop")
    full = np.asarray(img.resize((518, 1036), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(out.colors[0], full[259 : 259 + 518])
    t = out.transforms[0]
    assert t.offset == (0.0, -259.0) and t.content_box == (0, 0, 518, 518)
    # the model's centre pixel is the original's centre pixel
    np.testing.assert_allclose(t.to_original([259.0, 259.0]), [150.0, 300.0], atol=1e-9)


def test_vggt_pad_white_and_box():
    out = preprocess([LEFT], "vggt_pad")
    assert out.image_size == (518, 518)
    t = out.transforms[0]
    assert t.content_box == (84, 0, 434, 518) and t.offset == (0.0, 84.0)
    assert (out.colors[0, :84] == 255).all() and (out.colors[0, 434:] == 255).all()
    assert not out.content_masks()[0, :84].any() and out.content_masks()[0, 84:434].all()
    portrait = preprocess([smooth_image(200, 401)], "vggt_pad")  # width round(200·518/401/14)·14 = 252
    assert portrait.transforms[0].content_box == (0, 133, 518, 385)
    assert (portrait.colors[0, :, :133] == 255).all()


def test_vggt_mixed_sizes_padded_to_largest():
    out = preprocess([LEFT, smooth_image(300, 300)], "vggt_crop")
    assert out.image_size == (518, 518)  # 350 high and 518 high → padded to 518
    t0, t1 = out.transforms
    assert t0.content_box == (84, 0, 434, 518) and t0.offset[1] == 84.0
    assert t1.content_box == (0, 0, 518, 518)
    assert out.metadata["mixed_sizes"].startswith("pad white")
    assert (out.colors[0, :84] == 255).all()


def test_transform_maps_colours_and_intrinsics():
    img = smooth_image(640, 480)
    arr = np.asarray(img).astype(np.float64)
    for rule in ("vggt_crop", "vggt_pad", "da3_upper_bound_resize", "da3_upper_bound_crop"):
        if rule.startswith("da3"):
            pytest.importorskip("cv2")
        out = preprocess([img, smooth_image(500, 420)], rule)
        t = out.transforms[0]
        top, left, bottom, right = t.content_box
        v, u = np.mgrid[top + 5 : bottom - 5 : 37, left + 5 : right - 5 : 41]
        centres = np.stack([u.ravel() + 0.5, v.ravel() + 0.5], -1)
        orig = t.to_original(centres) - 0.5
        oi = np.clip(np.round(orig).astype(int), 0, [639, 479])
        got = out.colors[0][v.ravel(), u.ravel()].astype(np.float64)
        want = arr[oi[:, 1], oi[:, 0]]
        assert np.abs(got - want)[:, :2].max() < 6, rule  # a smooth ramp: within a few levels
        np.testing.assert_allclose(t.to_model(t.to_original(centres)), centres, atol=1e-9)
        H, W = out.image_size
        K = np.array([[500.0, 0, W / 2], [0, 510.0, H / 2], [0, 0, 1]])
        Ko = t.intrinsics_to_original(K)
        # The same ray: a model pixel and its original counterpart unproject identically.
        ray_m = np.linalg.solve(K, [centres[3, 0], centres[3, 1], 1])
        ray_o = np.linalg.solve(Ko, [*t.to_original(centres[3]), 1])
        np.testing.assert_allclose(ray_m, ray_o, atol=1e-12)
        np.testing.assert_allclose(t.intrinsics_to_model(Ko), K, atol=1e-9)


def test_pure_resize_keeps_principal_point_centred():
    out = preprocess([LEFT], "vggt_crop")
    K = np.array([[400.0, 0, 259.0], [0, 400.0, 175.0], [0, 0, 1]])
    Ko = out.transforms[0].intrinsics_to_original(K)
    np.testing.assert_allclose(Ko[:2, 2], [370.5, 250.0])


def test_da3_upper_bound_resize_matches_opencv():
    cv2 = pytest.importorskip("cv2")
    out = preprocess([LEFT, CAT], "da3_upper_bound_resize")
    # 741×500 → longest 504 → 504×340 (area) → nearest multiples of 14: 504×336 (area)
    a = np.asarray(Image.open(LEFT).convert("RGB"))
    a = cv2.resize(a, (504, 340), interpolation=cv2.INTER_AREA)
    a = cv2.resize(a, (504, 336), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(out.colors[0], a)
    # 451×300 → enlarge: 504×335 (cubic) → 504×336 (cubic, a side grows)
    c = np.asarray(Image.open(CAT).convert("RGB"))
    c = cv2.resize(c, (504, 335), interpolation=cv2.INTER_CUBIC)
    c = cv2.resize(c, (504, 336), interpolation=cv2.INTER_CUBIC)
    np.testing.assert_array_equal(out.colors[1], c)
    x = out.tensor("imagenet")
    want = (c.astype(np.float32) / 255 - np.array(IMAGENET_MEAN, np.float32)) / np.array(
        IMAGENET_STD, np.float32
    )
    np.testing.assert_allclose(x[0, 1].permute(1, 2, 0).numpy(), want, atol=1e-6)
    assert out.metadata["rule"] == "da3_upper_bound_resize"


def test_da3_mixed_sizes_centre_cropped_to_smallest():
    pytest.importorskip("cv2")
    out = preprocess([LEFT, smooth_image(400, 400)], "da3_upper_bound_resize")
    assert out.image_size == (336, 504)  # min of (336, 504) and (504, 504)
    t1 = out.transforms[1]
    assert t1.offset == (0.0, -84.0) and t1.content_box == (0, 0, 336, 504)
    assert out.metadata["mixed_sizes"].startswith("centre-crop")


def test_errors():
    with pytest.raises(InputError, match="too elongated"):
        preprocess([smooth_image(2000, 14)], "vggt_crop")
    with pytest.raises(UnsupportedError, match="unknown preprocessing rule"):
        preprocess([LEFT], "nope")
    with pytest.raises(InputError, match="no photos"):
        preprocess([], "vggt_crop")
    with pytest.raises(InputError, match="uint8"):
        preprocess([np.zeros((20, 20), np.float32)], "vggt_crop")


def test_order_kept_with_threads():
    imgs = [smooth_image(100 + 10 * i, 80) for i in range(6)]
    a = preprocess(imgs, "vggt_crop", workers=1)
    b = preprocess(imgs, "vggt_crop", workers=3)
    np.testing.assert_array_equal(a.colors, b.colors)
    assert [t.original_size for t in b.transforms] == [(80, 100 + 10 * i) for i in range(6)]
