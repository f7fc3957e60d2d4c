"""VGGT camera head (architectures.md §1.6): iterative refinement of the absT_quaR_FoV encoding.

t = token_norm(camera token of the last layer) [B, S, 2C]. Each of ``num_iterations`` steps embeds the
raw (un-activated) accumulated encoding — the learned ``empty_pose_tokens`` at first — modulates the
*same* t with an adaLN (shift, scale, gate), runs the trunk (attention across the S camera tokens of a
sequence), and adds ``pose_branch(trunk_norm(·))`` to the encoding. Every step's activated encoding is
returned (T linear, quaternion linear, FoV ReLU).
"""

from __future__ import annotations

import torch
from torch import nn

from lite3r.models.layers.block import Block
from lite3r.models.layers.dinov2 import init_transformer_weights
from lite3r.models.layers.dpt import activate
from lite3r.models.vggt.config import CameraHeadConfig

POSE_ENCODING_DIM = 9  # T (3), quaternion xyzw (4), fov_h, fov_w


class PoseBranch(nn.Module):
    """Linear(C → C/2) → GELU → Linear(C/2 → 9) (``pose_branch.fc1`` / ``fc2``)."""

    def __init__(self, dim: int, out_dim: int = POSE_ENCODING_DIM) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, dim // 2)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(dim // 2, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class CameraHead(nn.Module):
    def __init__(self, cfg: CameraHeadConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dim = cfg.dim_in
        self.trunk = nn.Sequential(
            *[
                Block(
                    dim,
                    cfg.num_heads,
                    mlp_ratio=cfg.mlp_ratio,
                    norm_eps=1e-5,
                    layer_scale_init=cfg.layer_scale_init,
                )
                for _ in range(cfg.trunk_depth)
            ]
        )
        self.token_norm = nn.LayerNorm(dim, eps=1e-5)
        self.trunk_norm = nn.LayerNorm(dim, eps=1e-5)
        self.empty_pose_tokens = nn.Parameter(torch.zeros(1, 1, POSE_ENCODING_DIM))
        self.embed_pose = nn.Linear(POSE_ENCODING_DIM, dim)
        self.poseLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 3 * dim))
        self.adaln_norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.pose_branch = PoseBranch(dim)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        if self.empty_pose_tokens.is_meta:
            return
        init_transformer_weights(self, self.cfg.layer_scale_init)
        nn.init.zeros_(self.empty_pose_tokens)

    def activate(self, enc: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        return torch.cat(
            [
                activate(enc[..., :3], c.trans_act),
                activate(enc[..., 3:7], c.quat_act),
                activate(enc[..., 7:], c.fl_act),
            ],
            dim=-1,
        )

    def forward(self, last_layer: torch.Tensor, num_iterations: int | None = None) -> list[torch.Tensor]:
        """last_layer [B, S, P, 2C] (the aggregator's last output; only token 0 is read) → list of
        ``num_iterations`` activated encodings [B, S, 9]. The input is cast to the head's dtype."""
        iters = self.cfg.num_iterations if num_iterations is None else num_iterations
        t = self.token_norm(last_layer[:, :, 0].to(self.token_norm.weight.dtype))  # [B, S, C]
        B, S, _ = t.shape
        t_ln = self.adaln_norm(t)  # the same normalised tokens modulate every iteration
        enc = None
        out = []
        for _ in range(iters):
            if enc is None:
                m = self.embed_pose(self.empty_pose_tokens.expand(B, S, -1))
            else:
                m = self.embed_pose(enc.detach())
            shift, scale, gate = self.poseLN_modulation(m).chunk(3, dim=-1)
            u = gate * (t_ln * (1 + scale) + shift) + t
            for blk in self.trunk:
                u = blk(u, frame_len=1)  # one token per view: attention across the S views
            delta = self.pose_branch(self.trunk_norm(u))
            enc = delta if enc is None else enc + delta
            out.append(self.activate(enc))
        return out
