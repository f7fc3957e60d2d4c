"""How far apart two reconstructions of the same photos are (Qt-free; runs on a worker thread).

Compare mode puts the dense model and the Lite3R model side by side. Each prediction lives in its own
frame and scale (world = camera 0, arbitrary scale), so the right cloud is first mapped into the left
one's frame by a similarity (Umeyama, :mod:`lite3r.eval.align`), then every point is coloured by the
distance to its nearest neighbour in the other cloud (scipy ``cKDTree``).

:mod:`lite3r.eval.align` is numpy-only, so the GUI process stays torch-free.

Alignment uses, in this order, whatever the pair allows, and says which one it used:
``pixels`` (both models predicted the same pixel grid: corresponding pixels are the same scene point —
the dense-vs-Lite3R case), ``cameras`` (camera 0 pose + scale from the other centres), ``depth scale``
(a single view: only the scale differs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from lite3r.engine.reconstruction import Reconstruction
from lite3r.eval.align import Sim3, camera_centers, umeyama

MAX_ALIGN_POINTS = 100_000


def first_camera_alignment(src_ext: np.ndarray, dst_ext: np.ndarray) -> Sim3:
    """Camera 0 made to coincide; scale by least squares on the other camera centres (S ≥ 2)."""
    P, G = np.asarray(src_ext, np.float64), np.asarray(dst_ext, np.float64)
    cp, cg = camera_centers(P), camera_centers(G)
    Q = G[0, :, :3].T @ P[0, :, :3]
    dp, dg = (cp - cp[0]) @ Q.T, cg - cg[0]
    den = float((dp * dp).sum())
    if den <= 0:
        raise ValueError("all camera centres coincide")
    s = float((dp * dg).sum()) / den
    return Sim3(s, Q, cg[0] - s * Q @ cp[0])


@dataclass
class CompareResult:
    transform: Sim3  # maps the right reconstruction's frame into the left one's
    alignment: str  # which correspondences the transform came from
    scale: float  # scene scale of the left cloud (median depth), for relative numbers
    threshold: float  # absolute distance counted as "agreeing"
    left_dist: np.ndarray  # [N_left] distance of each left point to the aligned right cloud
    right_dist: np.ndarray  # [N_right] distance of each aligned right point to the left cloud

    @property
    def all_dist(self) -> np.ndarray:
        return np.concatenate([self.left_dist, self.right_dist])

    def summary(self) -> dict[str, float]:
        """Mean/median distance (absolute and as % of the scene depth) and % of points within τ."""
        d = self.all_dist
        if d.size == 0:
            return {
                "mean": float("nan"),
                "median": float("nan"),
                "within": float("nan"),
                "mean_rel": float("nan"),
                "median_rel": float("nan"),
                "threshold_rel": float("nan"),
            }
        mean, median = float(d.mean()), float(np.median(d))
        return {
            "mean": mean,
            "median": median,
            "within": float(100.0 * (d <= self.threshold).mean()),
            "mean_rel": 100.0 * mean / self.scale,
            "median_rel": 100.0 * median / self.scale,
            "threshold_rel": 100.0 * self.threshold / self.scale,
            "left_within": float(100.0 * (self.left_dist <= self.threshold).mean())
            if self.left_dist.size
            else 0.0,
            "right_within": float(100.0 * (self.right_dist <= self.threshold).mean())
            if self.right_dist.size
            else 0.0,
        }

    def summary_text(self) -> str:
        s = self.summary()
        return (
            f"mean {s['mean_rel']:.2f}%, median {s['median_rel']:.2f}% of scene depth; "
            f"{s['within']:.1f}% of points within {s['threshold_rel']:.1f}% (aligned by {self.alignment})"
        )


def scene_scale(recon: Reconstruction, xyz: np.ndarray | None = None) -> float:
    """Median depth of the valid points (falls back to 1.0 for an empty cloud)."""
    if xyz is None:
        xyz = recon.point_cloud()[0]
    if len(xyz) == 0:
        return 1.0
    center = recon.camera_centers()[0]
    d = np.linalg.norm(xyz[:: max(1, len(xyz) // 100_000)] - center, axis=1)
    m = float(np.median(d))
    return m if np.isfinite(m) and m > 0 else 1.0


def align_pair(left: Reconstruction, right: Reconstruction, source: str = "depth") -> tuple[Sim3, str]:
    """Similarity mapping ``right``'s frame into ``left``'s, and the name of the method used."""
    if left.num_views != right.num_views:
        raise ValueError(
            f"compare needs reconstructions of the same photos: {left.num_views} vs {right.num_views} views"
        )
    lp = left.points_from_depth if source == "depth" else left.world_points
    rp = right.points_from_depth if source == "depth" else right.world_points
    if lp is not None and rp is not None and lp.shape == rp.shape:
        a, b = lp.reshape(-1, 3), rp.reshape(-1, 3)
        ok = np.isfinite(a).all(axis=1) & np.isfinite(b).all(axis=1)
        idx = np.flatnonzero(ok)
        if idx.size >= 3:
            if idx.size > MAX_ALIGN_POINTS:
                idx = np.random.default_rng(0).choice(idx, MAX_ALIGN_POINTS, replace=False)
            try:
                return umeyama(b[idx], a[idx]), "pixels"
            except ValueError:
                pass
    if left.num_views >= 2:
        try:
            return first_camera_alignment(right.extrinsics, left.extrinsics), "cameras"
        except ValueError:
            pass
    ratio = scene_scale(left) / scene_scale(right)
    return Sim3(ratio, np.eye(3), np.zeros(3)), "depth scale"


def nearest_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance from each point of ``a`` to its nearest neighbour in ``b`` (inf if ``b`` is empty)."""
    if len(a) == 0:
        return np.zeros(0, np.float32)
    if len(b) == 0:
        return np.full(len(a), np.inf, np.float32)
    tree = cKDTree(np.asarray(b, dtype=np.float64))
    d, _ = tree.query(np.asarray(a, dtype=np.float64), k=1, workers=-1)
    return d.astype(np.float32)


def measure(
    left_xyz: np.ndarray,
    right_xyz_aligned: np.ndarray,
    scale: float,
    threshold_rel: float,
    transform: Sim3,
    alignment: str,
) -> CompareResult:
    """Nearest-neighbour distances both ways between two clouds already in the same frame."""
    return CompareResult(
        transform=transform,
        alignment=alignment,
        scale=scale,
        threshold=threshold_rel * scale,
        left_dist=nearest_distances(left_xyz, right_xyz_aligned),
        right_dist=nearest_distances(right_xyz_aligned, left_xyz),
    )


def compare(
    left: Reconstruction,
    right: Reconstruction,
    left_xyz: np.ndarray,
    right_xyz: np.ndarray,
    threshold_rel: float = 0.02,
    source: str = "depth",
) -> tuple[CompareResult, np.ndarray]:
    """Align ``right`` onto ``left`` and measure both clouds against each other.

    ``left_xyz``/``right_xyz`` are the points on screen (after confidence filtering), in each
    reconstruction's own frame. Returns the result and ``right_xyz`` mapped into the left frame.
    ``threshold_rel`` is the agreement threshold as a fraction of the scene depth.
    """
    transform, how = align_pair(left, right, source)
    right_aligned = transform.apply(right_xyz).astype(np.float32)
    result = measure(left_xyz, right_aligned, scene_scale(left, left_xyz), threshold_rel, transform, how)
    return result, right_aligned
