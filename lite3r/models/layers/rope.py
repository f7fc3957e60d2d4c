"""2-D rotary position embedding shared by VGGT and DA3 (base frequency 100).

Layout (architectures.md §0): the first half of head_dim is rotated by the row y, the second half by
the column x; within a half of F features the pairs are (j, j + F/2) ("rotate half"), with F/2
frequencies 100^(-2j/F) whose table is duplicated. Special tokens sit at (0, 0) (identity rotation),
the patch in row r, column c at (r + 1, c + 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class RopeTables:
    """cos/sin for every token, [B, 1, N, D] in float32; computed once per forward and shared by all
    blocks that use the same positions (48 blocks in VGGT), instead of once per block."""

    cos: torch.Tensor
    sin: torch.Tensor


class RotaryPositionEmbedding2D(nn.Module):
    def __init__(self, base: float = 100.0) -> None:
        super().__init__()
        self.base = float(base)

    def tables(self, pos: torch.Tensor, head_dim: int) -> RopeTables:
        """cos/sin tables for integer positions ``pos`` [B, N, 2] (y, x)."""
        if head_dim % 4:
            raise ValueError(f"2-D RoPE needs head_dim divisible by 4, got {head_dim}")
        half = head_dim // 2
        inv_freq = 1.0 / (
            self.base ** (torch.arange(0, half, 2, device=pos.device, dtype=torch.float32) / half)
        )
        parts = []
        for axis in (0, 1):  # y rotates the first half, x the second
            ang = pos[..., axis].to(torch.float32)[..., None] * inv_freq  # [B, N, half/2]
            parts.append(torch.cat([ang, ang], dim=-1))  # duplicated table → [B, N, half]
        ang = torch.cat(parts, dim=-1)[:, None]  # [B, 1, N, D]
        return RopeTables(cos=ang.cos(), sin=ang.sin())

    @staticmethod
    def _rotate_half_per_axis(x: torch.Tensor) -> torch.Tensor:
        # x: [..., D] seen as [..., 2 axes, 2 halves, D/4]; (a, b) → (-b, a) within each axis half.
        shp = x.shape
        x = x.reshape(*shp[:-1], 2, 2, shp[-1] // 4)
        x = torch.stack((-x[..., 1, :], x[..., 0, :]), dim=-2)
        return x.reshape(shp)

    def forward(self, x: torch.Tensor, pos: torch.Tensor | RopeTables) -> torch.Tensor:
        """Rotate q or k, [B, H, N, D]. Computed in float32, returned in x's dtype."""
        t = pos if isinstance(pos, RopeTables) else self.tables(pos, x.shape[-1])
        xf = x.float()
        out = xf * t.cos + self._rotate_half_per_axis(xf) * t.sin
        return out.to(x.dtype)


def patch_positions(
    batch: int, h: int, w: int, num_special: int, device: torch.device | None = None
) -> torch.Tensor:
    """Positions [batch, num_special + h*w, 2]: special tokens at (0, 0), patch (r, c) at (r+1, c+1)."""
    ys = torch.arange(1, h + 1, device=device)
    xs = torch.arange(1, w + 1, device=device)
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(h * w, 2)
    special = torch.zeros(num_special, 2, dtype=grid.dtype, device=device)
    return torch.cat([special, grid], dim=0)[None].expand(batch, -1, -1)
