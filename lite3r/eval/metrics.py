"""Evaluation metrics: depth, camera pose, trajectory, point clouds, plus the Lite3R reference metrics.

Conventions (docs data.md §2, method.md C4):

* Extrinsics are world→camera, OpenCV axes, ``[S, 3, 4]``. Inputs are converted to float64.
* **Depth** — the prediction is brought to GT scale by an explicit *scale policy* that is returned
  with the numbers: ``lsq_scene`` (one s = Σg·p / Σp² over all valid pixels of all views; tests
  multi-view scale consistency), ``lsq_view``, ``median_scene``, ``median_view`` (s_v = median g /
  median p per view), or ``none``; or a given scale (e.g. from a Sim(3) alignment). AbsRel = mean
  |s·p − g| / g; RMSE = √mean (s·p − g)²; δ<1.25ᵏ = fraction with max(s·p/g, g/(s·p)) < 1.25ᵏ.
* **Pose** (VGGT ``test_co3d.py`` / DA3 ``bench/utils.py`` convention) — over all pairs i < j, the
  relative pose E_i · E_j⁻¹ (camera j → camera i, independent of the world frame and, for its
  rotation and translation *direction*, of scale). Rotation error = geodesic angle between GT and
  predicted relative rotations; translation error = angle between the relative translation
  directions with the sign folded (min(θ, 180° − θ), so ∈ [0°, 90°]; a zero-length translation gives
  90°, as in VGGT). AUC@τ = mean of the cumulative histogram of max(rot, trans) per pair with 1° bins
  on [0, τ] (``np.histogram`` semantics), in percent. RRA@τ / RTA@τ = % of pairs with error < τ.
* **Point clouds** — accuracy = mean Euclidean distance pred → nearest GT, completeness = mean GT →
  nearest pred (not squared), Chamfer = (Acc + Comp) / 2; precision / recall = fraction of pred / GT
  points closer than τ to the other cloud; F = 2PR / (P + R). Nearest neighbours by
  ``scipy.spatial.cKDTree`` (exact).
* **Lite3R reference** (``lite3r_reference_*``) — the published paper's metrics, reproduced for
  comparison only (method.md §A7.2): they are not the product's metrics.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy.spatial import cKDTree

from lite3r.eval.align import align_cameras, camera_centers

__all__ = [
    "DEPTH_SCALE_POLICIES",
    "POSE_THRESHOLDS",
    "ate",
    "chamfer_fscore",
    "depth_metrics",
    "fit_depth_scale",
    "lite3r_reference_chamfer_l2",
    "lite3r_reference_depth_metrics",
    "lite3r_reference_fscore",
    "lite3r_reference_pose_metrics",
    "pose_auc",
    "pose_metrics",
    "relative_pose_errors",
    "rotation_angle_deg",
    "scene_diagonal",
    "subsample",
    "subsample_indices",
    "top_fraction_mask",
    "translation_angle_deg",
    "view0_relative",
]

DEPTH_SCALE_POLICIES = ("lsq_scene", "lsq_view", "median_scene", "median_view", "none")
POSE_THRESHOLDS = (3, 5, 15, 30)
_DEPTH_KEYS = ("abs_rel", "rmse", "delta1", "delta2", "delta3")


# ---------------------------------------------------------------------------------------------------
# depth
# ---------------------------------------------------------------------------------------------------


def _as_views(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a[None] if a.ndim == 2 else a


def _depth_mask(gt: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    m = np.isfinite(gt) & (gt > 0)
    if valid is not None:
        m &= np.asarray(valid, dtype=bool).reshape(gt.shape)
    return m


def fit_depth_scale(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray, policy: str) -> np.ndarray:
    """Per-view scale factors [S] that map ``pred`` onto ``gt`` under ``policy`` (see module doc).

    Views without valid pixels (or, for the median, a non-positive predicted median) get NaN.
    """
    pred, gt = _as_views(pred), _as_views(gt)
    mask = np.asarray(mask, dtype=bool).reshape(gt.shape)
    S = gt.shape[0]
    p = np.where(np.isfinite(pred), pred, 0.0)
    if policy == "none":
        return np.ones(S)
    if policy in ("lsq_scene", "median_scene"):
        pv, gv = p[mask], gt[mask]
        if pv.size == 0:
            return np.full(S, np.nan)
        if policy == "lsq_scene":
            den = float(pv @ pv)
            s = float(pv @ gv) / den if den > 0 else np.nan
        else:
            mp = float(np.median(pv))
            s = float(np.median(gv)) / mp if mp > 0 else np.nan
        return np.full(S, s)
    if policy in ("lsq_view", "median_view"):
        out = np.full(S, np.nan)
        for v in range(S):
            pv, gv = p[v][mask[v]], gt[v][mask[v]]
            if pv.size == 0:
                continue
            if policy == "lsq_view":
                den = float(pv @ pv)
                out[v] = float(pv @ gv) / den if den > 0 else np.nan
            else:
                mp = float(np.median(pv))
                out[v] = float(np.median(gv)) / mp if mp > 0 else np.nan
        return out
    raise ValueError(f"unknown depth scale policy {policy!r}; choose one of {DEPTH_SCALE_POLICIES}")


def depth_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    valid: np.ndarray | None = None,
    policy: str = "lsq_scene",
    scale: float | None = None,
    min_valid: int = 100,
) -> dict:
    """AbsRel, RMSE, δ<1.25/1.25²/1.25³ of ``pred`` [S,H,W] against ``gt`` [S,H,W].

    GT pixels count when finite, > 0 and inside ``valid``. ``scale`` (a number) overrides the policy
    (recorded as ``"given"``). Non-finite predictions count as 0; after scaling the prediction is
    clamped to ≥ 1e-6 · median(GT) so that a zero prediction scores AbsRel ≈ 1 and fails every δ rather
    than producing infinities. Fewer than ``min_valid`` valid pixels → NaN metrics.
    """
    pred, gt = _as_views(pred), _as_views(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"depth shapes differ: pred {pred.shape} vs gt {gt.shape}")
    mask = _depth_mask(gt, valid)
    n = int(mask.sum())
    out: dict = {"scale_policy": "given" if scale is not None else policy, "n_valid": n}
    if n < min_valid:
        out.update({k: float("nan") for k in _DEPTH_KEYS})
        out["scale"] = float("nan")
        return out
    if scale is not None:
        scales = np.full(gt.shape[0], float(scale))
    else:
        scales = fit_depth_scale(pred, gt, mask, policy)
    p = np.where(np.isfinite(pred), pred, 0.0) * scales[:, None, None]
    pv, gv = p[mask], gt[mask]
    pv = np.maximum(pv, 1e-6 * float(np.median(gv)))
    if not np.isfinite(pv).all():  # a view with valid GT but no usable scale
        out.update({k: float("nan") for k in _DEPTH_KEYS})
        out["scale"] = float("nan")
        return out
    ratio = np.maximum(pv / gv, gv / pv)
    out.update(
        {
            "abs_rel": float(np.mean(np.abs(pv - gv) / gv)),
            "rmse": float(np.sqrt(np.mean((pv - gv) ** 2))),
            "delta1": float(np.mean(ratio < 1.25)),
            "delta2": float(np.mean(ratio < 1.25**2)),
            "delta3": float(np.mean(ratio < 1.25**3)),
        }
    )
    uniq = np.unique(scales[np.isfinite(scales)])
    out["scale"] = float(uniq[0]) if uniq.size == 1 else [float(s) for s in scales]
    return out


# ---------------------------------------------------------------------------------------------------
# pose
# ---------------------------------------------------------------------------------------------------


def rotation_angle_deg(R_a: np.ndarray, R_b: np.ndarray) -> np.ndarray:
    """Geodesic angle (degrees) between rotation matrices [..., 3, 3], accurate near 0° and 180°."""
    M = np.swapaxes(np.asarray(R_a, np.float64), -1, -2) @ np.asarray(R_b, np.float64)
    cos = (np.trace(M, axis1=-2, axis2=-1) - 1.0) / 2.0
    v = np.stack([M[..., 2, 1] - M[..., 1, 2], M[..., 0, 2] - M[..., 2, 0], M[..., 1, 0] - M[..., 0, 1]], -1)
    sin = np.linalg.norm(v, axis=-1) / 2.0
    return np.degrees(np.arctan2(sin, cos))


def translation_angle_deg(t_a: np.ndarray, t_b: np.ndarray, fold_sign: bool = True) -> np.ndarray:
    """Angle (degrees) between translation directions [..., 3]; sign folded to [0°, 90°] by default.

    A zero-length vector on either side has no direction and scores 90° (VGGT's behaviour).
    """
    a, b = np.asarray(t_a, np.float64), np.asarray(t_b, np.float64)
    na, nb = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
    dot = np.einsum("...i,...i->...", a, b)
    cross = np.linalg.norm(np.cross(a, b), axis=-1)
    ang = np.degrees(np.arctan2(cross, dot))
    if fold_sign:
        ang = np.minimum(ang, 180.0 - ang)
    degenerate = (na <= 1e-15 * np.maximum(nb, 1.0)) | (nb <= 1e-15 * np.maximum(na, 1.0))
    return np.where(degenerate, 90.0, ang)


def _pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    i, j = np.triu_indices(n, k=1)
    return i, j


def relative_pose_errors(
    pred_extrinsics: np.ndarray, gt_extrinsics: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(rotation error°, translation-direction error°) for every pair i < j (row-major order).

    Relative pose = E_i · E_j⁻¹ = [R_i R_jᵀ | t_i − R_i R_jᵀ t_j] for both prediction and GT.
    """
    P = np.asarray(pred_extrinsics, np.float64)
    G = np.asarray(gt_extrinsics, np.float64)
    if P.shape != G.shape or P.ndim != 3 or P.shape[1:] != (3, 4):
        raise ValueError(f"extrinsics must both be [S,3,4], got {P.shape} and {G.shape}")
    i, j = _pairs(P.shape[0])

    def rel(E):
        Ri, ti, Rj, tj = E[i, :, :3], E[i, :, 3], E[j, :, :3], E[j, :, 3]
        Rij = Ri @ np.swapaxes(Rj, -1, -2)
        return Rij, ti - np.einsum("pab,pb->pa", Rij, tj)

    Rp, tp = rel(P)
    Rg, tg = rel(G)
    return rotation_angle_deg(Rg, Rp), translation_angle_deg(tg, tp)


def pose_auc(rot_err: np.ndarray, trans_err: np.ndarray, max_threshold: int) -> float:
    """AUC@τ in percent: mean of the cumulative histogram of max(rot, trans) with 1° bins on [0, τ]."""
    err = np.maximum(np.asarray(rot_err, np.float64), np.asarray(trans_err, np.float64)).reshape(-1)
    if err.size == 0:
        return float("nan")
    hist, _ = np.histogram(err, bins=np.arange(int(max_threshold) + 1))
    return float(np.mean(np.cumsum(hist / err.size)) * 100.0)


def pose_metrics(
    pred_extrinsics: np.ndarray, gt_extrinsics: np.ndarray, thresholds: Sequence[int] = POSE_THRESHOLDS
) -> dict:
    """All-pairs AUC@τ, RRA@τ, RTA@τ (percent) plus mean/median pair errors (degrees)."""
    r, t = relative_pose_errors(pred_extrinsics, gt_extrinsics)
    out: dict = {"n_pairs": int(r.size)}
    for tau in thresholds:
        out[f"auc@{tau}"] = pose_auc(r, t, tau)
    for tau in thresholds:
        out[f"rra@{tau}"] = float(np.mean(r < tau) * 100.0) if r.size else float("nan")
        out[f"rta@{tau}"] = float(np.mean(t < tau) * 100.0) if t.size else float("nan")
    for name, e in (("rot_err", r), ("trans_err", t)):
        out[f"{name}_mean"] = float(e.mean()) if e.size else float("nan")
        out[f"{name}_median"] = float(np.median(e)) if e.size else float("nan")
    return out


def ate(
    pred_extrinsics: np.ndarray,
    gt_extrinsics: np.ndarray,
    ransac: bool = False,
    normalizer: float | None = None,
    seed: int = 42,
) -> dict:
    """Absolute trajectory error: RMSE of camera centres after Umeyama Sim(3) on the centres.

    Needs ≥ 3 cameras (with 2 a similarity fits any pair exactly): fewer → NaN. ``normalizer`` (e.g.
    the GT scene diagonal) adds ``ate_rmse_rel`` = ate_rmse / normalizer.
    """
    P = np.asarray(pred_extrinsics, np.float64)
    G = np.asarray(gt_extrinsics, np.float64)
    out: dict = {"ate_rmse": float("nan"), "ate_rmse_rel": float("nan"), "ate_alignment": None}
    if P.shape[0] < 3:
        return out
    try:
        sim = align_cameras(P, G, method="centers", ransac=ransac, seed=seed)
    except ValueError:
        return out
    d = sim.apply(camera_centers(P)) - camera_centers(G)
    rmse = float(np.sqrt(np.mean(np.sum(d * d, axis=1))))
    out["ate_rmse"] = rmse
    if normalizer is not None and normalizer > 0:
        out["ate_rmse_rel"] = rmse / normalizer
    out["ate_alignment"] = "umeyama_ransac_centers" if ransac else "umeyama_centers"
    return out


# ---------------------------------------------------------------------------------------------------
# point clouds
# ---------------------------------------------------------------------------------------------------


def scene_diagonal(points: np.ndarray) -> float:
    """Length of the axis-aligned bounding-box diagonal of ``points`` [N, 3] (0 for < 2 points)."""
    p = np.asarray(points, np.float64).reshape(-1, 3)
    if len(p) < 2:
        return 0.0
    return float(np.linalg.norm(p.max(0) - p.min(0)))


def subsample_indices(n: int, max_points: int | None, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most ``max_points`` of ``n`` rows, drawn without replacement (seeded)."""
    if max_points is None or n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))


def subsample(points: np.ndarray, max_points: int | None, seed: int = 0) -> np.ndarray:
    """At most ``max_points`` rows of ``points``, seeded, original order kept."""
    return points[subsample_indices(len(points), max_points, seed)]


def top_fraction_mask(
    conf: np.ndarray, fraction: float = 0.5, within: np.ndarray | None = None
) -> np.ndarray:
    """Boolean mask of the ``fraction`` most confident entries (ties at the cut kept), inside ``within``."""
    c = np.asarray(conf, np.float64)
    base = np.isfinite(c) if within is None else (np.asarray(within, bool) & np.isfinite(c))
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    vals = c[base]
    if vals.size == 0:
        return base
    k = max(1, math.ceil(fraction * vals.size - 1e-9))  # keep the k largest (plus ties at the cut)
    cut = np.partition(vals, vals.size - k)[vals.size - k]
    return base & (c >= cut)


def _nn_dist(query: np.ndarray, tree: cKDTree) -> np.ndarray:
    d, _ = tree.query(query, k=1, workers=-1)
    return d


def chamfer_fscore(pred: np.ndarray, gt: np.ndarray, thresholds: Mapping[str, float] | None = None) -> dict:
    """Accuracy, completeness, Chamfer = (Acc + Comp)/2 (mean Euclidean, not squared), and
    precision / recall / F-score at each absolute threshold in ``thresholds`` ({label: distance}).
    Empty clouds give NaN distances and 0 scores."""
    pred = np.asarray(pred, np.float64).reshape(-1, 3)
    gt = np.asarray(gt, np.float64).reshape(-1, 3)
    thresholds = dict(thresholds or {})
    out: dict = {"n_pred": len(pred), "n_gt": len(gt)}
    if len(pred) == 0 or len(gt) == 0:
        out.update({k: float("nan") for k in ("acc", "comp", "chamfer", "acc_median", "comp_median")})
        for lab in thresholds:
            out.update({f"precision@{lab}": 0.0, f"recall@{lab}": 0.0, f"fscore@{lab}": 0.0})
        return out
    d_pred = _nn_dist(pred, cKDTree(gt))  # accuracy: pred → GT
    d_gt = _nn_dist(gt, cKDTree(pred))  # completeness: GT → pred
    acc, comp = float(d_pred.mean()), float(d_gt.mean())
    out.update(
        {
            "acc": acc,
            "comp": comp,
            "chamfer": (acc + comp) / 2.0,
            "acc_median": float(np.median(d_pred)),
            "comp_median": float(np.median(d_gt)),
        }
    )
    for lab, tau in thresholds.items():
        p = float(np.mean(d_pred < tau))
        r = float(np.mean(d_gt < tau))
        out[f"precision@{lab}"] = p
        out[f"recall@{lab}"] = r
        out[f"fscore@{lab}"] = 2 * p * r / (p + r) if p + r > 0 else 0.0
    return out


# ---------------------------------------------------------------------------------------------------
# Lite3R reference metrics (paper parity only; method.md §A7.2)
# ---------------------------------------------------------------------------------------------------


def lite3r_reference_depth_metrics(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None) -> dict:
    """Reference depth metrics: pred and GT clamped to ≥ 1e-3, mask ∧ GT > 0, ≥ 100 pixels, one pooled
    least-squares scale s = Σg·p / Σp² over all views (no shift, no median)."""
    p = np.maximum(np.asarray(pred, np.float64), 1e-3)
    g_raw = np.asarray(gt, np.float64)
    g = np.maximum(g_raw, 1e-3)
    m = g_raw > 0 if mask is None else (np.asarray(mask, bool) & (g_raw > 0))
    if m.sum() < 100:
        return {k: float("nan") for k in _DEPTH_KEYS}
    pv, gv = p[m], g[m]
    s = float((gv * pv).sum() / max(float((pv * pv).sum()), 1e-8))
    pv = pv * s
    ratio = np.maximum(pv / gv, gv / pv)
    return {
        "abs_rel": float(np.mean(np.abs(pv - gv) / gv)),
        "rmse": float(np.sqrt(np.mean((pv - gv) ** 2))),
        "delta1": float(np.mean(ratio < 1.25)),
        "delta2": float(np.mean(ratio < 1.25**2)),
        "delta3": float(np.mean(ratio < 1.25**3)),
    }


def view0_relative(E: np.ndarray) -> np.ndarray:
    """E_i · E_0⁻¹ for world→camera [S, 3, 4] (camera 0 becomes the identity)."""
    R, t = E[:, :, :3], E[:, :, 3]
    R0, t0 = R[0], t[0]
    Rr = R @ R0.T
    tr = t - np.einsum("sab,b->sa", Rr, t0)
    return np.concatenate([Rr, tr[:, :, None]], axis=2)


def lite3r_reference_pose_metrics(pred_extrinsics: np.ndarray, gt_extrinsics: np.ndarray) -> dict:
    """Reference pose metrics after making both sides view-0-relative:
    ``rot_err_deg`` = mean over **all S views incl. view 0** of the geodesic angle (so at S = 2 it is
    half the pair error); ``trans_err`` = mean L2 after one least-squares scale of the stacked
    predicted translations onto GT."""
    P = view0_relative(np.asarray(pred_extrinsics, np.float64))
    G = view0_relative(np.asarray(gt_extrinsics, np.float64))
    rot = float(np.mean(rotation_angle_deg(P[:, :, :3], G[:, :, :3])))
    tp, tg = P[:, :, 3], G[:, :, 3]
    s = float((tp * tg).sum() / max(float((tp * tp).sum()), 1e-8))
    trans = float(np.mean(np.linalg.norm(tp * s - tg, axis=1)))
    return {"rot_err_deg": rot, "trans_err": trans}


def lite3r_reference_chamfer_l2(
    a: np.ndarray, b: np.ndarray, max_points: int = 50_000, seed: int = 0
) -> float:
    """½(mean squared NN distance a→b + b→a), each cloud subsampled to ``max_points`` (seeded here;
    unseeded in the reference). Squared L2, no alignment."""
    a = subsample(np.asarray(a, np.float64).reshape(-1, 3), max_points, seed)
    b = subsample(np.asarray(b, np.float64).reshape(-1, 3), max_points, seed + 1)
    if len(a) == 0 or len(b) == 0:
        return float("nan")
    da = _nn_dist(a, cKDTree(b))
    db = _nn_dist(b, cKDTree(a))
    return float(0.5 * (np.mean(da**2) + np.mean(db**2)))


def lite3r_reference_fscore(
    a: np.ndarray, b: np.ndarray, tau: float = 0.05, max_points: int = 50_000, seed: int = 0
) -> float:
    """Symmetric F-score at τ (strict <) on subsampled clouds; 0 when P + R < 1e-6 (reference rule)."""
    a = subsample(np.asarray(a, np.float64).reshape(-1, 3), max_points, seed)
    b = subsample(np.asarray(b, np.float64).reshape(-1, 3), max_points, seed + 1)
    if len(a) == 0 or len(b) == 0:
        return 0.0
    ra = float(np.mean(_nn_dist(a, cKDTree(b)) < tau))
    pb = float(np.mean(_nn_dist(b, cKDTree(a)) < tau))
    return 0.0 if pb + ra < 1e-6 else 2 * pb * ra / (pb + ra)
