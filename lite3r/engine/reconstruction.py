"""The result of one reconstruction: what the CLI exports and the app shows.

Plain numpy arrays (no torch), so the GUI process can hold and draw results without importing torch,
and so a result can be cached to disk and reloaded. All per-view arrays are at the *model* resolution
(the preprocessed image size); intrinsics are given both at model resolution and in the pixels of each
original photo.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lite3r.io.atomic import atomic_write

CONF_SOURCES = ("depth", "points")


@dataclass
class Reconstruction:
    images: np.ndarray  # [S, H, W, 3] uint8, the model-input view of each photo (colours for points)
    depth: np.ndarray  # [S, H, W] float32, z-depth in the model's (arbitrary, view-0) scale
    depth_conf: np.ndarray  # [S, H, W] float32, ≥ 1 for VGGT/DA3
    extrinsics: np.ndarray  # [S, 3, 4] float32, world→camera, OpenCV axes; world = camera 0
    intrinsics: np.ndarray  # [S, 3, 3] float32, pixels of the model-resolution image
    points_from_depth: np.ndarray  # [S, H, W, 3] float32, depth unprojected with predicted cameras
    world_points: np.ndarray | None = None  # [S, H, W, 3] from a point head (VGGT), else None
    world_points_conf: np.ndarray | None = None  # [S, H, W]
    intrinsics_original: np.ndarray | None = None  # [S, 3, 3] in each original photo's pixels
    image_paths: list[str] = field(default_factory=list)
    original_sizes: list[tuple[int, int]] = field(default_factory=list)  # (H, W) per photo
    model_name: str = ""
    precision: str = ""
    attention: str = ""  # e.g. "dense (cudnn)" or "sla keep=0.10 (triton)"
    device: str = ""
    timings_ms: dict[str, float] = field(default_factory=dict)
    peak_memory_bytes: int | None = None
    metadata: dict = field(default_factory=dict)

    @property
    def num_views(self) -> int:
        return int(self.depth.shape[0])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.depth.shape[1]), int(self.depth.shape[2])

    def pose_summary(self) -> tuple[str, str | None]:
        """(where the poses came from, in a few words; a warning or None), for logs and the app."""
        p = (self.metadata or {}).get("poses") or {}
        if p.get("source") != "matches":  # a note on camera-head poses: a declared read-out did not run
            return "camera head", (p.get("note") or None)
        solved, kept = p.get("solved_views", []), p.get("kept_head", [])
        line = f"attention matches ({p.get('solver', '?')}, {len(solved)} of {len(solved) + len(kept)} views solved)"
        warn = f"views {kept} kept the camera head's pose (too few matches to solve)" if kept else None
        return line, warn

    def camera_centers(self) -> np.ndarray:
        """World positions of the cameras, C = -Rᵀ t, [S, 3]."""
        R, t = self.extrinsics[:, :, :3], self.extrinsics[:, :, 3]
        return -np.einsum("sji,sj->si", R, t)

    def point_cloud(
        self,
        source: str = "depth",
        conf_percentile: float | None = None,
        conf_threshold: float | None = None,
        views: list[int] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Coloured points (xyz float32 [M,3], rgb uint8 [M,3], conf float32 [M]).

        ``source`` picks the geometry: "depth" (depth + predicted cameras, the VGGT authors' advice)
        or "points" (the point head). Points below ``conf_threshold`` (absolute) or below the
        ``conf_percentile``-th percentile of confidence (over the selected views) are dropped; both may
        be given. Non-finite points are always dropped.
        """
        if source not in CONF_SOURCES:
            raise ValueError(f"unknown point source {source!r}; choose one of {CONF_SOURCES}")
        if source == "points":
            if self.world_points is None:
                raise ValueError(f"{self.model_name or 'this model'} has no point head; use source='depth'")
            xyz, conf = self.world_points, self.world_points_conf
        else:
            xyz, conf = self.points_from_depth, self.depth_conf
        sel = list(range(self.num_views)) if views is None else list(views)
        xyz = xyz[sel].reshape(-1, 3)
        rgb = self.images[sel].reshape(-1, 3)
        conf = conf[sel].reshape(-1)
        keep = np.isfinite(xyz).all(axis=1)
        if conf_threshold is not None:
            keep &= conf >= conf_threshold
        if conf_percentile is not None and conf_percentile > 0:
            if not 0 <= conf_percentile < 100:
                raise ValueError(f"conf_percentile must be in [0, 100), got {conf_percentile}")
            finite = conf[keep & np.isfinite(conf)]
            # No finite confidence yet (a cameras-only partial result): nothing to rank, keep the points.
            if finite.size:
                keep &= conf >= np.percentile(finite, conf_percentile)
        return (
            np.ascontiguousarray(xyz[keep], dtype=np.float32),
            np.ascontiguousarray(rgb[keep], dtype=np.uint8),
            np.ascontiguousarray(conf[keep], dtype=np.float32),
        )

    # ---- persistence (cache of results; written atomically) -------------------------------------

    _ARRAYS = (
        "images",
        "depth",
        "depth_conf",
        "extrinsics",
        "intrinsics",
        "points_from_depth",
        "world_points",
        "world_points_conf",
        "intrinsics_original",
    )

    def save(self, path: str | os.PathLike) -> Path:
        """Write an ``.npz`` atomically (temporary file + rename): a crash never leaves half a file."""
        path = Path(path)
        arrays = {k: getattr(self, k) for k in self._ARRAYS if getattr(self, k) is not None}
        meta = {
            "image_paths": self.image_paths,
            "original_sizes": [list(s) for s in self.original_sizes],
            "model_name": self.model_name,
            "precision": self.precision,
            "attention": self.attention,
            "device": self.device,
            "timings_ms": self.timings_ms,
            "peak_memory_bytes": self.peak_memory_bytes,
            "metadata": self.metadata,
        }
        arrays["_meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        with atomic_write(path) as f:
            np.savez(f, **arrays)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Reconstruction:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(bytes(z["_meta"]).decode())
            arrays = {k: z[k] for k in cls._ARRAYS if k in z.files}
        meta["original_sizes"] = [tuple(s) for s in meta.get("original_sizes", [])]
        return cls(**arrays, **meta)
