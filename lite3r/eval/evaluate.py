"""One sample: prediction + ground truth → every metric, as a nested dict (JSON-ready).

The product protocol (data.md §4, method.md C4) and the Lite3R reference protocol are computed side by
side so that a result file says which is which:

* ``depth.<policy>`` — depth metrics under each declared scale policy (default ``lsq_scene``, the
  primary, and ``median_view``).
* ``pose`` — all-pairs AUC / RRA / RTA; ``ate`` — camera-centre RMSE after Umeyama Sim(3) (S ≥ 3),
  also as a fraction of the GT scene diagonal (bounding box of the valid GT points; of the GT camera
  centres for pose-only GT — ``ate_normalizer`` says which).
* ``points.<source>.<filter>`` — predicted depth unprojected with the *predicted* intrinsics and poses
  (the same rule for every model), Sim(3)-aligned to GT (Umeyama on pixel correspondences inside the
  GT-valid mask by default), then Acc / Comp / Chamfer (mean L2) and F@τ for τ as fractions of the GT
  scene diagonal (``diag``) and/or absolute distances (``abs``). Only pixels with valid GT enter either
  cloud. ``all`` = unfiltered; ``conf50`` = the 50 % most confident predicted pixels.
* ``lite3r_reference`` — the paper's numbers (rot_err over all views incl. view 0, trans_err after LS
  scale, squared-L2 Chamfer and F@0.05 without alignment, all predicted pixels kept).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lite3r.eval import metrics as M
from lite3r.eval.align import Sim3, align_cameras, umeyama
from lite3r.geometry import camera_centers

__all__ = ["GroundTruth", "MetricConfig", "Prediction", "evaluate_sample", "flatten"]


@dataclass
class GroundTruth:
    """GT at the evaluation (model input) resolution."""

    extrinsics: np.ndarray  # [S, 3, 4] world→camera, OpenCV
    intrinsics: np.ndarray  # [S, 3, 3] pixels of the evaluated images
    depth: np.ndarray | None = None  # [S, H, W] z-depth, 0 = invalid
    valid: np.ndarray | None = None  # [S, H, W] bool (optional extra mask)

    @property
    def has_depth(self) -> bool:
        return self.depth is not None

    def valid_mask(self) -> np.ndarray:
        d = np.asarray(self.depth)
        m = np.isfinite(d) & (d > 0)
        if self.valid is not None:
            m &= np.asarray(self.valid, bool)
        return m


@dataclass
class Prediction:
    depth: np.ndarray  # [S, H, W]
    depth_conf: np.ndarray | None  # [S, H, W]
    extrinsics: np.ndarray  # [S, 3, 4]
    intrinsics: np.ndarray  # [S, 3, 3]
    world_points: np.ndarray | None = None  # [S, H, W, 3] point head (VGGT)
    world_points_conf: np.ndarray | None = None

    @classmethod
    def from_reconstruction(cls, rec) -> Prediction:
        return cls(
            depth=np.asarray(rec.depth),
            depth_conf=None if rec.depth_conf is None else np.asarray(rec.depth_conf),
            extrinsics=np.asarray(rec.extrinsics),
            intrinsics=np.asarray(rec.intrinsics),
            world_points=None if rec.world_points is None else np.asarray(rec.world_points),
            world_points_conf=None if rec.world_points_conf is None else np.asarray(rec.world_points_conf),
        )


@dataclass(frozen=True)
class MetricConfig:
    depth_policies: tuple[str, ...] = ("lsq_scene", "median_view")
    pose_thresholds: tuple[int, ...] = M.POSE_THRESHOLDS
    fscore_diag_fractions: tuple[float, ...] = (0.005, 0.01, 0.02)  # of the GT scene diagonal
    fscore_absolute: tuple[float, ...] = ()  # in scene units (e.g. metres for metric datasets)
    conf_fraction: float = 0.5
    point_alignment: str = "points"  # "points" | "centers" | "centers_ransac"
    point_sources: tuple[str, ...] = ("depth", "points")  # "points" only where the model has a head
    max_points: int | None = 200_000  # per cloud, seeded subsample for the KD-tree metrics
    align_max_points: int | None = 100_000
    ate_ransac: bool = False
    seed: int = 0
    lite3r_reference: bool = True
    reference_tau: float = 0.05
    reference_max_points: int = 50_000
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def _f64(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def _thresholds(diag: float, cfg: MetricConfig) -> dict[str, float]:
    th = {f"{f * 100:g}%diag": f * diag for f in cfg.fscore_diag_fractions}
    th.update({f"{a:g}abs": float(a) for a in cfg.fscore_absolute})
    return th


def pixel_points(depth: np.ndarray, K: np.ndarray, E: np.ndarray, pix: tuple) -> np.ndarray:
    """World points [N, 3] (float64) of the pixels ``pix`` = (view, row, col) index arrays.

    The same formula as :func:`lite3r.geometry.unproject_depth` (integer pixel grid, X_world =
    Rᵀ(X_cam − t)) evaluated only at the given pixels, so clouds of many views never need a dense
    [S, H, W, 3] float64 array."""
    s, v, u = pix
    d = np.asarray(depth[s, v, u], np.float64)
    K = _f64(K)[s]
    E = _f64(E)[s]
    cam = np.stack([(u - K[:, 0, 2]) * d / K[:, 0, 0], (v - K[:, 1, 2]) * d / K[:, 1, 1], d], axis=1)
    return np.einsum("nji,nj->ni", E[:, :, :3], cam - E[:, :, 3])


def _pick(pix: tuple, max_points: int | None, seed: int) -> tuple:
    idx = M.subsample_indices(len(pix[0]), max_points, seed)
    return tuple(a[idx] for a in pix)


def gt_scene_diagonal(gt: GroundTruth, mask: np.ndarray) -> float:
    """Bounding-box diagonal of every valid GT point (computed view by view)."""
    lo, hi = np.full(3, np.inf), np.full(3, -np.inf)
    for i in range(mask.shape[0]):
        v, u = np.nonzero(mask[i])
        if v.size == 0:
            continue
        p = pixel_points(gt.depth, gt.intrinsics, gt.extrinsics, (np.full(v.size, i), v, u))
        lo, hi = np.minimum(lo, p.min(0)), np.maximum(hi, p.max(0))
    return float(np.linalg.norm(hi - lo)) if np.isfinite(lo).all() else 0.0


def _point_alignment(pred_pts, gt_pts, pred: Prediction, gt: GroundTruth, cfg: MetricConfig) -> Sim3:
    if cfg.point_alignment == "points":
        return umeyama(pred_pts, gt_pts)
    if cfg.point_alignment in ("centers", "centers_ransac"):
        return align_cameras(
            pred.extrinsics,
            gt.extrinsics,
            "centers",
            ransac=cfg.point_alignment == "centers_ransac",
            seed=cfg.seed,
        )
    raise ValueError(f"unknown point alignment {cfg.point_alignment!r}")


def _point_metrics(pred: Prediction, gt: GroundTruth, mask: np.ndarray, diag: float, cfg) -> dict:
    out: dict = {"diagonal": diag}
    th = _thresholds(diag, cfg)
    gt_pix = _pick(np.nonzero(mask), cfg.max_points, cfg.seed + 1)
    gt_cloud = pixel_points(gt.depth, gt.intrinsics, gt.extrinsics, gt_pix)
    sources = []
    if "depth" in cfg.point_sources:
        depth = np.asarray(pred.depth)
        get = lambda pix, d=depth: pixel_points(d, pred.intrinsics, pred.extrinsics, pix)
        sources.append(("depth", np.isfinite(depth) & (depth > 0), get, pred.depth_conf))
    if "points" in cfg.point_sources and pred.world_points is not None:
        wp = np.asarray(pred.world_points)
        get = lambda pix, w=wp: np.asarray(w[pix], np.float64)
        sources.append(("points", np.isfinite(wp).all(-1), get, pred.world_points_conf))
    for name, finite, points_at, conf in sources:
        usable = mask & finite
        res: dict = {}
        align_pix = _pick(np.nonzero(usable), cfg.align_max_points, cfg.seed)
        try:
            gt_at = pixel_points(gt.depth, gt.intrinsics, gt.extrinsics, align_pix)
            sim = _point_alignment(points_at(align_pix), gt_at, pred, gt, cfg)
        except ValueError as exc:  # degenerate (too few points / cameras): metrics undefined
            out[name] = {"error": str(exc)}
            continue
        res["alignment"] = {"method": cfg.point_alignment, **sim.to_dict()}
        filters = [("all", usable)]
        if conf is not None:
            top = M.top_fraction_mask(conf, cfg.conf_fraction, usable)
            filters.append((f"conf{round(cfg.conf_fraction * 100)}", top))
        for fname, fmask in filters:
            pix = _pick(np.nonzero(fmask), cfg.max_points, cfg.seed)
            res[fname] = M.chamfer_fscore(sim.apply(points_at(pix)), gt_cloud, th)
            res[fname]["n_pixels"] = int(fmask.sum())
        out[name] = res
    return out


def _reference_geometry(pred: Prediction, gt: GroundTruth, mask: np.ndarray, cfg: MetricConfig) -> dict:
    """Reference geometry: both clouds in their own view-0 camera frame, no alignment, all finite
    predicted pixels vs valid GT pixels, each subsampled to ``reference_max_points``."""
    pe = M.view0_relative(_f64(pred.extrinsics))
    ge = M.view0_relative(_f64(gt.extrinsics))
    depth = np.asarray(pred.depth)
    pred_pix = _pick(np.nonzero(np.isfinite(depth)), cfg.reference_max_points, cfg.seed)
    gt_pix = _pick(np.nonzero(mask), cfg.reference_max_points, cfg.seed + 1)
    pp = pixel_points(depth, pred.intrinsics, pe, pred_pix)
    gp = pixel_points(gt.depth, gt.intrinsics, ge, gt_pix)
    return {
        "chamfer_l2": M.lite3r_reference_chamfer_l2(pp, gp, None, cfg.seed),
        "fscore_5cm": M.lite3r_reference_fscore(pp, gp, cfg.reference_tau, None, cfg.seed),
    }


def evaluate_sample(pred: Prediction, gt: GroundTruth, cfg: MetricConfig | None = None) -> dict:
    """All metrics for one sample (see module doc). Shapes are checked; GT without depth (pose-only
    datasets) yields pose metrics only."""
    cfg = cfg or MetricConfig()
    S = gt.extrinsics.shape[0]
    if pred.extrinsics.shape != (S, 3, 4):
        raise ValueError(f"prediction has extrinsics {pred.extrinsics.shape}, GT has {S} views")
    out: dict = {"num_views": S}
    out["pose"] = M.pose_metrics(pred.extrinsics, gt.extrinsics, cfg.pose_thresholds)
    mask = gt.valid_mask() if gt.has_depth else None
    diag = None
    if gt.has_depth:
        if pred.depth.shape != gt.depth.shape:
            raise ValueError(
                f"predicted depth {pred.depth.shape} and GT depth {gt.depth.shape} differ: the evaluation "
                "must run the model at the GT resolution"
            )
        diag = gt_scene_diagonal(gt, mask)
    if diag is not None and diag > 0:
        out["ate"] = {**M.ate(pred.extrinsics, gt.extrinsics, cfg.ate_ransac, diag, cfg.seed),
                      "ate_normalizer": "gt_points_diagonal"}  # fmt: skip
    else:  # pose-only GT: the extent of the GT cameras
        cam_diag = M.scene_diagonal(camera_centers(_f64(gt.extrinsics)))
        out["ate"] = {**M.ate(pred.extrinsics, gt.extrinsics, cfg.ate_ransac, cam_diag, cfg.seed),
                      "ate_normalizer": "gt_camera_diagonal"}  # fmt: skip
    if gt.has_depth:
        out["depth"] = {p: M.depth_metrics(pred.depth, gt.depth, mask, policy=p) for p in cfg.depth_policies}
        out["points"] = _point_metrics(pred, gt, mask, diag, cfg)
    if cfg.lite3r_reference:
        ref: dict = {"pose": M.lite3r_reference_pose_metrics(pred.extrinsics, gt.extrinsics)}
        if gt.has_depth:
            ref["depth"] = M.lite3r_reference_depth_metrics(pred.depth, gt.depth, mask)
            ref.update(_reference_geometry(pred, gt, mask, cfg))
        out["lite3r_reference"] = ref
    return out


def flatten(d: dict, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested metric dict as ``{"a.b.c": value}`` (strings, lists, None dropped)."""
    flat: dict[str, float] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            if k == "alignment":
                if "scale" in v:
                    flat[f"{key}.scale"] = float(v["scale"])
                continue
            flat.update(flatten(v, key + "."))
        elif isinstance(v, bool):
            continue
        elif isinstance(v, int | float | np.floating | np.integer):
            flat[key] = float(v)
    return flat
