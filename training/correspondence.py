"""Correspondence supervision of VGGT's global attention (lite3r-tiny, issue #6).

Trained from scratch on SynthMV, lite3r-tiny learns depth but its camera head collapses to the pose
prior: the trunk never discovers cross-view matching, which the pose needs (see
``benchmarks/results/tiny/pose_investigation_cpu.md``). The generator knows, for every patch of view
i, which patch of view j sees the same 3-D point, so matching can be taught directly: a cross-entropy
on the attention logits q·k/√d of a global attention layer, from a sampled patch of view i over the
patch tokens of view j, toward the corresponding patch (only pairs where the point is in frame and
not occluded in view j).

* :func:`patch_correspondences` — the targets: the GT point at each patch centre reprojected into
  every other view, with a depth-consistency occlusion test.
* :class:`AttentionCapture` — forward hooks on chosen global attention modules that recompute q, k
  from the module's own input with its own ``project_qkv`` (qk-norm and RoPE exactly as the model
  applies them). The model's computation is untouched; nothing is captured unless hooks are
  installed (at build time, by the training script) and autograd is recording.
* :func:`correspondence_loss` — the cross-entropy, on a random subset of query patches (memory).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lite3r.models.vggt.attention_capture import GlobalQKCapture, resolve_layers

__all__ = ["AttentionCapture", "correspondence_loss", "patch_correspondences", "resolve_layers"]


@torch.no_grad()
def patch_correspondences(
    world_points: Tensor,
    valid: Tensor,
    depth: Tensor,
    extrinsics: Tensor,
    intrinsics: Tensor,
    patch_size: int,
    depth_tol: float = 0.05,
) -> Tensor:
    """For every patch p of view i and every view j: the index of the patch of view j that sees the
    3-D point at p's centre pixel, or −1 (no valid GT point, behind the camera, out of frame,
    occluded — GT depth of j at the reprojection differs by more than ``depth_tol`` relative — or
    j == i).

    world_points [B,S,H,W,3] (any common frame), valid/depth [B,S,H,W], extrinsics [B,S,3,4]
    (that frame → camera), intrinsics [B,S,3,3] → long [B,S,h·w,S] (patches row-major)."""
    B, S, H, W = depth.shape
    h, w = H // patch_size, W // patch_size
    c = patch_size // 2
    ys = torch.arange(h, device=depth.device) * patch_size + c
    xs = torch.arange(w, device=depth.device) * patch_size + c
    X = world_points[:, :, ys][:, :, :, xs].reshape(B, S, h * w, 3).double()  # [B,S,P,3]
    ok_i = valid[:, :, ys][:, :, :, xs].reshape(B, S, h * w)
    R = extrinsics[..., :3].double()  # [B,S,3,3]
    t = extrinsics[..., 3].double()
    # camera coordinates of every (i, p) point in every view j: [B,S_i,P,S_j,3]
    Xc = torch.einsum("bjkl,bipl->bipjk", R, X) + t[:, None, None]
    z = Xc[..., 2]
    zs = z.clamp_min(1e-9)
    K = intrinsics.double()
    fx, fy = K[:, None, None, :, 0, 0], K[:, None, None, :, 1, 1]
    cx, cy = K[:, None, None, :, 0, 2], K[:, None, None, :, 1, 2]
    u = fx * Xc[..., 0] / zs + cx
    v = fy * Xc[..., 1] / zs + cy
    col = torch.floor((u + 0.5) / patch_size)
    row = torch.floor((v + 0.5) / patch_size)
    inside = (z > 1e-6) & (col >= 0) & (col < w) & (row >= 0) & (row < h)
    # occlusion test against view j's GT depth at the nearest pixel
    px = torch.round(u).clamp(0, W - 1).long()
    py = torch.round(v).clamp(0, H - 1).long()
    bj = torch.arange(B, device=depth.device).view(B, 1, 1, 1).expand_as(px)
    jj = torch.arange(S, device=depth.device).view(1, 1, 1, S).expand_as(px)
    d_j = depth[bj, jj, py, px].double()
    seen = valid[bj, jj, py, px] & ((d_j - z).abs() <= depth_tol * z)
    not_self = ~torch.eye(S, dtype=torch.bool, device=depth.device).view(1, S, 1, S)
    ok = ok_i[..., None] & inside & seen & not_self
    idx = (row * w + col).clamp(0, h * w - 1).long()
    return torch.where(ok, idx, torch.full_like(idx, -1))


class AttentionCapture(GlobalQKCapture):
    """Keeps (q, k, frame_len) of the last forward of chosen global attention modules, only while
    autograd is recording (validation and inference stay free).

    Forward hooks on ``model.aggregator.global_blocks[l].attn`` recompute q, k from the module's input
    with ``module.project_qkv`` (the same qk-norm and RoPE as the forward), so the model's output is
    unchanged and the loss's gradients reach the trunk (the hooks live in
    :mod:`lite3r.models.vggt.attention_capture`, shared with the pose read-out). ``remove()`` detaches
    the hooks."""

    def __init__(self, model: nn.Module, layers: tuple[int, ...]) -> None:
        super().__init__(model, layers, grad_only=True)


def correspondence_loss(
    q: Tensor,
    k: Tensor,
    targets: Tensor,
    num_views: int,
    patch_start: int,
    queries: int = 64,
    heads: int = 1,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Cross-entropy of the attention logits toward the corresponding patch.

    q, k [B,Hh,S·P,D] (a global sequence, frame-major, ``patch_start`` special tokens per frame),
    targets long [B,S,h·w,S] from :func:`patch_correspondences`. Per (b, i) up to ``queries`` patches
    with at least one valid correspondence are sampled; for each, and each view j with a valid target,
    the softmax runs over view j's patch tokens (logits q·k/√D, the first ``heads`` heads, each head
    supervised separately). Returns (mean loss, top-1 accuracy); zero loss if there are no pairs."""
    B, Hh, N, D = q.shape
    S = num_views
    P = N // S
    hw = P - patch_start
    if targets.shape != (B, S, hw, S):
        raise ValueError(f"targets {tuple(targets.shape)} do not match q ({B}, {S}, {hw}, {S})")
    heads = min(heads, Hh)
    qp = q[:, :heads].unflatten(2, (S, P))[:, :, :, patch_start:].float()  # [B,h,S,hw,D]
    kp = k[:, :heads].unflatten(2, (S, P))[:, :, :, patch_start:].float()
    has = (targets >= 0).any(-1)  # [B,S,hw]
    score = torch.rand(B, S, hw, device=q.device, generator=generator) + has.float()
    Q = min(queries, hw)
    sel = score.topk(Q, dim=-1).indices  # [B,S,Q]: valid patches first, random among them
    tg = torch.gather(targets, 2, sel[..., None].expand(B, S, Q, S))  # [B,S,Q,S]
    qs = torch.gather(qp, 3, sel[:, None, :, :, None].expand(B, heads, S, Q, D))
    logits = torch.einsum("bhiqd,bhjpd->bhiqjp", qs, kp) / math.sqrt(D)  # [B,h,S,Q,S,hw]
    tgt = tg[:, None].expand(B, heads, S, Q, S)
    mask = tgt >= 0
    if not bool(mask.any()):
        zero = logits.sum() * 0.0
        return zero, zero.detach()
    lg = logits[mask]  # [M, hw]
    t = tgt[mask]
    loss = F.cross_entropy(lg, t)
    acc = (lg.detach().argmax(-1) == t).float().mean()
    return loss, acc
