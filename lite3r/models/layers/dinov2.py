"""DINOv2 ViT pieces used by both backbones (architectures.md §0, "DINOv2 patch embedding").

- :class:`PatchEmbed`: Conv2d(k = s = patch) → row-major tokens (``patch_embed.proj``).
- :func:`interpolate_pos_embed`: the learned M×M position table resized to the patch grid with either
  policy of the references — VGGT: bicubic, antialias=True, by explicit size; DA3: bicubic,
  antialias=False, by ``scale_factor=((h+offset)/M, (w+offset)/M)`` — in float32, skipped only when the
  grid is exactly M×M.
- :class:`DinoVisionTransformer`: cls token, optional registers inserted *after* the position
  embedding, a per-view block loop and the final norm. VGGT's ``aggregator.patch_embed`` is one of
  these; DA3 builds its alternating backbone from the same tokens/pos-embed code and its own blocks
  (``block_fn``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from lite3r.errors import InputError
from lite3r.models.layers.block import Block, LayerScale


class PatchEmbed(nn.Module):
    """Non-overlapping patches → tokens [N, h·w, C], token index r·w + c."""

    def __init__(self, patch_size: int = 14, in_chans: int = 3, embed_dim: int = 1024) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        p = self.patch_size
        if H % p or W % p:
            raise InputError(
                f"image size {H}×{W} is not a multiple of the patch size {p}",
                hint="resize or crop the images to multiples of 14 (the preprocessing does this)",
            )
        return self.proj(x).flatten(2).transpose(1, 2)


def interpolate_pos_embed(
    pos_embed: torch.Tensor,
    grid_hw: tuple[int, int],
    antialias: bool,
    offset: float = 0.0,
) -> torch.Tensor:
    """Resize a [1, 1 + M², C] table (cls row first) to the patch grid (h, w) → [1, 1 + h·w, C].

    ``offset == 0``: ``size=(h, w)`` (VGGT); ``offset > 0``: ``scale_factor=((h+offset)/M,
    (w+offset)/M)``, which PyTorch then uses for the sampling grid (DA3's legacy offset 0.1). Bicubic in
    float32 (the result is float32); the cls row is kept. Returned unchanged when (h, w) == (M, M).
    """
    h, w = grid_hw
    n = pos_embed.shape[1] - 1
    M = math.isqrt(n)
    if n != M * M:
        raise ValueError(f"position table has {n} patch rows, not a square grid")
    if h == M and w == M:
        return pos_embed
    pe = pos_embed.float()
    dim = pe.shape[-1]
    grid = pe[:, 1:].reshape(1, M, M, dim).permute(0, 3, 1, 2)
    if offset:
        kwargs = {"scale_factor": ((h + offset) / M, (w + offset) / M)}
    else:
        kwargs = {"size": (h, w)}
    grid = F.interpolate(grid, mode="bicubic", antialias=antialias, **kwargs)
    if tuple(grid.shape[-2:]) != (h, w):
        raise RuntimeError(f"pos-embed interpolation gave {tuple(grid.shape[-2:])}, expected {(h, w)}")
    grid = grid.permute(0, 2, 3, 1).reshape(1, h * w, dim)
    return torch.cat([pe[:, :1], grid], dim=1)


class DinoVisionTransformer(nn.Module):
    """DINOv2 ViT: tokens [cls, registers…, patches…] → blocks (attention within each image) → norm.

    Parameter names are DINOv2's: ``cls_token``, ``pos_embed``, ``register_tokens`` (only with
    registers), ``patch_embed.proj``, ``blocks.{i}``, ``norm``. No ``mask_token`` (training only; the
    loader drops it). ``block_fn(i)`` builds block i (default: the plain DINOv2 block, eps
    ``norm_eps``, no qk-norm, no RoPE).
    """

    def __init__(
        self,
        img_size: int = 518,
        patch_size: int = 14,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        num_register_tokens: int = 0,
        layer_scale_init: float | None = 1.0,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        ffn_bias: bool = True,
        norm_eps: float = 1e-6,
        final_norm_eps: float = 1e-6,
        interpolate_antialias: bool = True,
        interpolate_offset: float = 0.0,
        block_fn: Callable[[int], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        self.embed_dim = embed_dim
        self.patch_size = patch_size
        self.num_register_tokens = num_register_tokens
        self.interpolate_antialias = interpolate_antialias
        self.interpolate_offset = interpolate_offset
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, 3, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, embed_dim))
        if num_register_tokens:
            self.register_tokens = nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim))
        else:
            self.register_tokens = None
        if block_fn is None:

            def block_fn(i: int) -> nn.Module:
                return Block(
                    embed_dim,
                    num_heads,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    proj_bias=proj_bias,
                    ffn_bias=ffn_bias,
                    norm_eps=norm_eps,
                    layer_scale_init=layer_scale_init,
                )

        self.blocks = nn.ModuleList([block_fn(i) for i in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=final_norm_eps)
        self.layer_scale_init = layer_scale_init
        self.init_weights()

    @property
    def num_special_tokens(self) -> int:
        """cls + registers, at the start of every image's token sequence."""
        return 1 + self.num_register_tokens

    def grid_hw(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        return image_hw[0] // self.patch_size, image_hw[1] // self.patch_size

    def pos_embed_for(self, grid_hw: tuple[int, int]) -> torch.Tensor:
        """The position table [1, 1 + h·w, C] for a patch grid, with this model's policy."""
        return interpolate_pos_embed(
            self.pos_embed, grid_hw, antialias=self.interpolate_antialias, offset=self.interpolate_offset
        )

    def prepare_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """images [N, 3, H, W] → [N, 1 + R + h·w, C]: patches, cls prepended, pos-embed added, then the
        registers inserted after cls (they get no position embedding)."""
        x = self.patch_embed(images)
        n = x.shape[0]
        x = torch.cat([self.cls_token.expand(n, -1, -1).to(x.dtype), x], dim=1)
        x = x + self.pos_embed_for(self.grid_hw(images.shape[-2:])).to(x.dtype)
        if self.register_tokens is not None:
            reg = self.register_tokens.expand(n, -1, -1).to(x.dtype)
            x = torch.cat([x[:, :1], reg, x[:, 1:]], dim=1)
        return x

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """All tokens after the blocks and the final norm, [N, 1 + R + h·w, C]."""
        x = self.prepare_tokens(images)
        frame_len = x.shape[1]
        for blk in self.blocks:
            x = blk(x, frame_len=frame_len)
        return self.norm(x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Final-normed patch tokens [N, h·w, C] (what VGGT's aggregator consumes)."""
        return self.forward_features(images)[:, self.num_special_tokens :]

    @torch.no_grad()
    def init_weights(self) -> None:
        """DINOv2's initialisation: pos-embed trunc-normal 0.02, cls/registers normal 1e-6, linears
        trunc-normal 0.02 with zero bias, LayerNorms 1/0, LayerScale at its init value."""
        if self.pos_embed.is_meta:
            return
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1e-6)
        init_transformer_weights(self.blocks, self.layer_scale_init)
        self.norm.reset_parameters()
        self.patch_embed.proj.reset_parameters()


@torch.no_grad()
def init_transformer_weights(module: nn.Module, layer_scale_init: float | None) -> None:
    """timm-style ViT init for every submodule: Linear trunc-normal(0.02) with zero bias, LayerNorm
    (1, 0), LayerScale = ``layer_scale_init``."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, LayerScale) and layer_scale_init is not None:
            m.gamma.fill_(layer_scale_init)
