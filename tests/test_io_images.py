"""Photo loading: listing order, decoding rules and one clear error per kind of bad file."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from conftest import PHOTOS_DIR
from PIL import Image, ImageFile

from lite3r.errors import InputError
from lite3r.io.images import (
    check_image,
    list_images,
    load_image,
    require_views,
    resolve_sources,
    scan_images,
)


def write_png16(path, arr: np.ndarray) -> None:
    """A 16-bit PNG written by hand (Pillow cannot write 16-bit colour)."""
    h, w = arr.shape[:2]
    c = 1 if arr.ndim == 2 else arr.shape[2]
    ctype = {1: 0, 3: 2, 4: 6}[c]
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, ctype, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


def rgb_image(w=40, h=30, seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_list_images_order_and_filtering(tmp_path):
    for name in ["img10.png", "img2.JPG", "B.jpeg", "a.png", "notes.txt", ".hidden.jpg", "x.TIFF", "y.webp"]:
        if name.endswith(".txt"):
            (tmp_path / name).write_text("hi")
        else:
            fmt = {"JPG": "JPEG", "jpeg": "JPEG", "png": "PNG", "jpg": "JPEG", "TIFF": "TIFF", "webp": "WEBP"}
            rgb_image().save(tmp_path / name, format=fmt[name.rsplit(".", 1)[1]])
    (tmp_path / "sub").mkdir()
    rgb_image().save(tmp_path / "sub" / "c.png")
    names = [p.name for p in list_images(tmp_path)]
    assert names == ["a.png", "B.jpeg", "img2.JPG", "img10.png", "x.TIFF", "y.webp"]


def test_folder_errors(tmp_path):
    (tmp_path / "readme.txt").write_text("no photos here")
    with pytest.raises(InputError, match="no images found") as e:
        list_images(tmp_path)
    assert str(tmp_path) in str(e.value) and e.value.hint
    with pytest.raises(InputError, match="no such"):
        resolve_sources(tmp_path / "missing")
    with pytest.raises(InputError, match="no photos given"):
        resolve_sources([])


def test_explicit_unsupported_format(tmp_path):
    f = tmp_path / "photo.heic"
    f.write_bytes(b"\x00" * 100)
    with pytest.raises(InputError, match="HEIC images are not supported") as e:
        resolve_sources([f])
    assert "photo.heic" in str(e.value) and "JPEG or PNG" in e.value.hint
    t = tmp_path / "doc.txt"
    t.write_text("x")
    with pytest.raises(InputError, match="unsupported file type"):
        load_image(t)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_files_are_reported(tmp_path, fmt):
    good = tmp_path / f"good.{fmt.lower()}"
    rgb_image(200, 150).save(good, format=fmt)
    data = good.read_bytes()
    bad = tmp_path / f"bad.{fmt.lower()}"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated") as e:
        load_image(bad)
    assert "bad." in str(e.value) and e.value.hint
    # Even when some other library switched Pillow's leniency on, we still see the truncation.
    saved = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        with pytest.raises(InputError, match="truncated"):
            load_image(bad)
        assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = saved
    assert load_image(good).shape == (150, 200, 3)


def test_corrupt_and_empty_files(tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="empty file"):
        load_image(empty)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"this is not a png" * 10)
    with pytest.raises(InputError, match="not a readable image"):
        load_image(junk)


def test_exif_orientation_applied(tmp_path):
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)  # left half red
    im = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    p = tmp_path / "rot.jpg"
    im.save(p, exif=exif, quality=95)
    out = load_image(p)
    assert out.shape == (40, 20, 3)  # portrait after orientation
    assert out[5, 10, 0] > 200 and out[35, 10, 0] < 60  # red on top after a clockwise turn
    assert check_image(p, decode=False).size == (40, 20)


def test_alpha_on_white_and_grey(tmp_path):
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:8, :, 3] = 255  # top opaque red, bottom fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert (out[0, 0] == (255, 0, 0)).all() and (out[15, 0] == (255, 255, 255)).all()

    la = np.zeros((16, 16, 2), np.uint8)
    la[..., 1] = 0  # fully transparent black
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    assert (load_image(tmp_path / "la.png") == 255).all()

    p = Image.new("P", (16, 16), 0)
    p.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    p.info["transparency"] = 0
    p.save(tmp_path / "p.png", transparency=0)
    assert (load_image(tmp_path / "p.png") == 255).all()

    Image.fromarray(np.full((16, 16), 77, np.uint8), "L").save(tmp_path / "g.png")
    g = load_image(tmp_path / "g.png")
    assert g.shape == (16, 16, 3) and (g == 77).all()


def test_16bit_scaled_not_clipped(tmp_path):
    grey = np.full((16, 16), 32768, np.uint16)  # mid-grey in 16 bits
    write_png16(tmp_path / "g16.png", grey)
    assert (load_image(tmp_path / "g16.png") == 128).all()
    Image.fromarray(grey).save(tmp_path / "g16.tif")
    assert (load_image(tmp_path / "g16.tif") == 128).all()
    rgb = np.stack([np.full((16, 16), v, np.uint16) for v in (65535, 32768, 0)], -1)
    write_png16(tmp_path / "c16.png", rgb)
    assert (load_image(tmp_path / "c16.png")[0, 0] == (255, 128, 0)).all()


def test_tiny_image_rejected(tmp_path):
    rgb_image(10, 200).save(tmp_path / "thin.png")
    with pytest.raises(InputError, match="10×200"):
        load_image(tmp_path / "thin.png")


def test_scan_reports_every_problem_without_raising(tmp_path):
    rgb_image().save(tmp_path / "a.png")
    (tmp_path / "b.jpg").write_bytes(b"")
    good = tmp_path / "c.jpg"
    rgb_image(100, 80).save(good)
    (tmp_path / "d.jpg").write_bytes(good.read_bytes()[:300])
    checks, problems = scan_images(tmp_path, min_views=2)
    assert [c.path.name for c in checks] == ["a.png", "b.jpg", "c.jpg", "d.jpg"]
    assert [c.ok for c in checks] == [True, False, True, False]
    assert checks[0].size == (30, 40)
    assert "empty file" in checks[1].message and "truncated" in checks[3].message
    assert problems == []
    checks, problems = scan_images(tmp_path / "nothing")
    assert checks == [] and "no such" in problems[0]


def test_single_view_message():
    require_views(["a.jpg", "b.jpg"], 2)
    with pytest.raises(InputError, match="only one photo") as e:
        require_views(["a.jpg"], 2)
    assert "a.jpg" in str(e.value)


def test_real_photos_decode():
    paths = list_images(PHOTOS_DIR)
    assert [p.name for p in paths] == ["chelsea.jpg", "motorcycle_left.jpg", "motorcycle_right.jpg"]
    assert load_image(paths[1]).shape == (500, 741, 3)
