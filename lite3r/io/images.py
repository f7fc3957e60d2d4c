"""Photos in: find them, decode them completely, and turn every bad file into one readable error.

Decoding rules (the same for every model, so that one photo gives the same colours everywhere):

- EXIF orientation is applied (a phone's portrait photo stays portrait).
- Transparency (RGBA, LA, palette with transparency) is composited on **white**, as VGGT's reference
  loader does; then everything becomes 8-bit RGB.
- 16-bit greyscale (PNG/TIFF ``I;16``/``I``) is scaled by 255/65535 (Pillow's own ``convert`` would clip
  it to white). 16-bit colour PNG/TIFF are reduced by Pillow to their high byte (⌊v/256⌋, at most one
  level from exact scaling).
- Files are decoded *completely* with Pillow's ``LOAD_TRUNCATED_IMAGES`` off, so a truncated JPEG or PNG
  is reported, never silently padded with grey.

Folders are listed non-recursively; files whose extension (case-insensitive) is in
:data:`IMAGE_EXTENSIONS` are kept, in natural, case-insensitive name order (``img2`` before ``img10``,
``a.png`` before ``B.JPG``). :func:`scan_images` checks a list without raising, for the app's
per-photo status panel.
"""

from __future__ import annotations

import os
import re
import threading
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from lite3r.errors import InputError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
KNOWN_UNSUPPORTED = {
    ".heic": "HEIC",
    ".heif": "HEIF",
    ".avif": "AVIF",
    ".gif": "GIF",
    ".raw": "camera RAW",
    ".cr2": "camera RAW",
    ".nef": "camera RAW",
    ".arw": "camera RAW",
    ".dng": "camera RAW",
    ".svg": "SVG",
}
CONVERT_HINT = "convert it to JPEG or PNG"
MIN_SIDE = 14  # one patch; anything smaller cannot hold a single token

_TRUNCATION_LOCK = threading.Lock()
PathLike = str | os.PathLike


def natural_key(name: str) -> list:
    """Sort key: case-insensitive, digit runs compared as numbers (``img2`` < ``img10``)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name.casefold())] + [name]


def is_image_file(path: PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def list_images(folder: PathLike) -> list[Path]:
    """Image files directly inside ``folder``, in natural name order; raises if there are none."""
    folder = Path(folder)
    if not folder.exists():
        raise InputError(f"{folder}: no such folder", "check the path")
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder", "pass a folder of photos or the photo files themselves")
    try:
        entries = list(os.scandir(folder))
    except PermissionError as exc:
        raise InputError(
            f"{folder}: cannot list the folder ({exc.strerror})", "check its permissions"
        ) from exc
    files = [Path(e.path) for e in entries if not e.name.startswith(".") and is_image_file(e.name)]
    files = [f for f in files if f.is_file()]
    if not files:
        raise InputError(
            f"{folder}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)})",
            "point to the folder that holds the photos",
        )
    return sorted(files, key=lambda p: natural_key(p.name))


def resolve_sources(sources: PathLike | Iterable[PathLike]) -> list[Path]:
    """A folder, one file, or a list of files (and/or folders) → the ordered list of photo paths.

    Files given explicitly keep the caller's order; each folder contributes its images in natural order.
    An explicitly named file with an unsupported extension is an error (a folder's non-images are skipped).
    """
    items = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
    if not items:
        raise InputError("no photos given", "pass a folder of photos or at least one image file")
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            out.extend(list_images(p))
        elif not p.exists():
            raise InputError(f"{p}: no such file or folder", "check the path")
        else:
            check_extension(p)
            out.append(p)
    return out


def check_extension(path: Path) -> None:
    ext = path.suffix.lower()
    if ext in IMAGE_EXTENSIONS:
        return
    kind = KNOWN_UNSUPPORTED.get(ext)
    what = (
        f"{kind} images are not supported" if kind else f"unsupported file type {ext or '(no extension)'!r}"
    )
    raise InputError(f"{path}: {what}", f"{CONVERT_HINT} (supported: {', '.join(IMAGE_EXTENSIONS)})")


# ---- decoding ------------------------------------------------------------------------------------


def open_image(path: PathLike) -> Image.Image:
    """Decode one photo completely → 8-bit RGB PIL image, orientation applied, alpha on white."""
    path = Path(path)
    check_extension(path)
    try:
        with _truncation_checks_on(), warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()  # decode everything now: truncation surfaces here, not later
                im = _apply_orientation(im, path)
                return _to_rgb8(im, path)
    except InputError:
        raise
    except FileNotFoundError as exc:
        raise InputError(f"{path}: no such file", "check the path") from exc
    except PermissionError as exc:
        raise InputError(
            f"{path}: cannot read the file (permission denied)", "check its permissions"
        ) from exc
    except IsADirectoryError as exc:
        raise InputError(f"{path}: is a folder, not an image", "pass image files or one folder") from exc
    except UnidentifiedImageError as exc:
        size = path.stat().st_size if path.exists() else 0
        why = "empty file" if size == 0 else "not a readable image (corrupt or mislabelled)"
        raise InputError(f"{path}: {why}", f"re-export or remove this file ({CONVERT_HINT})") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(
            f"{path}: image too large to decode safely ({exc})", "downscale it below 90 megapixels"
        ) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        msg = str(exc)
        if "truncated" in msg.lower() or isinstance(exc, EOFError):
            raise InputError(
                f"{path}: truncated image file ({msg})", "copy the file again or remove it from the set"
            ) from exc
        raise InputError(
            f"{path}: cannot decode the image ({msg})", f"re-export or remove it ({CONVERT_HINT})"
        ) from exc


def load_image(path: PathLike) -> np.ndarray:
    """One photo as uint8 [H, W, 3] (see :func:`open_image` for the decoding rules)."""
    return np.asarray(open_image(path))


class _truncation_checks_on:
    """Force ``ImageFile.LOAD_TRUNCATED_IMAGES`` off while decoding, whatever other code set it to."""

    def __enter__(self):
        _TRUNCATION_LOCK.acquire()
        self._saved = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = False

    def __exit__(self, *exc):
        ImageFile.LOAD_TRUNCATED_IMAGES = self._saved
        _TRUNCATION_LOCK.release()
        return False


def _apply_orientation(im: Image.Image, path: Path) -> Image.Image:
    try:
        return ImageOps.exif_transpose(im)
    except Exception as exc:  # malformed EXIF: Pillow raises various errors
        raise InputError(
            f"{path}: unreadable EXIF orientation ({exc})",
            "re-save the photo without EXIF, or rotate it by hand",
        ) from exc


def _to_rgb8(im: Image.Image, path: Path) -> Image.Image:
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(im).astype(np.float64)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise InputError(
                f"{path}: {mode} image with values outside 0..65535", "export it as an 8- or 16-bit image"
            )
        im = Image.fromarray(np.round(arr * (255.0 / 65535.0)).astype(np.uint8), "L")
    elif mode == "F":
        arr = np.asarray(im)
        if arr.size and (not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1):
            raise InputError(
                f"{path}: floating-point image with values outside [0, 1]",
                "export it as an 8- or 16-bit image",
            )
        im = Image.fromarray(np.round(arr.astype(np.float64) * 255).astype(np.uint8), "L")
    has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        im.mode in ("P", "L", "RGB") and "transparency" in im.info
    )
    if has_alpha:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba)
    rgb = im.convert("RGB")
    w, h = rgb.size
    if min(w, h) < MIN_SIDE:
        raise InputError(
            f"{path}: image is only {w}×{h} pixels", f"use photos at least {MIN_SIDE} pixels on each side"
        )
    return rgb


# ---- non-raising check, for the app's photo panel ------------------------------------------------


@dataclass(frozen=True)
class ImageCheck:
    """Result of checking one photo: ``ok`` or a one-line ``problem`` plus the ``hint`` that fixes it."""

    path: Path
    ok: bool
    size: tuple[int, int] | None = None  # (H, W) after orientation, when readable
    problem: str | None = None
    hint: str | None = None

    @property
    def message(self) -> str:
        return "ok" if self.ok else f"{self.problem} (fix: {self.hint})" if self.hint else str(self.problem)


def check_image(path: PathLike, decode: bool = True) -> ImageCheck:
    """Check one photo without raising. ``decode=False`` reads only the header (fast, misses truncation)."""
    path = Path(path)
    try:
        if decode:
            w, h = open_image(path).size
        else:
            check_extension(path)
            with Image.open(path) as im:
                w, h = im.size
                if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # orientations that swap the axes
                    w, h = h, w
        return ImageCheck(path, True, (h, w))
    except InputError as exc:
        return ImageCheck(path, False, None, exc.message, exc.hint)
    except Exception as exc:  # header-only mode: anything Pillow raises is a problem with the file
        return ImageCheck(path, False, None, f"{path}: not a readable image ({exc})", CONVERT_HINT)


def scan_images(
    sources: PathLike | Iterable[PathLike], decode: bool = True, min_views: int = 1
) -> tuple[list[ImageCheck], list[str]]:
    """Check a folder or file list without raising.

    Returns per-photo checks (in reconstruction order) and set-level problems (e.g. an empty folder,
    fewer than ``min_views`` readable photos), each a one-line message with its fix.
    """
    try:
        paths = resolve_sources(sources)
    except InputError as exc:
        return [], [str(exc)]
    checks = [check_image(p, decode=decode) for p in paths]
    problems = []
    good = sum(c.ok for c in checks)
    if good < min_views:
        problems.append(
            f"only {good} readable photo{'s' if good != 1 else ''}; at least {min_views} needed "
            "(fix: add more photos of the same scene)"
        )
    return checks, problems


def require_views(
    paths: Sequence[PathLike],
    min_views: int,
    single_hint: str = "or allow a single view for a monocular depth map",
) -> None:
    """Raise a clear error when fewer than ``min_views`` photos are given."""
    if len(paths) >= min_views:
        return
    if len(paths) == 1:
        raise InputError(
            f"{paths[0]}: only one photo; a multi-view reconstruction needs at least {min_views}",
            f"add more photos of the same scene from other viewpoints ({single_hint})",
        )
    raise InputError(
        f"{len(paths)} photos given; at least {min_views} needed", "add more photos of the scene"
    )
