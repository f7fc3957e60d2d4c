"""Per-model preprocessing, exactly as the reference code does it, plus the pixel transform back.

Rules (see docs/architectures.md §1.1 and §2.2):

- ``vggt_crop`` (VGGT default): width → 518, height → round(h·518/w / 14)·14 (Python ``round``), Pillow
  bicubic; a height above 518 is centre-cropped to 518.
- ``vggt_pad``: the longer side → 518, the other → round(·/14)·14, Pillow bicubic, then padded to
  518×518 with white, centred (the odd pixel goes bottom/right).
- VGGT, mixed sizes: every view is padded (white, centred) to the largest H and the largest W.
- ``da3_upper_bound_resize`` (DA3 default): longest side → 504 with OpenCV (INTER_CUBIC when enlarging,
  INTER_AREA when shrinking; sizes by ``round``), then each side to the *nearest* multiple of 14 (ties
  up) by a second OpenCV resize (cubic if either side grows, else area). ``da3_upper_bound_crop`` floors
  each side to a multiple of 14 by a centre crop instead of the second resize.
- DA3, mixed sizes: every view is centre-cropped to the smallest H and the smallest W.

Every view carries a :class:`ViewTransform`: model = scale · original + offset, in continuous pixel
coordinates whose origin is the top-left *corner* of the image (pixel i covers [i, i+1), its centre is
i + 0.5; the COLMAP convention). A pinhole K maps the same way, so intrinsics predicted at model
resolution can be reported in original-photo pixels, and every model pixel's colour can be traced back.

This module needs no torch; :meth:`Preprocessed.tensor` imports it when asked for a tensor.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from lite3r.errors import InputError, UnsupportedError
from lite3r.io.images import open_image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PATCH = 14


@dataclass(frozen=True)
class PreprocessRule:
    """How a backbone wants its photos: the resize rule, the target size and how mixed sizes unify."""

    name: str
    size: int
    patch: int = PATCH

    @property
    def family(self) -> str:
        return self.name.split("_", 1)[0]

    @property
    def mixed_sizes(self) -> str:
        return (
            "pad white, centred, to the largest H and W"
            if self.family == "vggt"
            else ("centre-crop to the smallest H and W")
        )

    def describe(self) -> str:
        return f"{self.name} @ {self.size}"


RULES: dict[str, PreprocessRule] = {
    "vggt_crop": PreprocessRule("vggt_crop", 518),
    "vggt_pad": PreprocessRule("vggt_pad", 518),
    "da3_upper_bound_resize": PreprocessRule("da3_upper_bound_resize", 504),
    "da3_upper_bound_crop": PreprocessRule("da3_upper_bound_crop", 504),
}


def get_rule(rule: str | PreprocessRule, size: int | None = None) -> PreprocessRule:
    if isinstance(rule, PreprocessRule):
        base = rule
    else:
        if rule not in RULES:
            raise UnsupportedError(
                f"unknown preprocessing rule {rule!r}", f"choose one of {', '.join(RULES)}"
            )
        base = RULES[rule]
    if size is not None and size != base.size:
        if size <= 0 or size % PATCH:
            raise UnsupportedError(
                f"input size {size} is not a positive multiple of {PATCH}", "pick e.g. 518 or 504"
            )
        base = PreprocessRule(base.name, int(size), base.patch)
    return base


# ---- the per-view transform -----------------------------------------------------------------------


@dataclass(frozen=True)
class ViewTransform:
    """model_xy = scale · original_xy + offset (continuous coordinates, origin at the image corner)."""

    original_size: tuple[int, int]  # (H, W) of the decoded, oriented photo
    model_size: tuple[int, int]  # (H, W) of the model input
    scale: tuple[float, float]  # (sx, sy)
    offset: tuple[float, float]  # (tx, ty), model pixels
    content_box: tuple[int, int, int, int]  # (top, left, bottom, right) model pixels showing the photo

    def to_model(self, xy: np.ndarray) -> np.ndarray:
        xy = np.asarray(xy, dtype=np.float64)
        return xy * np.array(self.scale) + np.array(self.offset)

    def to_original(self, xy: np.ndarray) -> np.ndarray:
        xy = np.asarray(xy, dtype=np.float64)
        return (xy - np.array(self.offset)) / np.array(self.scale)

    def intrinsics_to_original(self, K: np.ndarray) -> np.ndarray:
        """Pinhole K at model resolution → K in original-photo pixels (same camera, same rays)."""
        return _affine_inverse(self) @ np.asarray(K, dtype=np.float64)

    def intrinsics_to_model(self, K: np.ndarray) -> np.ndarray:
        return _affine(self) @ np.asarray(K, dtype=np.float64)

    def content_mask(self) -> np.ndarray:
        """bool [H, W]: True where the model input shows the photo (False on padding)."""
        m = np.zeros(self.model_size, dtype=bool)
        t, l, b, r = self.content_box
        m[t:b, l:r] = True
        return m

    def as_dict(self) -> dict:
        return {
            "original_size": list(self.original_size),
            "model_size": list(self.model_size),
            "scale": list(self.scale),
            "offset": list(self.offset),
            "content_box": list(self.content_box),
        }

    def shifted(self, dy: int, dx: int, model_size: tuple[int, int]) -> ViewTransform:
        """The same view after padding (dy, dx > 0) or cropping (< 0) at the top-left, new model size."""
        t, l, b, r = self.content_box
        H, W = model_size
        box = (max(0, t + dy), max(0, l + dx), min(H, b + dy), min(W, r + dx))
        return ViewTransform(
            self.original_size, model_size, self.scale, (self.offset[0] + dx, self.offset[1] + dy), box
        )


def _affine(t: ViewTransform) -> np.ndarray:
    return np.array([[t.scale[0], 0, t.offset[0]], [0, t.scale[1], t.offset[1]], [0, 0, 1]], dtype=np.float64)


def _affine_inverse(t: ViewTransform) -> np.ndarray:
    sx, sy = t.scale
    tx, ty = t.offset
    return np.array([[1 / sx, 0, -tx / sx], [0, 1 / sy, -ty / sy], [0, 0, 1]], dtype=np.float64)


# ---- result ------------------------------------------------------------------------------------------


@dataclass
class Preprocessed:
    """Model-ready views: uint8 colours [S, H, W, 3] plus the transform of every view."""

    colors: np.ndarray
    transforms: list[ViewTransform]
    rule: PreprocessRule
    paths: list[str] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)

    @property
    def num_views(self) -> int:
        return int(self.colors.shape[0])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.colors.shape[1]), int(self.colors.shape[2])

    @property
    def original_sizes(self) -> list[tuple[int, int]]:
        return [t.original_size for t in self.transforms]

    def content_masks(self) -> np.ndarray:
        return np.stack([t.content_mask() for t in self.transforms])

    def tensor(self, normalization: str = "none", device="cpu", dtype=None):
        """[1, S, 3, H, W] torch tensor: [0, 1] (``"none"``) or ImageNet-normalised (``"imagenet"``).

        Computed exactly as torchvision's ToTensor (/255 in float32) and Normalize ((x − mean)/std).
        """
        import torch

        x = torch.from_numpy(np.ascontiguousarray(self.colors)).permute(0, 3, 1, 2).to(torch.float32).div(255)
        if normalization == "imagenet":
            mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
            std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1)
            x = x.sub(mean).div(std)
        elif normalization != "none":
            raise ValueError(f"unknown normalization {normalization!r} (expected 'none' or 'imagenet')")
        x = x.unsqueeze(0).contiguous()
        return x.to(device=device, dtype=dtype or torch.float32)


# ---- resizing ---------------------------------------------------------------------------------------


def _vggt_view(img: Image.Image, rule: PreprocessRule, name: str) -> tuple[np.ndarray, ViewTransform]:
    w, h = img.size
    T = rule.size
    if rule.name == "vggt_crop" or w >= h:
        new_w, new_h = T, round(h * (T / w) / PATCH) * PATCH
    else:
        new_w, new_h = round(w * (T / h) / PATCH) * PATCH, T
    if new_w < PATCH or new_h < PATCH:
        raise InputError(
            f"{name}: a {w}×{h} image is too elongated for {rule.name} at {T} px",
            "crop the photo closer to 4:3 or 16:9",
        )
    arr = np.asarray(img.resize((new_w, new_h), Image.Resampling.BICUBIC))
    sx, sy = new_w / w, new_h / h
    tx = ty = 0.0
    if rule.name == "vggt_crop" and new_h > T:
        top = (new_h - T) // 2
        arr = arr[top : top + T]
        ty = -float(top)
    if rule.name == "vggt_pad" and (new_h < T or new_w < T):
        top, left = (T - new_h) // 2, (T - new_w) // 2
        arr = _pad_white(arr, top, T - new_h - top, left, T - new_w - left)
        tx, ty = float(left), float(top)
    H, W = arr.shape[:2]
    box = (max(0, int(ty)), max(0, int(tx)), min(H, int(ty) + new_h), min(W, int(tx) + new_w))
    return arr, ViewTransform((h, w), (H, W), (sx, sy), (tx, ty), box)


def _cv2():
    try:
        import cv2
    except ImportError as exc:
        raise UnsupportedError(
            "DA3 preprocessing needs OpenCV (its reference resizes with cv2 INTER_CUBIC/INTER_AREA)",
            "pip install opencv-python-headless",
        ) from exc
    return cv2


def _da3_view(img: Image.Image, rule: PreprocessRule, name: str) -> tuple[np.ndarray, ViewTransform]:
    cv2 = _cv2()
    arr = np.asarray(img)
    h0, w0 = arr.shape[:2]
    T = rule.size
    longest = max(w0, h0)
    if longest != T:
        s = T / float(longest)
        nw, nh = max(1, round(w0 * s)), max(1, round(h0 * s))
        arr = cv2.resize(arr, (nw, nh), interpolation=cv2.INTER_CUBIC if s > 1.0 else cv2.INTER_AREA)
    h, w = arr.shape[:2]
    ty = tx = 0.0
    if rule.name.endswith("_resize"):
        nw, nh = max(1, _nearest_multiple(w)), max(1, _nearest_multiple(h))
        if (nw, nh) != (w, h):
            up = nw > w or nh > h
            arr = cv2.resize(arr, (nw, nh), interpolation=cv2.INTER_CUBIC if up else cv2.INTER_AREA)
        sx, sy = nw / w0, nh / h0
    else:  # *_crop: floor each side to a multiple of 14 by a centre crop
        nw, nh = (w // PATCH) * PATCH, (h // PATCH) * PATCH
        left, top = (w - nw) // 2, (h - nh) // 2
        arr = arr[top : top + nh, left : left + nw]
        sx, sy = w / w0, h / h0
        tx, ty = -float(left), -float(top)
    H, W = arr.shape[:2]
    if H < PATCH or W < PATCH:
        raise InputError(
            f"{name}: a {w0}×{h0} image is too elongated for {rule.name} at {T} px",
            "crop the photo closer to 4:3 or 16:9",
        )
    return np.ascontiguousarray(arr), ViewTransform((h0, w0), (H, W), (sx, sy), (tx, ty), (0, 0, H, W))


def _nearest_multiple(x: int, p: int = PATCH) -> int:
    down = (x // p) * p
    up = down + p
    return up if abs(up - x) <= abs(x - down) else down


def _pad_white(arr: np.ndarray, top: int, bottom: int, left: int, right: int) -> np.ndarray:
    return np.pad(arr, ((top, bottom), (left, right), (0, 0)), mode="constant", constant_values=255)


def _unify(arrays: list[np.ndarray], transforms: list[ViewTransform], rule: PreprocessRule):
    shapes = {a.shape[:2] for a in arrays}
    if len(shapes) <= 1:
        return arrays, transforms
    if rule.family == "vggt":
        Hm, Wm = max(s[0] for s in shapes), max(s[1] for s in shapes)
        out_a, out_t = [], []
        for a, t in zip(arrays, transforms):
            dh, dw = Hm - a.shape[0], Wm - a.shape[1]
            top, left = dh // 2, dw // 2
            out_a.append(_pad_white(a, top, dh - top, left, dw - left))
            out_t.append(t.shifted(top, left, (Hm, Wm)))
        return out_a, out_t
    Hm, Wm = min(s[0] for s in shapes), min(s[1] for s in shapes)
    out_a, out_t = [], []
    for a, t in zip(arrays, transforms):
        top, left = (a.shape[0] - Hm) // 2, (a.shape[1] - Wm) // 2
        out_a.append(a[top : top + Hm, left : left + Wm])
        out_t.append(t.shifted(-top, -left, (Hm, Wm)))
    return out_a, out_t


# ---- entry point -------------------------------------------------------------------------------------

ImageSource = str | os.PathLike | Image.Image | np.ndarray


def _as_rgb(src: ImageSource) -> tuple[Image.Image, str]:
    if isinstance(src, (str, os.PathLike)):
        return open_image(src), str(src)
    if isinstance(src, Image.Image):
        return (src if src.mode == "RGB" else src.convert("RGB")), "<image>"
    arr = np.asarray(src)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise InputError(
            f"image array of shape {arr.shape} and dtype {arr.dtype}",
            "pass uint8 [H, W, 3] RGB arrays or paths",
        )
    return Image.fromarray(arr, "RGB"), "<array>"


def preprocess(
    sources: Sequence[ImageSource],
    rule: str | PreprocessRule = "vggt_crop",
    size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    workers: int | None = None,
) -> Preprocessed:
    """Decode and resize every view by ``rule``; originals are released as soon as each is resized.

    ``progress(done, total)`` is called after each view. ``workers`` threads decode in parallel (Pillow
    and OpenCV release the GIL); the output order always matches ``sources``.
    """
    started = time.perf_counter()
    rule = get_rule(rule, size)
    if not sources:
        raise InputError("no photos given", "pass a folder of photos or at least one image file")
    view_fn = _vggt_view if rule.family == "vggt" else _da3_view
    if rule.family == "da3":
        _cv2()  # fail before decoding anything

    def one(src):
        img, name = _as_rgb(src)
        return view_fn(img, rule, name)

    n = len(sources)
    results: list = [None] * n
    workers = workers or min(4, os.cpu_count() or 1, n)
    if workers <= 1:
        for i, src in enumerate(sources):
            results[i] = one(src)
            if progress:
                progress(i + 1, n)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(one, s) for s in sources]
            for i, fut in enumerate(futures):
                results[i] = fut.result()
                if progress:
                    progress(i + 1, n)
    arrays = [r[0] for r in results]
    transforms = [r[1] for r in results]
    mixed = len({a.shape[:2] for a in arrays}) > 1
    arrays, transforms = _unify(arrays, transforms, rule)
    paths = [str(s) if isinstance(s, (str, os.PathLike)) else "" for s in sources]
    meta = {
        "rule": rule.name,
        "size": rule.size,
        "resampling": "pillow bicubic" if rule.family == "vggt" else "opencv cubic (enlarge) / area (shrink)",
        "mixed_sizes": rule.mixed_sizes if mixed else None,
        "decode": "EXIF orientation applied; alpha composited on white; 8-bit RGB",
        "model_size": list(arrays[0].shape[:2]),
    }
    colors = np.stack(arrays)
    meta["elapsed_ms"] = round(1000.0 * (time.perf_counter() - started), 3)
    return Preprocessed(colors, transforms, rule, paths, meta)


__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RULES",
    "PreprocessRule",
    "Preprocessed",
    "ViewTransform",
    "get_rule",
    "preprocess",
]
