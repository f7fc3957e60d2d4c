"""DA3 camera decoder and encoder (architectures.md §2.5, §2.7).

- :class:`CameraDec` (``cam_dec``, the default pose path): per view, no attention — Linear → ReLU →
  Linear → ReLU on the last out layer's camera token, then ``fc_t`` (3), ``fc_qvec`` (4, xyzw),
  ``fc_fov`` (2, ReLU), in the module's dtype (float32 in every precision mode: it is a head). The
  encoding is **camera→world** (world = the reference view); :func:`decode_pose` turns it into
  world→camera extrinsics and pixel intrinsics (tan clamped ≥ 1e-6).
- :class:`CameraEnc` (``cam_enc``, pose-conditioned mode only): given world→camera extrinsics and
  pixel intrinsics → c2w → :func:`encode_pose` → ``pose_branch`` (9 → C/2 → C, GELU) → ``token_norm``
  → ``trunk`` (attention across the S views) → ``trunk_norm`` → [B, S, C] tokens for the backbone.

The encoder input uses the same layout as the decoder's output (slot 7 = 2·atan((H/2)/fy), slot 8 =
2·atan((W/2)/fx)), as the parity data of the reference commit confirm. (A later upstream revision of
``extri_intri_to_pose_encoding`` stores the two FoVs the other way round; checked against the parity
data, that layout moves the encoder tokens by 0.34 of their scale: it is not the reference commit's.)
"""

from __future__ import annotations

import torch
from torch import nn

from lite3r.geometry import (
    closed_form_inverse_se3,
    extri_intri_to_pose_encoding,
    pose_encoding_to_extri_intri,
)
from lite3r.models.da3.config import CameraDecConfig, CameraEncConfig
from lite3r.models.layers.block import Block
from lite3r.models.layers.dinov2 import init_transformer_weights

POSE_ENCODING_DIM = 9  # T (3), quaternion xyzw (4), two FoVs
MIN_TAN = 1e-6
HEAD_NORM_EPS = 1e-5


class CameraDec(nn.Module):
    def __init__(self, cfg: CameraDecConfig) -> None:
        super().__init__()
        d = cfg.dim_in
        self.backbone = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d), nn.ReLU())
        self.fc_t = nn.Linear(d, 3)
        self.fc_qvec = nn.Linear(d, 4)
        self.fc_fov = nn.Sequential(nn.Linear(d, 2), nn.ReLU())

    def forward(self, camera_token: torch.Tensor) -> torch.Tensor:
        """camera_token [B, S, dim_in] → camera→world pose encoding [B, S, 9] (float32)."""
        feat = self.backbone(camera_token.to(self.fc_t.weight.dtype))
        return torch.cat([self.fc_t(feat), self.fc_qvec(feat), self.fc_fov(feat)], dim=-1).float()


def decode_pose(pose_enc: torch.Tensor, image_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """DA3 camera→world encoding [..., 9] → (world→camera extrinsics [..., 3, 4], intrinsics [..., 3, 3])."""
    c2w, intrinsics = pose_encoding_to_extri_intri(pose_enc, image_hw, min_tan=MIN_TAN)
    return closed_form_inverse_se3(c2w), intrinsics


def encode_pose(
    extrinsics: torch.Tensor, intrinsics: torch.Tensor, image_hw: tuple[int, int]
) -> torch.Tensor:
    """World→camera extrinsics [..., 3|4, 4] and pixel intrinsics [..., 3, 3] → the camera encoder's
    input [..., 9] = [T_c2w, q_c2w (xyzw), fov_h, fov_w], float32 (camera→world, like the decoder)."""
    c2w = closed_form_inverse_se3(extrinsics.float())
    return extri_intri_to_pose_encoding(c2w, intrinsics.float(), image_hw).float()


class PoseBranch(nn.Module):
    """Linear(9 → C/2) → GELU → Linear(C/2 → C) (``pose_branch.fc1`` / ``fc2``)."""

    def __init__(self, dim_in: int, hidden: int, dim_out: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim_in, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class CameraEnc(nn.Module):
    def __init__(self, cfg: CameraEncConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.dim_out
        self.trunk = nn.Sequential(
            *[
                Block(
                    d,
                    cfg.num_heads,
                    mlp_ratio=cfg.mlp_ratio,
                    norm_eps=HEAD_NORM_EPS,
                    layer_scale_init=cfg.layer_scale_init,
                )
                for _ in range(cfg.trunk_depth)
            ]
        )
        self.token_norm = nn.LayerNorm(d, eps=HEAD_NORM_EPS)
        self.trunk_norm = nn.LayerNorm(d, eps=HEAD_NORM_EPS)
        self.pose_branch = PoseBranch(POSE_ENCODING_DIM, d // 2, d)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        if not self.token_norm.weight.is_meta:
            init_transformer_weights(self, self.cfg.layer_scale_init)

    def forward(
        self, extrinsics: torch.Tensor, intrinsics: torch.Tensor, image_hw: tuple[int, int]
    ) -> torch.Tensor:
        """extrinsics [B, S, 3|4, 4] world→camera, intrinsics [B, S, 3, 3] pixels → tokens [B, S, C]
        in the module's dtype."""
        enc = encode_pose(extrinsics, intrinsics, image_hw).to(self.token_norm.weight.dtype)
        x = self.token_norm(self.pose_branch(enc))
        for blk in self.trunk:
            x = blk(x, frame_len=1)  # one token per view: attention across the S views
        return self.trunk_norm(x)
