"""What every evaluation dataset returns, and the GT operations that do not depend on the dataset.

A :class:`Sample` holds S views at the dataset's native resolution: uint8 images, world→camera
extrinsics, intrinsics in the pixels of those images (pixel *centres* at integer coordinates, the
MVSNet / VGGT unprojection convention), and optionally z-depth at the same resolution (0 = invalid).

Operations:

* :func:`normalize_sample` — per-sample frame and scale: ``vggt`` (default: view 0 becomes the world
  frame, depths and translations divided by the mean distance of the valid GT points from camera 0, as
  VGGT's training normalisation; pose-only samples use the largest camera distance instead),
  ``lite3r_reference`` (the reference loader's max(median valid depth, max ‖t‖) without re-framing),
  or ``none``. The scale is recorded in ``metadata``.
* :func:`center_square` — the Lite3R reference's eval crop (short side → size, centre crop).
* :func:`ground_truth_at_model_resolution` — maps GT through the engine's per-view
  :class:`~lite3r.io.preprocess.ViewTransform` (nearest sampling for depth, exact K), so predictions
  are compared pixel for pixel with what the model saw.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from lite3r.errors import InputError

log = logging.getLogger(__name__)

NORMALIZATIONS = ("vggt", "lite3r_reference", "none")


@dataclass
class Sample:
    dataset: str
    scene: str
    view_ids: list[int]
    images: list[np.ndarray]  # per view uint8 [H, W, 3]
    extrinsics: np.ndarray  # [S, 3, 4] float64 world→camera (OpenCV)
    intrinsics: np.ndarray  # [S, 3, 3] float64, pixels of ``images`` (centres at integer coordinates)
    depth: list[np.ndarray] | None = None  # per view float32 [H, W] z-depth, 0 = invalid
    valid: list[np.ndarray] | None = None  # per view bool [H, W] (GT mask beyond depth > 0)
    image_paths: list[str] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)

    @property
    def num_views(self) -> int:
        return len(self.view_ids)

    @property
    def has_depth(self) -> bool:
        return self.depth is not None

    @property
    def sample_id(self) -> str:
        return f"{self.scene}:{'-'.join(str(v) for v in self.view_ids)}"

    def valid_masks(self) -> list[np.ndarray]:
        if self.depth is None:
            raise ValueError(f"{self.dataset} sample {self.scene} has no depth ground truth")
        out = []
        for i, d in enumerate(self.depth):
            m = np.isfinite(d) & (d > 0)
            if self.valid is not None:
                m &= self.valid[i]
            out.append(m)
        return out


class EvalDataset(ABC):
    """A dataset root opened for evaluation. Subclasses check the layout in ``__init__`` (InputError
    naming the root and what was expected) and load lazily."""

    name: str = ""
    default_strategy: str = "random"
    pose_only: bool = False

    def __init__(self, root: str | Path, normalization: str = "vggt") -> None:
        self.root = Path(root)
        if normalization not in NORMALIZATIONS:
            raise InputError(f"unknown normalisation {normalization!r}", f"choose one of {NORMALIZATIONS}")
        self.normalization = normalization
        if not self.root.is_dir():
            raise InputError(f"{self.name} root {self.root} is not a folder", self.layout_hint())

    @classmethod
    def layout_hint(cls) -> str:
        return "see docs data.md §1 for the expected layout"

    @abstractmethod
    def scenes(self) -> list[str]:
        """Scene names of the selected split, sorted."""

    @abstractmethod
    def views(self, scene: str) -> list[int]:
        """Available view ids of ``scene`` in dataset order."""

    def reference_view(self, scene: str) -> int | None:
        """The dataset's conventional reference view (moved to the front), if any."""
        return None

    def pairs(self, scene: str) -> dict[int, list[tuple[int, float]]] | None:
        """pair.txt view selection, where the dataset has one."""
        return None

    @abstractmethod
    def load_raw(self, scene: str, view_ids: list[int]) -> Sample:
        """The views at native resolution, in their own world frame and units."""

    def load(self, scene: str, view_ids: list[int]) -> Sample:
        return normalize_sample(self.load_raw(scene, list(view_ids)), self.normalization)

    def describe(self) -> dict:
        return {"dataset": self.name, "root": str(self.root), "normalization": self.normalization}


# ---- normalisation -----------------------------------------------------------------------------------


def view0_canonical(extrinsics: np.ndarray) -> np.ndarray:
    """E_i · E_0⁻¹: the same cameras with camera 0 at the origin, axes aligned."""
    E = np.asarray(extrinsics, np.float64)
    R, t = E[:, :, :3], E[:, :, 3]
    Rr = R @ R[0].T
    tr = t - np.einsum("sab,b->sa", Rr, t[0])
    return np.concatenate([Rr, tr[:, :, None]], axis=2)


def _unproject_view(depth: np.ndarray, K: np.ndarray, mask: np.ndarray) -> np.ndarray:
    v, u = np.nonzero(mask)
    d = depth[v, u].astype(np.float64)
    x = (u - K[0, 2]) * d / K[0, 0]
    y = (v - K[1, 2]) * d / K[1, 1]
    return np.stack([x, y, d], axis=1)


def normalize_sample(sample: Sample, normalization: str = "vggt") -> Sample:
    """Re-frame and rescale a sample (see module doc); returns a new Sample."""
    if normalization == "none":
        return replace(sample, metadata={**sample.metadata, "normalization": "none", "scale": 1.0})
    E = np.asarray(sample.extrinsics, np.float64)
    if normalization == "vggt":
        E = view0_canonical(E)
        scale = 0.0
        if sample.depth is not None:
            masks = sample.valid_masks()
            R, t = E[:, :, :3], E[:, :, 3]
            dist_sum, count = 0.0, 0
            for i, (d, m) in enumerate(zip(sample.depth, masks)):
                if not m.any():
                    continue
                cam = _unproject_view(d, sample.intrinsics[i], m)
                world = (cam - t[i]) @ R[i]  # Rᵀ(x − t), camera 0 frame
                dist_sum += float(np.linalg.norm(world, axis=1).sum())
                count += len(world)
            scale = dist_sum / count if count else 0.0
        if scale <= 0:
            scale = float(np.linalg.norm(E[:, :, 3], axis=1).max())
    elif normalization == "lite3r_reference":
        med = 0.0
        if sample.depth is not None:
            vals = np.concatenate([d[m] for d, m in zip(sample.depth, sample.valid_masks())])
            med = float(np.median(vals)) if vals.size > 100 else 0.0
        scale = max(med, float(np.linalg.norm(E[:, :, 3], axis=1).max()), 1e-3)
    else:
        raise ValueError(f"unknown normalisation {normalization!r}; choose one of {NORMALIZATIONS}")
    if not np.isfinite(scale) or scale <= 0:
        scale = 1.0
    E = E.copy()
    E[:, :, 3] /= scale
    depth = None if sample.depth is None else [(d / scale).astype(np.float32) for d in sample.depth]
    meta = {**sample.metadata, "normalization": normalization, "scale": float(scale)}
    return replace(sample, extrinsics=E, depth=depth, metadata=meta)


# ---- resolution ------------------------------------------------------------------------------------


def _centre_convention_affine(K: np.ndarray, sx: float, sy: float, tx: float, ty: float) -> np.ndarray:
    """K (pixel centres at integer coordinates) after x ↦ s·x + t in corner-origin coordinates."""
    to_corner = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1.0]])
    from_corner = np.array([[1, 0, -0.5], [0, 1, -0.5], [0, 0, 1.0]])
    A = np.array([[sx, 0, tx], [0, sy, ty], [0, 0, 1.0]])
    return from_corner @ A @ to_corner @ np.asarray(K, np.float64)


def _nearest_sample(a: np.ndarray, out_hw, sx, sy, tx, ty, box=None, fill=0):
    """Resample ``a`` [H, W, ...] onto an output grid by nearest neighbour through x_out = s·x + t
    (corner-origin coordinates); outside the source (or ``box``) → ``fill``."""
    H, W = a.shape[:2]
    Ho, Wo = out_hw
    xs = np.floor(((np.arange(Wo) + 0.5) - tx) / sx).astype(np.int64)
    ys = np.floor(((np.arange(Ho) + 0.5) - ty) / sy).astype(np.int64)
    okx, oky = (xs >= 0) & (xs < W), (ys >= 0) & (ys < H)
    out = a[np.clip(ys, 0, H - 1)][:, np.clip(xs, 0, W - 1)]
    ok = oky[:, None] & okx[None, :]
    if box is not None:
        t, l, b, r = box
        inside = np.zeros((Ho, Wo), bool)
        inside[t:b, l:r] = True
        ok &= inside
    out = out.copy()
    out[~ok] = fill
    return out


def resize_depth_nearest(depth: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a depth map to (H, W) (pixel-centre aligned)."""
    H, W = depth.shape[:2]
    return _nearest_sample(depth, hw, hw[1] / W, hw[0] / H, 0.0, 0.0)


def scale_intrinsics(K: np.ndarray, from_hw: tuple[int, int], to_hw: tuple[int, int]) -> np.ndarray:
    """K for the same camera at another resolution: c' = (c + 0.5)·s − 0.5, f' = f·s."""
    return _centre_convention_affine(K, to_hw[1] / from_hw[1], to_hw[0] / from_hw[0], 0.0, 0.0)


def center_square(sample: Sample, size: int) -> Sample:
    """Short side → ``size`` (Pillow bicubic for images, nearest for depth), centre crop to size×size;
    K adjusted. The Lite3R reference evaluation crop (518)."""
    imgs, Ks, depths, valids = [], [], [], []
    for i, img in enumerate(sample.images):
        H, W = img.shape[:2]
        s = size / min(H, W)
        Hs, Ws = max(size, round(H * s)), max(size, round(W * s))
        top, left = (Hs - size) // 2, (Ws - size) // 2
        sx, sy = Ws / W, Hs / H
        resized = np.asarray(Image.fromarray(img).resize((Ws, Hs), Image.Resampling.BICUBIC))
        imgs.append(np.ascontiguousarray(resized[top : top + size, left : left + size]))
        Ks.append(_centre_convention_affine(sample.intrinsics[i], sx, sy, -left, -top))
        if sample.depth is not None:
            depths.append(_nearest_sample(sample.depth[i], (size, size), sx, sy, -left, -top))
        if sample.valid is not None:
            valids.append(_nearest_sample(sample.valid[i], (size, size), sx, sy, -left, -top, fill=False))
    meta = {**sample.metadata, "eval_crop": f"center_square@{size}"}
    return replace(
        sample,
        images=imgs,
        intrinsics=np.stack(Ks),
        depth=depths if sample.depth is not None else None,
        valid=valids if sample.valid is not None else None,
        metadata=meta,
    )


def ground_truth_at_model_resolution(
    sample: Sample, transforms
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """(intrinsics [S,3,3], depth [S,H,W] or None, valid [S,H,W]) at the model resolution.

    ``transforms`` are the engine's per-view ViewTransforms (model = scale · original + offset, corner
    coordinates); depth is sampled by nearest neighbour; pixels outside the photo (padding) are invalid.
    """
    if len(transforms) != sample.num_views:
        raise ValueError(f"{len(transforms)} view transforms for {sample.num_views} views")
    Ks, depths, valids = [], [], []
    masks = sample.valid_masks() if sample.depth is not None else None
    for i, tr in enumerate(transforms):
        H, W = sample.images[i].shape[:2]
        if tuple(tr.original_size) != (H, W):
            raise ValueError(f"view {i}: transform is for {tr.original_size}, image is {(H, W)}")
        (sx, sy), (tx, ty) = tr.scale, tr.offset
        Ks.append(_centre_convention_affine(sample.intrinsics[i], sx, sy, tx, ty))
        if masks is not None:
            d = np.where(masks[i], sample.depth[i], 0.0).astype(np.float32)
            dm = _nearest_sample(d, tr.model_size, sx, sy, tx, ty, tr.content_box)
            depths.append(dm)
            valids.append(dm > 0)
    K = np.stack(Ks)
    if masks is None:
        return K, None, np.zeros((0,), bool)
    return K, np.stack(depths), np.stack(valids)


def load_rgb(path: Path) -> np.ndarray:
    """uint8 [H, W, 3] with the product's decoding rules (clear InputError on a bad file)."""
    from lite3r.io.images import load_image

    return load_image(path)


def require_file(path: Path, what: str, hint: str) -> Path:
    if not path.is_file():
        raise InputError(f"missing {what}: {path}", hint)
    return path
