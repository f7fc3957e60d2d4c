"""Camera poses read out geometrically from the cross-view matches of VGGT's global attention.

lite3r-tiny's camera head collapses to the pose prior, while a correspondence loss on the global
attention logits teaches the trunk to *match* patches across views (issue #6,
``benchmarks/results/tiny/pose_investigation_cpu.md``). This module skips the learned read-out: it
takes the patch matches to view 0 from the q·k logits of chosen global blocks / heads, turns them into
2-D–2-D or 3-D–2-D correspondences with the predicted depth and intrinsics, and solves each view's pose
with a robust estimator. World = camera 0, extrinsics world→camera (OpenCV), as
``Reconstruction.extrinsics``.

Pipeline (each step a function, so other match sources — e.g. ground truth — plug in):

1. :func:`encode_with_match_scores` — ``model.encode`` with q, k captured
   (:class:`~lite3r.models.vggt.attention_capture.GlobalQKCapture`), → log-probabilities of every
   patch of view i over the patches of view 0 and back ([B, S, hw, hw] each).
2. :func:`patch_matches` — best match per query patch, optional mutual check and confidence floor,
   sub-patch position by a soft-argmax over a (2r+1)² neighbourhood of the best patch.
3. :func:`estimate_poses` — per view: ``pnp`` (view-0 depth unprojected at the view-0 pixel → 3-D,
   ``cv2.solvePnPRansac`` with view i's intrinsics, then Levenberg–Marquardt on the inliers),
   ``procrustes`` (both views' depths → 3-D–3-D, RANSAC Umeyama with scale, since per-view depth scales
   need not agree) or ``essential`` (epipolar RANSAC on normalised points, ``cv2.recoverPose``; the
   unknown baseline length from the view-0 depth of the triangulated inliers).

Deterministic: OpenCV's RANSAC is seeded (``cv2.setRNGSeed``) before every call, the Procrustes
RANSAC uses a NumPy generator from ``seed``. A view that cannot be solved (too few matches or inliers)
is reported in ``MatchPoseResult.solved`` and gets the caller's fallback pose (default: identity).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from lite3r.errors import InputError

__all__ = [
    "DIRECTIONS",
    "SOLVERS",
    "MatchPoseConfig",
    "MatchPoseResult",
    "ViewMatches",
    "encode_with_match_scores",
    "estimate_poses",
    "match_log_probs",
    "patch_centers",
    "patch_matches",
    "poses_from_scores",
    "sample_depth",
    "scores_from_captured",
    "solve_view",
    "unproject_pixels",
]

SOLVERS = ("pnp", "procrustes", "essential")
DIRECTIONS = ("from_ref", "to_ref", "both")


@dataclass(frozen=True)
class MatchPoseConfig:
    """How matches are read from attention and turned into poses.

    ``layers``: global blocks whose logits are combined (log-probabilities summed, then renormalised);
    negatives count from the end. ``heads``: attention heads combined (None: all). ``direction``:
    ``from_ref`` — queries are view-0 patches (the 3-D point sits exactly at a view-0 patch centre and
    the view-i position is refined), ``to_ref`` — queries are view-i patches, ``both`` — the union.
    ``mutual``: keep only matches that are also the best match in the other direction.
    ``drop_same_position``: drop matches to the query's own grid position (RoPE gives every view the
    same positions, so "no motion" is what a weak matcher predicts; those matches all agree with the
    identity pose and out-vote the real ones in RANSAC).
    ``min_confidence``: probability floor of the best match. ``refine_radius``: soft-argmax window
    radius in patches (0 = patch centres). ``ransac_threshold``: inlier threshold in units of the patch
    size (reprojection error for ``pnp``, epipolar error for ``essential``); ``procrustes_threshold``:
    relative 3-D distance for ``procrustes``. ``refine``: Levenberg–Marquardt on the PnP inliers, a
    least-median refit of the essential matrix on its RANSAC inliers. ``min_inliers``: fewer → the
    view is not solved. ``bundle_adjust``: after the per-view solves, refine the solved poses and the
    view-0 depths of the inlier tracks jointly over all views (``match_bundle``); ``ba_pixel_sigma``
    (patch sizes) and ``ba_depth_sigma`` (log depth) weigh reprojection against the model's depth."""

    layers: tuple[int, ...] = (-1,)
    heads: tuple[int, ...] | None = (0,)
    direction: str = "from_ref"
    mutual: bool = True
    drop_same_position: bool = False
    min_confidence: float = 0.0
    refine_radius: int = 1
    solver: str = "pnp"
    ransac_threshold: float = 0.5
    procrustes_threshold: float = 0.1
    ransac_iterations: int = 2000
    ransac_confidence: float = 0.999
    refine: bool = True
    min_inliers: int = 6
    seed: int = 0
    bundle_adjust: bool = False
    ba_pixel_sigma: float = 0.25
    ba_depth_sigma: float = 1.0

    def __post_init__(self) -> None:
        if self.solver not in SOLVERS:
            raise InputError(f"unknown match-pose solver {self.solver!r}; choose one of {SOLVERS}")
        if self.direction not in DIRECTIONS:
            raise InputError(f"unknown match direction {self.direction!r}; choose one of {DIRECTIONS}")
        if not self.layers:
            raise InputError("MatchPoseConfig.layers must name at least one global block")
        if self.heads is not None and (not self.heads or min(self.heads) < 0):
            raise InputError(f"MatchPoseConfig.heads must be None or non-negative indices, got {self.heads}")
        if self.refine_radius < 0 or self.min_inliers < 4 or self.ransac_iterations < 1:
            raise InputError("need refine_radius >= 0, min_inliers >= 4, ransac_iterations >= 1")
        if not (
            self.ransac_threshold > 0 and self.procrustes_threshold > 0 and 0 < self.ransac_confidence < 1
        ):
            raise InputError("need ransac_threshold > 0, procrustes_threshold > 0, 0 < ransac_confidence < 1")
        if not (self.ba_pixel_sigma > 0 and self.ba_depth_sigma > 0):
            raise InputError("need ba_pixel_sigma > 0 and ba_depth_sigma > 0")
        if not 0 <= self.min_confidence < 1:
            raise InputError(f"min_confidence must be in [0, 1), got {self.min_confidence}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> MatchPoseConfig:
        """From :meth:`to_dict` (a model's ``config.json`` ``pose_readout``); unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise InputError(f"unknown pose read-out settings {unknown}; known: {sorted(names)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


@dataclass
class ViewMatches:
    """Matches between view 0 and one view i: pixel positions (x, y) in each and a score in [0, 1]."""

    ref_px: np.ndarray  # [M, 2] float64, view 0
    view_px: np.ndarray  # [M, 2] float64, view i
    score: np.ndarray = field(default=None)  # [M]

    def __post_init__(self) -> None:
        self.ref_px = np.asarray(self.ref_px, np.float64).reshape(-1, 2)
        self.view_px = np.asarray(self.view_px, np.float64).reshape(-1, 2)
        if len(self.ref_px) != len(self.view_px):
            raise InputError(f"matches disagree in length: {len(self.ref_px)} vs {len(self.view_px)} points")
        self.score = (
            np.ones(len(self.ref_px))
            if self.score is None
            else np.asarray(self.score, np.float64).reshape(-1)
        )
        if len(self.score) != len(self.ref_px):
            raise InputError(f"{len(self.score)} match scores for {len(self.ref_px)} matches")

    def __len__(self) -> int:
        return len(self.ref_px)

    def subset(self, keep: np.ndarray) -> ViewMatches:
        return ViewMatches(self.ref_px[keep], self.view_px[keep], self.score[keep])


@dataclass
class MatchPoseResult:
    """Per-view outcome. ``extrinsics`` [S, 3, 4] world(= camera 0)→camera; view 0 is the identity;
    views with ``solved`` False carry the fallback pose."""

    extrinsics: np.ndarray
    solved: np.ndarray  # [S] bool (view 0: True)
    num_matches: np.ndarray  # [S] int
    num_inliers: np.ndarray  # [S] int
    solver: str


# --------------------------------------------------------------------------------------------------
# 1. attention → match log-probabilities
# --------------------------------------------------------------------------------------------------


def match_log_probs(
    q: Tensor, k: Tensor, num_views: int, patch_start: int, heads: tuple[int, ...] | None = None
) -> tuple[Tensor, Tensor]:
    """Per-head softmax over patch tokens of the logits q·k/√D, log-probabilities summed over heads.

    q, k [B, H, S·P, D] (a global sequence, frame-major, ``patch_start`` special tokens per frame).
    Returns (to_ref [B, S, hw, hw]: patch a of view i over the patches of view 0, from_ref
    [B, S, hw, hw]: patch a of view 0 over the patches of view i), float32, not renormalised."""
    if q.ndim != 4 or q.shape != k.shape:
        raise InputError(
            f"q and k must be equal [B, H, N, D] tensors, got {tuple(q.shape)} and {tuple(k.shape)}"
        )
    _, H, N, D = q.shape
    S = num_views
    if S < 1 or N % S:
        raise InputError(f"a global sequence of {N} tokens cannot hold {S} equal frames")
    P = N // S
    if not 0 <= patch_start < P:
        raise InputError(f"patch_start {patch_start} does not fit frames of {P} tokens")
    idx = list(range(H)) if heads is None else list(heads)
    if max(idx) >= H:
        raise InputError(f"attention head {max(idx)} requested, the block has {H}")
    qp = q[:, idx].unflatten(2, (S, P))[:, :, :, patch_start:].float()  # [B,h,S,hw,D]
    kp = k[:, idx].unflatten(2, (S, P))[:, :, :, patch_start:].float()
    scale = 1.0 / math.sqrt(D)
    to_ref = torch.einsum("bhsqd,bhpd->bhsqp", qp, kp[:, :, 0]) * scale
    from_ref = torch.einsum("bhqd,bhspd->bhsqp", qp[:, :, 0], kp) * scale
    return to_ref.log_softmax(-1).sum(1), from_ref.log_softmax(-1).sum(1)


@torch.no_grad()
def encode_with_match_scores(model, images: Tensor, cfg: MatchPoseConfig, layers=None):
    """``model.encode(images, layers)`` with the q, k of ``cfg.layers`` captured →
    (features, to_ref, from_ref), the log-probabilities of :func:`match_log_probs` summed over the
    chosen layers and heads and renormalised (log-softmax over the key patches)."""
    from lite3r.models.vggt.attention_capture import GlobalQKCapture

    if images.ndim == 4:
        images = images[None]
    if images.ndim != 5 or images.shape[2] != 3:
        raise InputError(f"images must be [B, S, 3, H, W] or [S, 3, H, W], got {tuple(images.shape)}")
    S = images.shape[1]
    if S < 2:
        raise InputError("a pose read-out from matches needs at least 2 views")
    with GlobalQKCapture(model, cfg.layers, grad_only=False) as cap:
        feats = model.encode(images, layers)
        captured = cap.pop()
    to_ref, from_ref = scores_from_captured(captured, cap.layers, S, model.aggregator.patch_start_idx, cfg)
    return feats, to_ref, from_ref


def scores_from_captured(
    captured: dict, layers: tuple[int, ...], num_views: int, patch_start: int, cfg: MatchPoseConfig
) -> tuple[Tensor, Tensor]:
    """The q, k a :class:`GlobalQKCapture` kept for ``layers`` → log-probabilities of
    :func:`match_log_probs` summed over those layers and ``cfg.heads``, renormalised."""
    if sorted(captured) != sorted(layers):
        raise RuntimeError(f"captured q, k of global blocks {sorted(captured)}, expected {list(layers)}")
    to_ref = from_ref = None
    for q, k, _ in captured.values():
        a, b = match_log_probs(q, k, num_views, patch_start, cfg.heads)
        to_ref = a if to_ref is None else to_ref + a
        from_ref = b if from_ref is None else from_ref + b
    return to_ref.log_softmax(-1), from_ref.log_softmax(-1)


# --------------------------------------------------------------------------------------------------
# 2. log-probabilities → matches
# --------------------------------------------------------------------------------------------------


def patch_centers(grid_hw: tuple[int, int], patch_size: int) -> np.ndarray:
    """Pixel centres (x, y) [h·w, 2] of the patches, row-major; pixel centres are integers, so patch
    (r, c) covers [c·p − ½, (c+1)·p − ½) and its centre is (c + ½)·p − ½."""
    h, w = grid_hw
    r, c = np.divmod(np.arange(h * w), w)
    return np.stack([(c + 0.5) * patch_size - 0.5, (r + 0.5) * patch_size - 0.5], -1).astype(np.float64)


def _refine(logp: np.ndarray, best: np.ndarray, grid_hw: tuple[int, int], centers: np.ndarray, radius: int):
    """Soft-argmax of the patch centres in a (2r+1)² window around each best key patch → [M, 2]."""
    if radius == 0 or len(best) == 0:
        return centers[best]
    h, w = grid_hw
    br, bc = np.divmod(best, w)
    off = np.arange(-radius, radius + 1)
    rr = br[:, None, None] + off[None, :, None]  # [M, 2r+1, 1]
    cc = bc[:, None, None] + off[None, None, :]  # [M, 1, 2r+1]
    rr, cc = np.broadcast_arrays(rr, cc)
    inside = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
    flat = (np.clip(rr, 0, h - 1) * w + np.clip(cc, 0, w - 1)).reshape(len(best), -1)
    lp = np.take_along_axis(logp, flat, axis=1)
    lp = np.where(inside.reshape(len(best), -1), lp, -np.inf)
    wts = np.exp(lp - lp.max(1, keepdims=True))
    wts /= wts.sum(1, keepdims=True)
    return np.einsum("mk,mkc->mc", wts, centers[flat])


def patch_matches(
    to_ref: Tensor | np.ndarray,
    from_ref: Tensor | np.ndarray,
    grid_hw: tuple[int, int],
    patch_size: int,
    cfg: MatchPoseConfig,
) -> ViewMatches:
    """Matches between view 0 and one view i from the log-probabilities of that view ([hw, hw] each:
    ``to_ref[a, b]`` = log p(view-0 patch b | view-i patch a), ``from_ref[a, b]`` = log p(view-i patch b
    | view-0 patch a))."""
    A = (
        to_ref.detach().double().cpu().numpy()
        if isinstance(to_ref, Tensor)
        else np.asarray(to_ref, np.float64)
    )
    Bm = (
        from_ref.detach().double().cpu().numpy()
        if isinstance(from_ref, Tensor)
        else np.asarray(from_ref, np.float64)
    )
    hw = grid_hw[0] * grid_hw[1]
    if A.shape != (hw, hw) or Bm.shape != (hw, hw):
        raise InputError(f"match log-probabilities must be [{hw}, {hw}], got {A.shape} and {Bm.shape}")
    centers = patch_centers(grid_hw, patch_size)
    out_ref, out_view, out_score = [], [], []
    for name in ("from_ref", "to_ref") if cfg.direction == "both" else (cfg.direction,):
        fwd, bwd = (Bm, A) if name == "from_ref" else (A, Bm)  # fwd: query side → key side
        best = fwd.argmax(1)
        score = np.exp(fwd[np.arange(hw), best])
        keep = score >= cfg.min_confidence
        if cfg.mutual:
            keep &= bwd[best].argmax(1) == np.arange(hw)
        if cfg.drop_same_position:
            keep &= best != np.arange(hw)
        q_idx = np.nonzero(keep)[0]
        key_px = _refine(fwd[q_idx], best[q_idx], grid_hw, centers, cfg.refine_radius)
        q_px = centers[q_idx]
        ref_px, view_px = (q_px, key_px) if name == "from_ref" else (key_px, q_px)
        out_ref.append(ref_px)
        out_view.append(view_px)
        out_score.append(score[q_idx])
    return ViewMatches(np.concatenate(out_ref), np.concatenate(out_view), np.concatenate(out_score))


# --------------------------------------------------------------------------------------------------
# 3. matches → poses
# --------------------------------------------------------------------------------------------------


def sample_depth(depth: np.ndarray, px: np.ndarray) -> np.ndarray:
    """Bilinear depth at continuous pixels ``px`` [M, 2] (x, y); NaN outside the image or where a
    contributing pixel is not a positive finite depth (no blending across invalid pixels)."""
    d = np.asarray(depth, np.float64)
    H, W = d.shape
    x, y = px[:, 0], px[:, 1]
    ok = (x >= 0) & (x <= W - 1) & (y >= 0) & (y <= H - 1)
    x0 = np.clip(np.floor(x), 0, max(W - 2, 0)).astype(int)
    y0 = np.clip(np.floor(y), 0, max(H - 2, 0)).astype(int)
    x1, y1 = np.minimum(x0 + 1, W - 1), np.minimum(y0 + 1, H - 1)
    fx, fy = np.clip(x - x0, 0, 1), np.clip(y - y0, 0, 1)
    c = [d[y0, x0], d[y0, x1], d[y1, x0], d[y1, x1]]
    good = np.all([np.isfinite(v) & (v > 0) for v in c], axis=0)
    val = (c[0] * (1 - fx) + c[1] * fx) * (1 - fy) + (c[2] * (1 - fx) + c[3] * fx) * fy
    return np.where(ok & good, val, np.nan)


def unproject_pixels(depth: np.ndarray, K: np.ndarray, px: np.ndarray) -> np.ndarray:
    """Camera-frame 3-D points [M, 3] of pixels ``px`` (x, y) with z-depth sampled from ``depth`` [H, W]
    (NaN rows where the depth is missing)."""
    z = sample_depth(depth, px)
    K = np.asarray(K, np.float64)
    x = (px[:, 0] - K[0, 2]) / K[0, 0] * z
    y = (px[:, 1] - K[1, 2]) / K[1, 1] * z
    return np.stack([x, y, z], -1)


def _seed_cv2(seed: int):
    import cv2

    cv2.setRNGSeed(int(seed))
    return cv2


def _solve_pnp(X0: np.ndarray, px: np.ndarray, K: np.ndarray, thr_px: float, cfg: MatchPoseConfig):
    cv2 = _seed_cv2(cfg.seed)
    ok, rvec, tvec, inl = cv2.solvePnPRansac(
        X0[:, None], px[:, None], K, None, iterationsCount=cfg.ransac_iterations, reprojectionError=thr_px,
        confidence=cfg.ransac_confidence, flags=cv2.SOLVEPNP_EPNP,
    )  # fmt: skip
    if not ok or inl is None or len(inl) < cfg.min_inliers:
        return None
    inl = inl.reshape(-1)
    if cfg.refine:
        rvec, tvec = cv2.solvePnPRefineLM(X0[inl, None], px[inl, None], K, None, rvec, tvec)
    R, _ = cv2.Rodrigues(rvec)
    return np.concatenate([R, tvec.reshape(3, 1)], 1), len(inl)


def _umeyama_batch(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Similarity fits of many small point sets at once: src, dst [I, n, 3] → (s [I], R [I,3,3],
    t [I,3]) with dst ≈ s R src + t (Umeyama 1991; degenerate sets give s = 0)."""
    mu_s, mu_d = src.mean(1, keepdims=True), dst.mean(1, keepdims=True)
    xs, xd = src - mu_s, dst - mu_d
    var = (xs * xs).sum((1, 2)) / src.shape[1]
    cov = np.einsum("ina,inb->iab", xd, xs) / src.shape[1]
    U, D, Vt = np.linalg.svd(cov)
    sign = np.ones((len(src), 3))
    sign[:, 2] = np.where(np.linalg.det(U) * np.linalg.det(Vt) < 0, -1.0, 1.0)
    R = np.einsum("iab,ib,ibc->iac", U, sign, Vt)
    s = np.where(var > 1e-300, (D * sign).sum(1) / np.maximum(var, 1e-300), 0.0)
    t = mu_d[:, 0] - s[:, None] * np.einsum("iab,ib->ia", R, mu_s[:, 0])
    return s, R, t


def _solve_procrustes(X0: np.ndarray, Xi: np.ndarray, cfg: MatchPoseConfig):
    from lite3r.eval.align import umeyama

    n = len(X0)
    rng = np.random.default_rng(cfg.seed)
    # all minimal (3-point) hypotheses at once, scored by the relative 3-D distance
    idx = np.argsort(rng.random((cfg.ransac_iterations, n)), axis=1)[:, :3]
    s, R, t = _umeyama_batch(X0[idx], Xi[idx])
    pred = s[:, None, None] * np.einsum("iab,nb->ina", R, X0) + t[:, None]
    err = np.linalg.norm(pred - Xi[None], axis=2) / np.linalg.norm(Xi, axis=1)[None]
    counts = np.where(s > 0, (err < cfg.procrustes_threshold).sum(1), -1)
    best = int(np.argmax(counts))  # first of the ties: deterministic
    best_inl = err[best] < cfg.procrustes_threshold
    if counts[best] < cfg.min_inliers:
        return None
    try:
        sim = umeyama(X0[best_inl], Xi[best_inl], with_scale=True)
    except ValueError:
        return None
    if not sim.scale > 0:
        return None
    # Xi = s (R X0 + t/s): view i's depth is s times view 0's; the pose in view-0 units is [R | t/s]
    return np.concatenate([sim.rotation, (sim.translation / sim.scale).reshape(3, 1)], 1), int(counts[best])


def _solve_essential(ref_px, view_px, K0, Ki, z_ref: np.ndarray, thr_px: float, cfg: MatchPoseConfig):
    cv2 = _seed_cv2(cfg.seed)
    n0 = (ref_px - K0[:2, 2]) / np.diag(K0)[:2]
    ni = (view_px - Ki[:2, 2]) / np.diag(Ki)[:2]
    f = 0.5 * (K0[0, 0] + Ki[0, 0])
    E, mask = cv2.findEssentialMat(
        n0, ni, np.eye(3), method=cv2.RANSAC, prob=cfg.ransac_confidence, threshold=thr_px / f,
        maxIters=cfg.ransac_iterations,
    )  # fmt: skip
    if E is None or E.shape != (3, 3) or mask is None or int(mask.sum()) < cfg.min_inliers:
        return None
    if cfg.refine:  # RANSAC keeps the first minimal-sample model; refit on its inliers (least median)
        inl = mask.reshape(-1) > 0
        E2, _ = cv2.findEssentialMat(
            n0[inl], ni[inl], np.eye(3), method=cv2.LMEDS, prob=cfg.ransac_confidence
        )
        if E2 is not None and E2.shape == (3, 3):
            E = E2
    count, R, t, mask = cv2.recoverPose(E, n0, ni, np.eye(3), mask=mask.copy())
    inl = mask.reshape(-1) > 0
    if count < cfg.min_inliers:
        return None
    # baseline length: triangulate the inliers with a unit baseline, compare with the view-0 depth
    P0 = np.eye(3, 4)
    P1 = np.concatenate([R, t.reshape(3, 1)], 1)
    Xh = cv2.triangulatePoints(P0, P1, n0[inl].T, ni[inl].T)
    z = Xh[2] / Xh[3]
    ratio = z_ref[inl] / z
    ratio = ratio[np.isfinite(ratio) & (ratio > 0)]
    if ratio.size == 0:
        return None
    return np.concatenate([R, float(np.median(ratio)) * t.reshape(3, 1)], 1), int(count)


def solve_view(
    matches: ViewMatches,
    depth_ref: np.ndarray,
    K_ref: np.ndarray,
    K_view: np.ndarray,
    cfg: MatchPoseConfig,
    patch_size: int,
    depth_view: np.ndarray | None = None,
) -> tuple[np.ndarray, int] | None:
    """World(= camera 0)→camera-i pose [3, 4] and the inlier count from one view's matches, or None
    when there are too few matches or inliers."""
    X0 = unproject_pixels(depth_ref, K_ref, matches.ref_px)
    ok = np.isfinite(X0).all(1)
    thr_px = cfg.ransac_threshold * patch_size
    if cfg.solver == "procrustes":
        if depth_view is None:
            raise InputError("the procrustes solver needs the depth of every view (depths=...)")
        Xi = unproject_pixels(depth_view, K_view, matches.view_px)
        ok &= np.isfinite(Xi).all(1)
        if ok.sum() < max(cfg.min_inliers, 3):
            return None
        return _solve_procrustes(X0[ok], Xi[ok], cfg)
    if ok.sum() < max(cfg.min_inliers, 6):
        return None
    if cfg.solver == "pnp":
        return _solve_pnp(X0[ok], matches.view_px[ok], np.asarray(K_view, np.float64), thr_px, cfg)
    return _solve_essential(matches.ref_px[ok], matches.view_px[ok], np.asarray(K_ref, np.float64),
                            np.asarray(K_view, np.float64), X0[ok, 2], thr_px, cfg)  # fmt: skip


def estimate_poses(
    matches: list[ViewMatches | None],
    depth_ref: np.ndarray,
    intrinsics: np.ndarray,
    cfg: MatchPoseConfig,
    patch_size: int,
    depths: np.ndarray | None = None,
    fallback: np.ndarray | None = None,
) -> MatchPoseResult:
    """Poses of all S views from the matches of views 1..S−1 to view 0 (``matches[0]`` is ignored).

    depth_ref [H, W] (view 0's depth, any scale: it sets the translation unit), intrinsics [S, 3, 3]
    (pixels of the depth maps), depths [S, H, W] (``procrustes`` only), fallback [S, 3, 4] (the pose of
    unsolved views; default identity)."""
    K = np.asarray(intrinsics, np.float64)
    S = len(matches)
    if S < 2 or K.shape != (S, 3, 3):
        raise InputError(f"need ≥ 2 views and intrinsics [S, 3, 3] for S = {S} match sets, got {K.shape}")
    d0 = np.asarray(depth_ref, np.float64)
    if d0.ndim != 2:
        raise InputError(f"depth_ref must be [H, W], got {d0.shape}")
    if depths is not None:
        depths = np.asarray(depths, np.float64)
        if depths.shape != (S, *d0.shape):
            raise InputError(f"depths must be [S, H, W] = {(S, *d0.shape)}, got {depths.shape}")
    if fallback is None:
        fallback = np.tile(np.eye(4)[:3], (S, 1, 1))
    fallback = np.asarray(fallback, np.float64)
    if fallback.shape != (S, 3, 4):
        raise InputError(f"fallback extrinsics must be [S, 3, 4], got {fallback.shape}")
    ext = fallback.copy()
    ext[0] = np.eye(4)[:3]
    solved = np.zeros(S, bool)
    solved[0] = True
    n_match = np.zeros(S, int)
    n_inl = np.zeros(S, int)
    for i in range(1, S):
        m = matches[i]
        if m is None:
            continue
        n_match[i] = len(m)
        res = solve_view(m, d0, K[0], K[i], cfg, patch_size, None if depths is None else depths[i])
        if res is None:
            continue
        ext[i], n_inl[i] = res
        solved[i] = True
    if cfg.bundle_adjust and solved[1:].any():
        ext = _bundle_adjust(matches, d0, K, ext, solved, cfg, patch_size)
        return MatchPoseResult(ext, solved, n_match, n_inl, f"{cfg.solver}+ba")
    return MatchPoseResult(ext, solved, n_match, n_inl, cfg.solver)


def _bundle_adjust(matches, d0, K, ext, solved, cfg: MatchPoseConfig, patch_size: int) -> np.ndarray:
    """The solved views' poses refined jointly with the view-0 depths of their inlier matches: the
    matches that reproject within the RANSAC threshold under the view's solved pose."""
    from .match_bundle import BundleObservations, bundle_adjust, project

    thr_px = cfg.ransac_threshold * patch_size
    per_view = {}
    for i in np.nonzero(solved)[0][1:]:
        m = matches[i]
        X0 = unproject_pixels(d0, K[0], m.ref_px)
        ok = np.isfinite(X0).all(1)
        Xc = X0[ok] @ ext[i, :, :3].T + ext[i, :, 3]
        inl = (Xc[:, 2] > 0) & (np.linalg.norm(project(K[i], Xc) - m.view_px[ok], axis=1) < thr_px)
        per_view[int(i)] = (m.ref_px[ok][inl], m.view_px[ok][inl], X0[ok][inl, 2])
    obs = BundleObservations.from_matches(per_view)
    views = sorted(per_view)
    refined, _ = bundle_adjust(obs, ext, K, views, cfg.ba_pixel_sigma * patch_size, cfg.ba_depth_sigma)
    return refined


def poses_from_scores(
    to_ref: Tensor | np.ndarray,
    from_ref: Tensor | np.ndarray,
    depths: np.ndarray,
    intrinsics: np.ndarray,
    cfg: MatchPoseConfig,
    patch_size: int,
    fallback: np.ndarray | None = None,
) -> MatchPoseResult:
    """Steps 2 and 3 for one scene: the log-probabilities of :func:`encode_with_match_scores` for that
    scene ([S, hw, hw] each), its depths [S, H, W] and intrinsics [S, 3, 3] → every view's pose.
    The patch grid is the depth map's size over ``patch_size``; views that cannot be solved keep
    ``fallback`` (default identity)."""
    depths = np.asarray(depths, np.float64)
    if depths.ndim != 3:
        raise InputError(f"depths must be [S, H, W], got {depths.shape}")
    S, H, W = depths.shape
    grid = (H // patch_size, W // patch_size)
    to_ref = to_ref.detach().double().cpu().numpy() if isinstance(to_ref, Tensor) else np.asarray(to_ref)
    from_ref = (
        from_ref.detach().double().cpu().numpy() if isinstance(from_ref, Tensor) else np.asarray(from_ref)
    )
    if to_ref.shape[0] != S or from_ref.shape[0] != S:
        raise InputError(f"{to_ref.shape[0]} / {from_ref.shape[0]} views of match scores for {S} depth maps")
    matches = [None] + [patch_matches(to_ref[i], from_ref[i], grid, patch_size, cfg) for i in range(1, S)]
    return estimate_poses(matches, depths[0], intrinsics, cfg, patch_size, depths=depths, fallback=fallback)
