"""DA3 backbone: DINOv2 ViT with per-view / cross-view alternation (architectures.md §2.3).

Per view: patch embedding, cls prepended, the 37×37 pos-embed added (bicubic, antialias off,
``scale_factor=(n+0.1)/37``) → x [B, S, 1 + h·w, C]. Block i:

- ``i < alt_start``: per-view attention on [B·S, N, C];
- at ``i = alt_start − 1`` (S ≥ 3, no given cameras): reference-view selection on the cls tokens and
  reordering of the views, reference first (:mod:`lite3r.models.da3.ref_view`);
- at ``i = alt_start``, before the block: token 0 of every view is replaced by the camera token (slot 0
  for the reference/first view, slot 1 for the others) or by the camera-encoder tokens;
- ``i ≥ alt_start``: even i per view, odd i across views on [B, S·N, C].

Blocks ``≥ qknorm_start`` have qk-norm, blocks ``≥ rope_start`` 2-D RoPE: per-view blocks with the
patch grid positions (cls (0, 0), patch (r+1, c+1)), cross-view blocks with every patch at (1, 1)
(RoPE then only separates cls from patches). At each out layer the output is
concat(latest per-view output, current output) along channels; only the second half goes through the
final norm, token 0 of the raw concatenation is the layer's camera token, and the views are put back
in their original order. Only the out layers are kept (memory-lean). With ``kept_features_fp8`` set
("kernel" | "reference", by ``lite3r.quant.fp8_features.set_feature_storage``; None by default) the
patch features of each out layer are stored as FP8 (per token) as they are produced; the camera tokens
([B, S, 2C], small) stay in the trunk dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lite3r.models.da3.config import BackboneConfig
from lite3r.models.da3.ref_view import (
    MIN_VIEWS,
    gather_views,
    inverse_order,
    reference_order,
    select_reference_view,
)
from lite3r.models.layers.block import Block
from lite3r.models.layers.dinov2 import DinoVisionTransformer
from lite3r.models.layers.rope import RopeTables, RotaryPositionEmbedding2D, patch_positions

DINO_BLOCK_EPS = 1e-6
FINAL_NORM_EPS = 1e-5
QK_NORM_EPS = 1e-5
POS_EMBED_OFFSET = 0.1  # DINOv2's legacy interpolate_offset, kept by DA3
CAMERA_TOKEN_INIT_STD = 1.0  # the reference initialises camera_token with randn


@dataclass
class BackboneOutput:
    """The out layers of one backbone pass, in the caller's view order.

    ``features[k]`` [B, S, h·w, 2C] = (raw per-view half ‖ final-normed cross-view half), patch
    tokens only; ``camera_tokens[k]`` [B, S, 2C] = token 0 of the raw concatenation; ``ref_view``
    [B] the selected reference view, or None when no selection ran.
    """

    features: list[torch.Tensor]
    camera_tokens: list[torch.Tensor]
    ref_view: torch.Tensor | None


class DA3VisionTransformer(DinoVisionTransformer):
    """``backbone.pretrained``: DINOv2 tokens and blocks plus ``camera_token`` [1, 2, C]; key names and
    order equal the official file's (cls_token, camera_token, pos_embed, patch_embed, blocks, norm)."""

    def __init__(self, cfg: BackboneConfig) -> None:
        rope = RotaryPositionEmbedding2D(base=cfg.rope_freq)

        def block_fn(i: int) -> Block:
            return Block(
                cfg.embed_dim,
                cfg.num_heads,
                mlp_ratio=cfg.mlp_ratio,
                qkv_bias=cfg.qkv_bias,
                proj_bias=cfg.proj_bias,
                ffn_bias=cfg.ffn_bias,
                norm_eps=DINO_BLOCK_EPS,
                qk_norm=i >= cfg.qknorm_start,
                qk_norm_eps=QK_NORM_EPS,
                layer_scale_init=cfg.layer_scale_init,
                rope=rope if i >= cfg.rope_start else None,
            )

        super().__init__(
            img_size=cfg.img_size,
            patch_size=cfg.patch_size,
            embed_dim=cfg.embed_dim,
            depth=cfg.depth,
            num_heads=cfg.num_heads,
            mlp_ratio=cfg.mlp_ratio,
            num_register_tokens=0,
            layer_scale_init=cfg.layer_scale_init,
            qkv_bias=cfg.qkv_bias,
            proj_bias=cfg.proj_bias,
            ffn_bias=cfg.ffn_bias,
            norm_eps=DINO_BLOCK_EPS,
            final_norm_eps=FINAL_NORM_EPS,
            interpolate_antialias=False,
            interpolate_offset=POS_EMBED_OFFSET,
            block_fn=block_fn,
        )
        self.rope = rope  # shared by the blocks ≥ rope_start; no parameters, no state-dict keys
        # camera_token sits between cls_token and pos_embed in the official state dict.
        pos_embed = self._parameters.pop("pos_embed")
        self.camera_token = nn.Parameter(torch.zeros(1, 2, cfg.embed_dim))
        self._parameters["pos_embed"] = pos_embed
        self.reset_camera_token()

    @torch.no_grad()
    def reset_camera_token(self) -> None:
        if not self.camera_token.is_meta:
            nn.init.normal_(self.camera_token, std=CAMERA_TOKEN_INIT_STD)

    @torch.no_grad()
    def init_weights(self) -> None:
        super().init_weights()
        if "camera_token" in self._parameters:
            self.reset_camera_token()

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        raise TypeError(
            "DA3's ViT has no stand-alone per-view forward (its blocks alternate per-view and cross-view "
            "attention); call the enclosing DA3Backbone"
        )

    forward = forward_features


class DA3Backbone(nn.Module):
    """``backbone``: the alternating loop around ``pretrained`` (see the module docstring)."""

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.pretrained = DA3VisionTransformer(cfg)
        self.out_layers = tuple(cfg.out_layers)
        self.alt_start = cfg.alt_start
        self.rope_start = cfg.rope_start
        self.depth = cfg.depth
        self.patch_size = cfg.patch_size
        self.embed_dim = cfg.embed_dim
        self.kept_features_fp8: str | None = None  # memory option, see the module doc

    def is_cross_view(self, i: int) -> bool:
        """Block i attends across all views of a sequence (odd blocks from ``alt_start`` on)."""
        return i >= self.alt_start and i % 2 == 1

    def rope_tables(self, grid_hw: tuple[int, int], views: int, device) -> tuple[RopeTables, RopeTables]:
        """(per-view [1, 1, N, D], cross-view [1, 1, S·N, D]) tables. Per view: cls (0, 0), patches
        (r+1, c+1); cross-view: cls (0, 0) and every patch (1, 1), the same in every view."""
        head_dim = self.embed_dim // self.cfg.num_heads
        rope = self.pretrained.rope
        pos = patch_positions(1, grid_hw[0], grid_hw[1], 1, device=device)
        local = rope.tables(pos, head_dim)
        flat = torch.ones_like(pos)
        flat[:, 0] = 0
        one = rope.tables(flat, head_dim)
        cross = RopeTables(cos=one.cos.repeat(1, 1, views, 1), sin=one.sin.repeat(1, 1, views, 1))
        return local, cross

    def forward(
        self,
        images: torch.Tensor,
        cam_tokens: torch.Tensor | None = None,
        ref_view_strategy: str = "saddle_balanced",
    ) -> BackboneOutput:
        """images [B, S, 3, H, W] (ImageNet-normalised) → :class:`BackboneOutput`.

        ``cam_tokens`` [B, S, C]: camera-encoder tokens (pose-conditioned mode; no view selection).
        """
        B, S, _, H, W = images.shape
        vit = self.pretrained
        x = vit.prepare_tokens(images.reshape(B * S, 3, H, W))
        N, C = x.shape[1], x.shape[2]
        x = x.view(B, S, N, C)
        grid_hw = (H // self.patch_size, W // self.patch_size)
        rope_local, rope_cross = self.rope_tables(grid_hw, S, images.device)
        local_x = x
        order = restore = ref = None
        features: list[torch.Tensor] = []
        camera_tokens: list[torch.Tensor] = []
        for i, blk in enumerate(vit.blocks):
            if i == self.alt_start - 1 and S >= MIN_VIEWS and cam_tokens is None:
                ref = select_reference_view(x[:, :, 0], ref_view_strategy)
                order = reference_order(ref, S)
                restore = inverse_order(order)
                reordered = gather_views(x, order)
                local_x = reordered if local_x is x else gather_views(local_x, order)
                x = reordered
            if i == self.alt_start:
                # the reference overwrites token 0 in place, so a per-view output that *is* x sees it too
                slot = self._camera_slot(B, S, cam_tokens, x.dtype)[:, :, None]
                x_new = torch.cat([slot, x[:, :, 1:]], dim=2)
                local_x = x_new if local_x is x else local_x
                x = x_new
            use_rope = i >= self.rope_start
            if self.is_cross_view(i):
                out = blk(x.reshape(B, S * N, C), pos=rope_cross if use_rope else None, frame_len=N)
                x = out.view(B, S, N, C)
            else:
                out = blk(x.reshape(B * S, N, C), pos=rope_local if use_rope else None, frame_len=N)
                x = local_x = out.view(B, S, N, C)
            if i in self.out_layers:
                cam = torch.cat([local_x[:, :, 0], x[:, :, 0]], dim=-1)
                feat = torch.cat([local_x[:, :, 1:], vit.norm(x[:, :, 1:])], dim=-1)
                if restore is not None:
                    cam, feat = gather_views(cam, restore), gather_views(feat, restore)
                if self.kept_features_fp8 is not None:  # memory option: patch features in FP8
                    from lite3r.quant.fp8_features import quantize_tensor

                    feat = quantize_tensor(feat, use_kernel=self.kept_features_fp8 == "kernel")
                camera_tokens.append(cam)
                features.append(feat)
        return BackboneOutput(features, camera_tokens, ref)

    def _camera_slot(self, B: int, S: int, cam_tokens: torch.Tensor | None, dtype) -> torch.Tensor:
        """[B, S, C] tokens for slot 0 of every view at ``alt_start``."""
        if cam_tokens is not None:
            if tuple(cam_tokens.shape) != (B, S, self.embed_dim):
                raise ValueError(
                    f"camera-encoder tokens must be [B, S, C] = {[B, S, self.embed_dim]}, "
                    f"got {list(cam_tokens.shape)}"
                )
            return cam_tokens.to(dtype)
        tok = self.pretrained.camera_token.to(dtype)
        return torch.cat([tok[:, :1].expand(B, 1, -1), tok[:, 1:].expand(B, S - 1, -1)], dim=1)
