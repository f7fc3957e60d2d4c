"""Similarity (Sim(3)) alignment of a prediction to ground truth.

Feed-forward reconstructions live in their own frame (world = camera 0) and their own scale, so
point and trajectory metrics are only meaningful after a similarity transform maps the prediction
onto the ground truth. Umeyama (1991) gives the least-squares Sim(3) in closed form; the RANSAC
variant follows the Depth-Anything-3 benchmark (``utils/pose_align.py``): subsets of ⌈N/2⌉ (≥ 3)
cameras, 10 iterations, inlier threshold = median distance from each aligned predicted camera to its
nearest GT camera after an initial full fit, best inlier set refitted. Everything is float64 numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "Sim3",
    "align_cameras",
    "camera_centers",
    "umeyama",
    "umeyama_ransac",
]


@dataclass(frozen=True)
class Sim3:
    """x ↦ scale · rotation @ x + translation (maps prediction coordinates into GT coordinates)."""

    scale: float
    rotation: np.ndarray  # [3, 3]
    translation: np.ndarray  # [3]

    @classmethod
    def identity(cls) -> Sim3:
        return cls(1.0, np.eye(3), np.zeros(3))

    def apply(self, points: np.ndarray) -> np.ndarray:
        """Transform points [..., 3]."""
        p = np.asarray(points, dtype=np.float64)
        return self.scale * p @ self.rotation.T + self.translation

    def apply_to_extrinsics(self, extrinsics: np.ndarray) -> np.ndarray:
        """World→camera extrinsics [S, 3, 4] of the prediction, re-expressed in the GT world frame.

        A camera with centre C and world→camera rotation R becomes centre sim(C) with rotation R Qᵀ;
        its translation scales with ``scale`` because camera-frame coordinates scale too.
        """
        E = np.asarray(extrinsics, dtype=np.float64)
        R, t = E[:, :, :3], E[:, :, 3]
        R_new = R @ self.rotation.T
        t_new = self.scale * t - np.einsum("sij,j->si", R_new, self.translation)
        return np.concatenate([R_new, t_new[:, :, None]], axis=2)

    def as_matrix(self) -> np.ndarray:
        m = np.eye(4)
        m[:3, :3] = self.scale * self.rotation
        m[:3, 3] = self.translation
        return m

    def to_dict(self) -> dict:
        return {
            "scale": float(self.scale),
            "rotation": self.rotation.tolist(),
            "translation": self.translation.tolist(),
        }


def camera_centers(extrinsics: np.ndarray) -> np.ndarray:
    """Camera centres C = −Rᵀt of world→camera extrinsics [S, 3, 4] (numpy; this module stays
    torch-free so the GUI process can use it)."""
    E = np.asarray(extrinsics, dtype=np.float64)
    return -np.einsum("sji,sj->si", E[..., :3], E[..., 3])


def umeyama(
    src: np.ndarray, dst: np.ndarray, with_scale: bool = True, weights: np.ndarray | None = None
) -> Sim3:
    """Least-squares similarity mapping ``src`` [N, 3] onto ``dst`` [N, 3] (Umeyama 1991).

    Needs N ≥ 3 points that are not collinear for a unique rotation; raises ``ValueError`` when the
    source set is degenerate (all points equal) rather than returning an arbitrary transform.
    """
    src = np.asarray(src, dtype=np.float64).reshape(-1, 3)
    dst = np.asarray(dst, dtype=np.float64).reshape(-1, 3)
    if src.shape != dst.shape:
        raise ValueError(f"umeyama: shapes differ, {src.shape} vs {dst.shape}")
    if len(src) < 3:
        raise ValueError(f"umeyama needs at least 3 correspondences, got {len(src)}")
    w = np.ones(len(src)) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape[0] != len(src) or (w < 0).any() or w.sum() <= 0:
        raise ValueError("umeyama: weights must be non-negative, one per point, not all zero")
    w = w / w.sum()
    mu_s, mu_d = w @ src, w @ dst
    xs, xd = src - mu_s, dst - mu_d
    var_s = float(w @ np.einsum("ij,ij->i", xs, xs))
    if var_s <= 1e-300:
        raise ValueError("umeyama: source points are all identical (degenerate)")
    cov = (xd * w[:, None]).T @ xs  # Σ w (d−μd)(s−μs)ᵀ
    U, D, Vt = np.linalg.svd(cov)
    sign = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        sign[2, 2] = -1.0
    R = U @ sign @ Vt
    scale = float(np.trace(np.diag(D) @ sign) / var_s) if with_scale else 1.0
    t = mu_d - scale * R @ mu_s
    return Sim3(scale, R, t)


def _median_nearest_distance(aligned: np.ndarray, ref: np.ndarray) -> float:
    d = np.linalg.norm(aligned[:, None, :] - ref[None, :, :], axis=-1)
    return float(np.median(d.min(axis=1)))


def umeyama_ransac(
    src: np.ndarray,
    dst: np.ndarray,
    iterations: int = 10,
    subset_size: int | None = None,
    inlier_threshold: float | None = None,
    seed: int = 42,
    with_scale: bool = True,
) -> tuple[Sim3, np.ndarray]:
    """RANSAC Umeyama as in the DA3 benchmark; returns (transform, inlier mask [N]).

    Defaults: subsets of max(3, ⌈N/2⌉) points, 10 iterations, seed 42; the inlier threshold is the
    median nearest-neighbour distance (aligned src → any dst) after an initial full fit. A hypothesis
    wins on more inliers, ties broken by a lower mean inlier error; the winner's inliers are refitted
    (if ≥ 3), otherwise the best hypothesis (or the initial full fit) is kept.
    """
    src = np.asarray(src, dtype=np.float64).reshape(-1, 3)
    dst = np.asarray(dst, dtype=np.float64).reshape(-1, 3)
    n = len(src)
    initial = umeyama(src, dst, with_scale)
    if inlier_threshold is None:
        inlier_threshold = _median_nearest_distance(initial.apply(src), dst)
    k = max(3, (n + 1) // 2) if subset_size is None else max(3, min(subset_size, n))
    rng = np.random.default_rng(seed)
    best, best_inliers, best_score = initial, None, (-1, np.inf)
    for _ in range(iterations):
        idx = rng.choice(n, size=k, replace=False)
        try:
            hyp = umeyama(src[idx], dst[idx], with_scale)
        except ValueError:
            continue
        err = np.linalg.norm(hyp.apply(src) - dst, axis=1)
        inl = err <= inlier_threshold
        count = int(inl.sum())
        mean_err = float(err[inl].mean()) if count else np.inf
        if count > best_score[0] or (count == best_score[0] and mean_err < best_score[1]):
            best, best_inliers, best_score = hyp, inl, (count, mean_err)
    if best_inliers is not None and best_inliers.sum() >= 3:
        try:
            return umeyama(src[best_inliers], dst[best_inliers], with_scale), best_inliers
        except ValueError:
            pass
    inliers = best_inliers if best_inliers is not None else np.ones(n, dtype=bool)
    return best, inliers


def align_cameras(
    pred_extrinsics: np.ndarray,
    gt_extrinsics: np.ndarray,
    method: str = "centers",
    ransac: bool = False,
    seed: int = 42,
) -> Sim3:
    """Sim(3) from the predicted world frame to the GT world frame, from cameras only.

    ``method``:
      * ``"centers"`` — Umeyama on camera centres (DA3 convention; optional RANSAC). Needs ≥ 3
        cameras that are not collinear; raises ``ValueError`` otherwise.
      * ``"first_camera"`` — rotation and position from camera 0, scale by least squares on the
        centres relative to camera 0. Defined for any S ≥ 2 (the only camera-based choice at S = 2).
    """
    P = np.asarray(pred_extrinsics, dtype=np.float64)
    G = np.asarray(gt_extrinsics, dtype=np.float64)
    if P.shape != G.shape or P.shape[1:] != (3, 4):
        raise ValueError(f"extrinsics must both be [S,3,4], got {P.shape} and {G.shape}")
    cp, cg = camera_centers(P), camera_centers(G)
    if method == "centers":
        if ransac:
            return umeyama_ransac(cp, cg, seed=seed)[0]
        return umeyama(cp, cg)
    if method == "first_camera":
        # camera 0 must coincide: R_g0 = R_p0 Qᵀ → Q = R_g0ᵀ R_p0
        Q = G[0, :, :3].T @ P[0, :, :3]
        dp, dg = (cp - cp[0]) @ Q.T, cg - cg[0]
        den = float((dp * dp).sum())
        if den <= 0:
            raise ValueError("first_camera alignment: all predicted camera centres coincide")
        s = float((dp * dg).sum()) / den
        return Sim3(s, Q, cg[0] - s * Q @ cp[0])
    raise ValueError(f"unknown camera alignment method {method!r}; choose 'centers' or 'first_camera'")
