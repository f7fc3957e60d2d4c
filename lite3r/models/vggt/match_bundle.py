"""Joint refinement of the read-out's poses and view-0 depths over all views (a small bundle adjustment).

Each view's PnP trusts view 0's predicted depth completely, and solves against view 0 alone. Depth
errors of a few tens of percent then bend the translation directions, which the all-pairs pose metrics
weigh most (lite3r-tiny's read-out: rotations within 15° for ~80 % of pairs, translations for ~35 %).
Matches from view-0 query patches form tracks, the same view-0 pixel seen in several views, so the views
constrain each other's geometry. Here every track's depth may move along its view-0 ray (one log-depth
per track, held near the model's depth by a prior that also fixes the scale) while the poses of the
solved views move with it, minimising the robust reprojection error of every PnP inlier.

Residuals are in units of their standard deviations: pixels over ``pixel_sigma`` and log depth over
``depth_sigma``; Huber beyond ``huber`` of them. Solved with scipy's trust-region least squares and a
sparse Jacobian (6 pose parameters per view, 1 depth per track).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares
from scipy.sparse import lil_matrix
from scipy.spatial.transform import Rotation

__all__ = ["BundleObservations", "bundle_adjust", "project"]


@dataclass
class BundleObservations:
    """Tracks anchored on view-0 pixels and their observations in the other views.

    ``ref_px`` [T, 2] view-0 pixels of the tracks, ``ref_depth`` [T] the model's depth there;
    ``track`` [O], ``view`` [O] (1..S−1) and ``px`` [O, 2] one row per observation."""

    ref_px: np.ndarray
    ref_depth: np.ndarray
    track: np.ndarray
    view: np.ndarray
    px: np.ndarray

    @classmethod
    def from_matches(
        cls, per_view: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]
    ) -> BundleObservations:
        """``per_view[i] = (ref_px [M, 2], view_px [M, 2], ref_depth [M])`` → tracks keyed by the view-0
        pixel (to 1/100 px), so a view-0 patch matched in several views is one track (its depth is
        taken from the first view that lists it)."""
        views = sorted(per_view)
        if not views:
            e = np.zeros((0, 2))
            return cls(e, np.zeros(0), np.zeros(0, int), np.zeros(0, int), e)
        ref = np.concatenate([np.asarray(per_view[i][0], np.float64).reshape(-1, 2) for i in views])
        px = np.concatenate([np.asarray(per_view[i][1], np.float64).reshape(-1, 2) for i in views])
        z = np.concatenate([np.asarray(per_view[i][2], np.float64).reshape(-1) for i in views])
        view = np.concatenate([np.full(len(per_view[i][0]), i) for i in views]).astype(int)
        _, first, track = np.unique(np.round(ref * 100).astype(np.int64), axis=0, return_index=True,
                                    return_inverse=True)  # fmt: skip
        return cls(ref[first], z[first], track.reshape(-1), view, px)


def project(K: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Pixels (x, y) [N, 2] of camera-frame points X [N, 3] under K [3, 3] or one K per point [N, 3, 3]
    (depths clamped at 1e-9: points behind the camera land far off, where a robust loss ignores them)."""
    K = np.broadcast_to(K, (len(X), 3, 3))
    z = np.maximum(X[:, 2], 1e-9)
    return np.stack([K[:, 0, 0] * X[:, 0] / z + K[:, 0, 2], K[:, 1, 1] * X[:, 1] / z + K[:, 1, 2]], -1)


def bundle_adjust(
    obs: BundleObservations,
    extrinsics: np.ndarray,
    intrinsics: np.ndarray,
    views: list[int],
    pixel_sigma: float,
    depth_sigma: float,
    huber: float = 2.0,
    max_evaluations: int = 100,
) -> tuple[np.ndarray, np.ndarray]:
    """Refine the poses of ``views`` (world = camera 0 → camera, [S, 3, 4]; other rows are returned
    unchanged) and the tracks' depths. Returns (extrinsics [S, 3, 4], refined ref depths [T])."""
    ext = np.asarray(extrinsics, np.float64).copy()
    K = np.asarray(intrinsics, np.float64)
    keep = np.isin(obs.view, views) & np.isfinite(obs.ref_depth[obs.track]) & (obs.ref_depth[obs.track] > 0)
    if not views or not keep.any():
        return ext, obs.ref_depth.copy()
    track, view, px = obs.track[keep], obs.view[keep], obs.px[keep]
    used = np.unique(track)
    tj = np.searchsorted(used, track)
    views = sorted(views)
    v_of = {v: j for j, v in enumerate(views)}
    vj = np.searchsorted(views, view)
    nv, nt, no = len(views), len(used), len(track)
    rays = np.concatenate([(obs.ref_px[used] - K[0, :2, 2]) / np.diag(K[0])[:2], np.ones((nt, 1))], 1)
    z0 = obs.ref_depth[used]
    Kobs = K[view]

    x0 = np.zeros(6 * nv + nt)
    for v, j in v_of.items():
        x0[6 * j : 6 * j + 3] = Rotation.from_matrix(ext[v, :, :3]).as_rotvec()
        x0[6 * j + 3 : 6 * j + 6] = ext[v, :, 3]

    def residuals(x: np.ndarray) -> np.ndarray:
        pose = x[: 6 * nv].reshape(nv, 6)
        logd = x[6 * nv :]
        R = Rotation.from_rotvec(pose[:, :3]).as_matrix()
        X = rays * (z0 * np.exp(logd))[:, None]
        Xc = np.einsum("oab,ob->oa", R[vj], X[tj]) + pose[vj, 3:]
        r_px = (project(Kobs, Xc) - px) / pixel_sigma
        return np.concatenate([r_px.reshape(-1), logd / depth_sigma])

    sparsity = lil_matrix((2 * no + nt, 6 * nv + nt), dtype=int)
    rows = np.arange(no)
    for c in range(6):
        sparsity[2 * rows, 6 * vj + c] = 1
        sparsity[2 * rows + 1, 6 * vj + c] = 1
    sparsity[2 * rows, 6 * nv + tj] = 1
    sparsity[2 * rows + 1, 6 * nv + tj] = 1
    sparsity[2 * no + np.arange(nt), 6 * nv + np.arange(nt)] = 1
    sol = least_squares(
        residuals, x0, jac_sparsity=sparsity, loss="huber", f_scale=huber, method="trf",
        x_scale="jac", max_nfev=max_evaluations,
    )  # fmt: skip
    x = sol.x
    for v, j in v_of.items():
        ext[v, :, :3] = Rotation.from_rotvec(x[6 * j : 6 * j + 3]).as_matrix()
        ext[v, :, 3] = x[6 * j + 3 : 6 * j + 6]
    depth = obs.ref_depth.copy()
    depth[used] = z0 * np.exp(x[6 * nv :])
    return ext, depth
