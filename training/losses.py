"""VGGT training losses (method.md §A3.4, data.md §3.2 item 5), with Lite3R's target handling (C2).

* **Targets** are canonicalised to view 0 (view 0 gets the identity pose; points are expressed in
  camera-0 coordinates) and scale-normalised like VGGT's data pipeline: translations, depths and
  points are divided by the mean distance of the valid GT points (in the view-0 frame) to the origin.
* **Camera**: L1 on the absT_quaR_FoV encoding for every refinement iteration i of n, weighted
  0.6^(n−1−i) and averaged over n; component weights T 1.0, quaternion 1.0, FoV 0.5; the per-element
  translation error is clamped at 100. Frames count when view 0 of their sample has > 100 valid pixels.
  Optional (``trans_dir_weight`` > 0, off in VGGT): 1 − cos between the predicted and GT translation
  of every view with a non-zero GT translation, same iteration weights — a scale-free signal that,
  unlike the L1 on absolute T, does not reward T → 0 when the model is unsure (issue #6).
* **Depth / points**: confidence-weighted regression γ·‖p̂ − p‖·c − α·log c (γ 1, α 0.2) plus the plain
  regression term, both trimmed at the ``valid_range`` quantile (0.98; values clamped at 100 first),
  plus a multi-scale gradient term: L1 of the residual's finite differences at strides 1, 2, 4, 8
  ("grad", depth) or 1 − cos between surface normals at strides 1, 2, 4 ("normal", points).
* Optional (``log_depth_weight`` > 0, off in VGGT): L1 of log depth, trimmed like the rest. The L1 on
  depth and the confidence term weigh far pixels most, and lite3r-tiny's depth comes out range-
  compressed (raising it to the power 1.15 lowers its AbsRel 0.286 → 0.262 on validation); a relative
  error weighs every pixel as AbsRel does (issue #6).
* Default task weights follow VGGT's training config: camera 5.0, depth 1.0, points 1.0.

Every term is returned separately (``terms``) so the curves show what moves.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lite3r.geometry import closed_form_inverse_se3, extri_intri_to_pose_encoding, unproject_depth

__all__ = [
    "LossConfig",
    "Targets",
    "camera_loss",
    "distillation_task_loss",
    "log_depth_term",
    "normalize_targets",
    "regression_loss",
    "vggt_loss",
]


@dataclass(frozen=True)
class LossConfig:
    camera_weight: float = 5.0
    depth_weight: float = 1.0
    point_weight: float = 1.0
    camera_gamma: float = 0.6  # decay over refinement iterations
    weight_trans: float = 1.0
    weight_rot: float = 1.0
    weight_fov: float = 0.5
    trans_clamp: float = 100.0
    # 1 − cos between predicted and GT translation of views 1..S−1 (scale-free). The L1 on absolute T
    # rewards T → 0 when the model is unsure; a direction term does not (issue #6). 0 = off (VGGT).
    trans_dir_weight: float = 0.0
    # L1 of log depth (relative error, weighs near and far pixels alike). 0 = off (VGGT).
    log_depth_weight: float = 0.0
    conf_gamma: float = 1.0
    conf_alpha: float = 0.2
    valid_range: float = 0.98  # quantile trimming; <= 0 disables
    depth_gradient: str = "grad"  # "grad" | "none"
    point_gradient: str = "normal"  # "normal" | "grad" | "none"
    min_valid: int = 100  # fewer valid GT pixels in view 0 → the sample's frames are skipped
    normalize: bool = True  # canonicalise + scale-normalise the targets (VGGT); False: take them as given

    def __post_init__(self):
        if self.depth_gradient not in ("grad", "none"):
            raise ValueError(f"depth_gradient must be grad or none, got {self.depth_gradient!r}")
        if self.point_gradient not in ("normal", "grad", "none"):
            raise ValueError(f"point_gradient must be normal, grad or none, got {self.point_gradient!r}")

    @classmethod
    def from_options(cls, **kw: Any) -> LossConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(kw) - names
        if unknown:
            raise ValueError(f"unknown loss options {sorted(unknown)}; known: {sorted(names)}")
        return cls(**kw)


@dataclass
class Targets:
    """Normalised ground truth for one batch: [B, S, ...] tensors, float32."""

    extrinsics: Tensor  # [B,S,3,4] world(=camera 0)->camera
    intrinsics: Tensor  # [B,S,3,3]
    pose_enc: Tensor  # [B,S,9] absT_quaR_FoV
    depth: Tensor  # [B,S,H,W]
    world_points: Tensor  # [B,S,H,W,3] in the camera-0 frame
    valid: Tensor  # [B,S,H,W] bool
    scale: Tensor  # [B] the divisor that was applied
    frame_ok: Tensor  # [B] view 0 has enough valid pixels


def _to4(E: Tensor) -> Tensor:
    bottom = torch.zeros(*E.shape[:-2], 1, 4, dtype=E.dtype, device=E.device)
    bottom[..., 0, 3] = 1.0
    return torch.cat([E[..., :3, :], bottom], dim=-2)


@torch.no_grad()
def normalize_targets(
    extrinsics: Tensor,
    intrinsics: Tensor,
    depth: Tensor,
    valid: Tensor | None = None,
    world_points: Tensor | None = None,
    min_valid: int = 100,
    normalize: bool = True,
) -> Targets:
    """Express GT in camera-0 coordinates and divide lengths by the mean valid-point distance.

    ``world_points`` may be omitted (they are unprojected from depth). Shapes [B,S,...]; computed in
    float64, returned in float32."""
    E = extrinsics.double()
    K = intrinsics.double()
    d = depth.double()
    valid = (d > 0) & torch.isfinite(d) if valid is None else valid.bool() & (d > 0) & torch.isfinite(d)
    d = torch.where(valid, d, torch.zeros_like(d))
    if normalize:
        c2w0 = closed_form_inverse_se3(_to4(E[:, :1]))  # [B,1,4,4]
        E = (_to4(E) @ c2w0)[..., :3, :]  # camera i <- camera 0
        E[:, 0] = torch.eye(3, 4, dtype=E.dtype, device=E.device)  # exact identity (no round-off)
    pts = world_points.double() if world_points is not None and not normalize else unproject_depth(d, E, K)
    pts = torch.where(valid[..., None], pts, torch.zeros_like(pts))
    n_valid = valid.flatten(1).sum(1)
    if normalize:
        dist = pts.norm(dim=-1).flatten(1).sum(1) / n_valid.clamp_min(1)
        scale = torch.where(n_valid > 0, dist, torch.ones_like(dist)).clamp_min(1e-6)
    else:
        scale = torch.ones(E.shape[0], dtype=E.dtype, device=E.device)
    s = scale.view(-1, 1, 1, 1)
    E = torch.cat([E[..., :3], E[..., 3:] / s], dim=-1)
    d = d / s
    pts = pts / s[..., None]
    H, W = depth.shape[-2:]
    enc = extri_intri_to_pose_encoding(E, K, (H, W))
    frame_ok = valid[:, 0].flatten(1).sum(1) > min_valid
    f = torch.float32
    return Targets(E.to(f), K.to(f), enc.to(f), d.to(f), pts.to(f), valid, scale.to(f), frame_ok)


# --------------------------------------------------------------------------------------------------
# Camera
# --------------------------------------------------------------------------------------------------


def camera_loss(pose_enc_list: list[Tensor], gt_pose_enc: Tensor, frame_ok: Tensor, cfg: LossConfig) -> dict:
    """L1 on absT_quaR_FoV over every refinement iteration (weights γ^(n−1−i), mean over n)."""
    n = len(pose_enc_list)
    zero = pose_enc_list[-1].sum() * 0.0
    if not bool(frame_ok.any()):
        out = {"camera": zero, "cam_T": zero, "cam_R": zero, "cam_FoV": zero}
        return {**out, "cam_Tdir": zero} if cfg.trans_dir_weight else out
    gt = gt_pose_enc[frame_ok].float()
    lt = lr = lf = ld = 0.0
    gt_norm = gt[..., :3].norm(dim=-1)
    moved = gt_norm > 1e-6  # view 0 (identity) and degenerate baselines have no direction
    for i, pred in enumerate(pose_enc_list):
        w = cfg.camera_gamma ** (n - 1 - i)
        p = pred[frame_ok].float()
        lt = lt + w * (p[..., :3] - gt[..., :3]).abs().clamp(max=cfg.trans_clamp).mean()
        lr = lr + w * (p[..., 3:7] - gt[..., 3:7]).abs().mean()
        lf = lf + w * (p[..., 7:] - gt[..., 7:]).abs().mean()
        if cfg.trans_dir_weight and bool(moved.any()):
            pt, gtt = p[..., :3][moved], gt[..., :3][moved]
            cos = (pt * gtt).sum(-1) / (pt.norm(dim=-1).clamp_min(1e-2) * gt_norm[moved])
            ld = ld + w * (1 - cos).mean()
    lt, lr, lf, ld = lt / n, lr / n, lf / n, ld / n
    total = cfg.weight_trans * lt + cfg.weight_rot * lr + cfg.weight_fov * lf
    out = {"camera": total, "cam_T": lt, "cam_R": lr, "cam_FoV": lf}
    if cfg.trans_dir_weight:
        out["cam_Tdir"] = ld if torch.is_tensor(ld) else zero
        out["camera"] = total + cfg.trans_dir_weight * out["cam_Tdir"]
    return out


# --------------------------------------------------------------------------------------------------
# Dense regression
# --------------------------------------------------------------------------------------------------


def _kth_smallest(flat: Tensor, k: int) -> float:
    """The k-th smallest element (1-based) of a 1-D tensor. On CUDA a full radix sort: ``kthvalue`` on
    one long slice runs in a single thread block (27 ms of a 308 ms lite3r-tiny step,
    benchmarks/results/tiny/throughput/tiny_step_profile.md), the sort in well under a millisecond."""
    if flat.is_cuda:
        return float(torch.sort(flat).values[k - 1])
    return float(torch.kthvalue(flat, k).values)


def _trimmed_mean(
    values: Tensor, mask: Tensor, q: float, min_elements: int = 1000, hard_max: float = 100.0
) -> Tensor:
    """Mean of ``values`` over ``mask``, clamped at ``hard_max``, without the values at or above the
    q-quantile of the masked values (when more than ``min_elements`` remain; with no more than that,
    or q <= 0, the plain masked mean).

    Dense on purpose: excluded elements get zero weight through ``torch.where``, so the backward stays
    elementwise. Boolean indexing (``values[mask]``) would make it an index-put scatter, which was
    30 ms of the lite3r-tiny step. Only the threshold gathers the masked values, without gradient."""
    sel = values.detach()[mask]
    n = sel.numel()
    if n <= min_elements or q <= 0:
        return torch.where(mask, values, 0).sum() / max(n, 1)
    values = values.clamp(max=hard_max)
    flat = sel.clamp(max=hard_max).float()
    if n > 4_000_000:  # quantile of a deterministic strided subsample (memory)
        flat = flat[:: n // 2_000_000 + 1]
    k = max(1, min(flat.numel(), round(q * (flat.numel() - 1)) + 1))
    thresh = min(_kth_smallest(flat, k), hard_max)
    keep = mask & (values.detach() < thresh)
    kept = int(keep.sum())
    if kept > min_elements:
        return torch.where(keep, values, 0).sum() / kept
    return torch.where(mask, values, 0).sum() / n


def _gradient_term(pred: Tensor, gt: Tensor, mask: Tensor, scales: int) -> Tensor:
    """Multi-scale L1 of the residual's horizontal/vertical differences. pred/gt [N,H,W,C], mask [N,H,W]."""
    total = pred.sum() * 0.0
    for k in range(scales):
        st = 2**k
        p, g, m = pred[:, ::st, ::st], gt[:, ::st, ::st], mask[:, ::st, ::st]
        mf = m[..., None].to(p.dtype)
        diff = (p - g) * mf
        gx = (diff[:, :, 1:] - diff[:, :, :-1]).abs() * (mf[:, :, 1:] * mf[:, :, :-1])
        gy = (diff[:, 1:] - diff[:, :-1]).abs() * (mf[:, 1:] * mf[:, :-1])
        denom = mf.sum() * p.shape[-1]
        if float(denom) > 0:
            total = total + (gx.clamp(max=100).sum() + gy.clamp(max=100).sum()) / denom
    return total / scales


def _normals(points: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Four cross-product normals per pixel from the 4-neighbourhood of a point map [N,H,W,3]."""
    pts = F.pad(points.permute(0, 3, 1, 2), (1, 1, 1, 1)).permute(0, 2, 3, 1)
    m = F.pad(mask, (1, 1, 1, 1))
    c = pts[:, 1:-1, 1:-1]
    up, left, down, right = (
        pts[:, :-2, 1:-1] - c,
        pts[:, 1:-1, :-2] - c,
        pts[:, 2:, 1:-1] - c,
        pts[:, 1:-1, 2:] - c,
    )
    mc = m[:, 1:-1, 1:-1]
    mu, ml, md, mr = m[:, :-2, 1:-1], m[:, 1:-1, :-2], m[:, 2:, 1:-1], m[:, 1:-1, 2:]
    n = torch.stack(
        [torch.linalg.cross(up, left), torch.linalg.cross(left, down), torch.linalg.cross(down, right),
         torch.linalg.cross(right, up)]
    )  # fmt: skip
    v = torch.stack([mu & ml, ml & md, md & mr, mr & mu]) & mc
    return F.normalize(n, dim=-1, eps=1e-8), v


def _normal_term(pred: Tensor, gt: Tensor, mask: Tensor, scales: int) -> Tensor:
    total = pred.sum() * 0.0
    for k in range(scales):
        st = 2**k
        p, g, m = pred[:, ::st, ::st].float(), gt[:, ::st, ::st].float(), mask[:, ::st, ::st]
        npd, vp = _normals(p, m)
        ngt, vg = _normals(g, m)
        ok = vp & vg
        n = int(ok.sum())
        if n < 10:
            continue
        cos = (npd * ngt).sum(-1).clamp(-1 + 1e-8, 1 - 1e-8)  # dense: see _trimmed_mean
        total = total + torch.where(ok, 1 - cos, 0).sum() / n
    return total / scales


def regression_loss(
    pred: Tensor, gt: Tensor, mask: Tensor, conf: Tensor, cfg: LossConfig, gradient: str
) -> dict[str, Tensor]:
    """pred/gt [B,S,H,W,C], mask/conf [B,S,H,W] → {conf, reg, grad} terms (each a scalar)."""
    zero = pred.sum() * 0.0
    if int(mask.sum()) < cfg.min_valid:
        return {"conf": zero, "reg": zero, "grad": zero}
    pred = pred.float()
    gt = gt.float()
    conf = conf.float()
    # every pixel, masked in the means (dense, see _trimmed_mean); invalid GT pixels hold finite zeros
    err = torch.linalg.vector_norm(gt - pred, dim=-1)
    loss_conf = cfg.conf_gamma * err * conf - cfg.conf_alpha * torch.log(conf)
    loss_conf = _trimmed_mean(loss_conf, mask, cfg.valid_range)
    loss_reg = _trimmed_mean(err, mask, cfg.valid_range)
    B, S, H, W, C = pred.shape
    if gradient == "grad":
        loss_grad = _gradient_term(
            pred.view(B * S, H, W, C), gt.view(B * S, H, W, C), mask.view(B * S, H, W), 4
        )
    elif gradient == "normal":
        loss_grad = _normal_term(
            pred.view(B * S, H, W, C), gt.view(B * S, H, W, C), mask.view(B * S, H, W), 3
        )
    else:
        loss_grad = zero
    return {"conf": loss_conf, "reg": loss_reg, "grad": loss_grad}


def log_depth_term(pred: Tensor, gt: Tensor, mask: Tensor, cfg: LossConfig) -> Tensor:
    """Trimmed mean of |log p̂ − log g| over ``mask``; pred/gt/mask [B,S,H,W]. Both sides are clamped at
    1e-6 so invalid pixels (GT 0) stay finite; they are masked out anyway."""
    if int(mask.sum()) < cfg.min_valid:
        return pred.sum() * 0.0
    err = (torch.log(pred.float().clamp(min=1e-6)) - torch.log(gt.float().clamp(min=1e-6))).abs()
    return _trimmed_mean(err, mask, cfg.valid_range)


# --------------------------------------------------------------------------------------------------
# Total
# --------------------------------------------------------------------------------------------------


def vggt_loss(
    preds: dict, targets: Targets, cfg: LossConfig | None = None
) -> tuple[Tensor, dict[str, Tensor]]:
    """VGGT multitask loss from the reference output dict (``pose_enc_list``, ``depth`` [B,S,H,W,1],
    ``depth_conf``, optionally ``world_points`` + ``world_points_conf``) and normalised targets."""
    cfg = cfg or LossConfig()
    terms: dict[str, Tensor] = {}
    total = None
    mask = targets.valid & targets.frame_ok[:, None, None, None]
    if "pose_enc_list" in preds and cfg.camera_weight:
        cam = camera_loss(preds["pose_enc_list"], targets.pose_enc, targets.frame_ok, cfg)
        terms.update(cam)
        total = cfg.camera_weight * cam["camera"]
    if "depth" in preds and cfg.depth_weight:
        depth = preds["depth"]
        depth = depth if depth.ndim == 5 else depth[..., None]
        r = regression_loss(
            depth, targets.depth[..., None], mask, preds["depth_conf"], cfg, cfg.depth_gradient
        )
        terms.update({f"depth_{k}": v for k, v in r.items()})
        d = r["conf"] + r["reg"] + r["grad"]
        if cfg.log_depth_weight:
            terms["depth_log"] = log_depth_term(depth[..., 0], targets.depth, mask, cfg)
            d = d + cfg.log_depth_weight * terms["depth_log"]
        terms["depth"] = d
        total = cfg.depth_weight * d if total is None else total + cfg.depth_weight * d
    if preds.get("world_points") is not None and cfg.point_weight:
        r = regression_loss(
            preds["world_points"],
            targets.world_points,
            mask,
            preds["world_points_conf"],
            cfg,
            cfg.point_gradient,
        )
        terms.update({f"point_{k}": v for k, v in r.items()})
        p = r["conf"] + r["reg"] + r["grad"]
        terms["point"] = p
        total = cfg.point_weight * p if total is None else total + cfg.point_weight * p
    if total is None:
        raise ValueError("the predictions contain no camera, depth or point output to supervise")
    return total, terms


def targets_from_batch(batch: dict[str, Tensor], cfg: LossConfig) -> Targets:
    """Targets from a data batch {extrinsics, intrinsics, depth, valid?, world_points?} ([B,S,...])."""
    return normalize_targets(
        batch["extrinsics"],
        batch["intrinsics"],
        batch["depth"],
        batch.get("valid"),
        batch.get("world_points"),
        cfg.min_valid,
        cfg.normalize,
    )


def distillation_task_loss(
    preds: dict, batch: dict[str, Tensor], loss_cfg
) -> tuple[Tensor, dict[str, Tensor]]:
    """The task loss for ``lite3r.training.components`` (distillation): ``loss_cfg`` is the run's
    ``training.config.LossConfig`` (camera_weight, depth_weight, options → fields of :class:`LossConfig`)."""
    cfg = LossConfig.from_options(
        camera_weight=loss_cfg.camera_weight, depth_weight=loss_cfg.depth_weight, **dict(loss_cfg.options)
    )
    return vggt_loss(preds, targets_from_batch(batch, cfg), cfg)
