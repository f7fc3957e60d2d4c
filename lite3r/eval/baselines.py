"""Calibration predictors that make evaluation numbers interpretable (data.md §4), and check the
pipeline end to end: they run through exactly the same runner, GT mapping and metrics as a model.

* ``oracle`` — returns the ground truth itself (depth, cameras) in a randomly rotated, shifted and
  scaled frame: every metric must come out perfect (AUC 100, AbsRel 0, Chamfer 0, F 1). Anything else
  is a bug in the evaluation, not in a model.
* ``constant`` — constant depth, identity poses for every view and a 60° field of view: the floor any
  model should beat.
"""

from __future__ import annotations

import numpy as np

from lite3r.engine.reconstruction import Reconstruction
from lite3r.eval.align import Sim3

BASELINES = ("oracle", "constant")


def _rotation(rng) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def _reconstruction(pre, depth, extrinsics, intrinsics, name: str) -> Reconstruction:
    from lite3r.geometry import unproject_depth

    S, (H, W) = pre.num_views, pre.image_size
    depth = depth.astype(np.float32)
    return Reconstruction(
        images=pre.colors,
        depth=depth,
        depth_conf=np.ones((S, H, W), np.float32),
        extrinsics=extrinsics.astype(np.float32),
        intrinsics=intrinsics.astype(np.float32),
        points_from_depth=unproject_depth(depth.astype(np.float64), extrinsics, intrinsics).astype(
            np.float32
        ),
        model_name=f"baseline:{name}",
        precision="fp64",
        attention="none",
        device="cpu",
    )


def oracle(pre, gt, seed: int = 0) -> Reconstruction:
    """GT depth and cameras, expressed in a random similarity frame (so alignment is exercised)."""
    rng = np.random.default_rng(seed)
    sim = Sim3(float(rng.uniform(0.2, 5.0)), _rotation(rng), rng.normal(size=3))
    depth = np.zeros(pre.image_size, np.float64)[None].repeat(pre.num_views, 0)
    if gt.depth is not None:
        depth = np.where(gt.valid_mask(), gt.depth, 0.0) * sim.scale
    return _reconstruction(
        pre, depth, sim.apply_to_extrinsics(gt.extrinsics), np.asarray(gt.intrinsics), "oracle"
    )


def constant(pre, gt=None, fov_deg: float = 60.0) -> Reconstruction:
    S, (H, W) = pre.num_views, pre.image_size
    f = (W / 2) / np.tan(np.radians(fov_deg) / 2)
    K = np.array([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1.0]])
    E = np.broadcast_to(np.eye(3, 4), (S, 3, 4)).copy()
    return _reconstruction(pre, np.ones((S, H, W)), E, np.broadcast_to(K, (S, 3, 3)).copy(), "constant")
