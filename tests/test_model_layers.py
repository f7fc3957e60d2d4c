"""Shared model layers (DINOv2 pieces, DPT trunk) against the behaviour documented in
architectures.md §0 — the parts the VGGT parity data do not isolate (DA3's policies, flags)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lite3r.models.layers.dinov2 import DinoVisionTransformer, interpolate_pos_embed
from lite3r.models.layers.dpt import (
    DPTBase,
    FusionBlock,
    ResidualConvUnit,
    activate,
    uv_position_embedding,
)


@pytest.fixture
def table():
    torch.manual_seed(0)
    return torch.randn(1, 1 + 37 * 37, 8)


def test_pos_embed_skipped_only_for_the_native_grid(table):
    assert interpolate_pos_embed(table, (37, 37), antialias=True) is table
    assert interpolate_pos_embed(table, (37, 37), antialias=False, offset=0.1) is table
    out = interpolate_pos_embed(table, (36, 38), antialias=True)
    assert out.shape == (1, 1 + 36 * 38, 8)
    torch.testing.assert_close(out[:, 0], table[:, 0])  # the cls row is kept


def test_pos_embed_policies(table):
    grid = table[:, 1:].reshape(1, 37, 37, 8).permute(0, 3, 1, 2)
    h, w = 24, 40
    vggt = interpolate_pos_embed(table, (h, w), antialias=True)
    ref = F.interpolate(grid, size=(h, w), mode="bicubic", antialias=True)
    torch.testing.assert_close(vggt[:, 1:], ref.permute(0, 2, 3, 1).reshape(1, h * w, 8))
    da3 = interpolate_pos_embed(table, (h, w), antialias=False, offset=0.1)
    ref = F.interpolate(grid, scale_factor=((h + 0.1) / 37, (w + 0.1) / 37), mode="bicubic", antialias=False)
    torch.testing.assert_close(da3[:, 1:], ref.permute(0, 2, 3, 1).reshape(1, h * w, 8))
    by_size = F.interpolate(grid, size=(h, w), mode="bicubic", antialias=False)
    assert not torch.allclose(da3[:, 1:], by_size.permute(0, 2, 3, 1).reshape(1, h * w, 8), atol=1e-3)
    assert not torch.allclose(vggt, da3, atol=1e-3)


def test_pos_embed_is_float32_under_half_inputs(table):
    out = interpolate_pos_embed(table.to(torch.bfloat16), (20, 30), antialias=True)
    assert out.dtype == torch.float32


def test_dino_token_order_and_registers():
    torch.manual_seed(0)
    vit = DinoVisionTransformer(img_size=56, embed_dim=16, depth=1, num_heads=2, num_register_tokens=3)
    with torch.no_grad():
        vit.register_tokens.fill_(7.0)
        tokens = vit.prepare_tokens(torch.rand(2, 3, 42, 70))
    assert tokens.shape == (2, 1 + 3 + 15, 16)
    assert torch.all(tokens[:, 1:4] == 7.0)  # registers right after cls, without position embedding
    assert vit.num_special_tokens == 4
    assert set(vit.state_dict()) >= {
        "cls_token",
        "pos_embed",
        "register_tokens",
        "patch_embed.proj.weight",
        "norm.weight",
    }
    assert "mask_token" not in vit.state_dict()
    no_reg = DinoVisionTransformer(img_size=56, embed_dim=16, depth=1, num_heads=2, final_norm_eps=1e-5)
    assert "register_tokens" not in no_reg.state_dict() and no_reg.norm.eps == 1e-5


def test_residual_unit_skip_relu_flag():
    torch.manual_seed(0)
    vggt = ResidualConvUnit(4, skip_relu=True)
    da3 = ResidualConvUnit(4, skip_relu=False)
    da3.load_state_dict(vggt.state_dict())
    x = torch.randn(1, 4, 5, 6)
    x0 = x.clone()
    f = vggt.conv2(F.relu(vggt.conv1(F.relu(x))))
    torch.testing.assert_close(vggt(x), f + F.relu(x))  # VGGT: the in-place ReLU turned the skip into relu(x)
    torch.testing.assert_close(da3(x), f + x)
    assert torch.equal(x, x0)  # the input is never modified


def test_fusion_block_sizes():
    blk = FusionBlock(4, skip_relu=True)
    x = torch.randn(1, 4, 3, 5)
    assert blk(x, x).shape == (1, 4, 6, 10)  # integer doubling
    assert blk(x, x, size=(7, 9)).shape == (1, 4, 7, 9)
    top = FusionBlock(4, skip_relu=True, has_lateral=False)
    assert not hasattr(top, "resConfUnit1")
    with pytest.raises(ValueError):
        top(x, x)


def test_uv_embedding_layout():
    H, W, h, w, c = 42, 70, 3, 5, 8
    pe = uv_position_embedding(h, w, c, (H, W))
    a = W / H
    sx, sy = a / math.sqrt(a * a + 1), 1 / math.sqrt(a * a + 1)
    xs = torch.linspace(-sx * (w - 1) / w, sx * (w - 1) / w, w, dtype=torch.float64)
    ys = torch.linspace(-sy * (h - 1) / h, sy * (h - 1) / h, h, dtype=torch.float64)
    omega = 100.0 ** (-torch.arange(c // 4, dtype=torch.float64) / (c // 4))
    for r in range(h):
        for col in range(w):
            ex = torch.cat([torch.sin(xs[col] * omega), torch.cos(xs[col] * omega)])
            ey = torch.cat([torch.sin(ys[r] * omega), torch.cos(ys[r] * omega)])
            torch.testing.assert_close(pe[:, r, col].double(), 0.1 * torch.cat([ex, ey]), atol=1e-7, rtol=0)
    pe32 = uv_position_embedding(h, w, c, (H, W), compute_dtype=torch.float32)
    torch.testing.assert_close(pe32, pe, atol=1e-6, rtol=0)


def test_activations():
    x = torch.tensor([-2.0, 0.0, 1.5])
    torch.testing.assert_close(activate(x, "expp1"), 1 + x.exp())
    torch.testing.assert_close(activate(x, "inv_log"), torch.sign(x) * (x.abs().exp() - 1))
    with pytest.raises(ValueError):
        activate(x, "softplus")


def test_dpt_level_shapes_odd_grid():
    dpt = DPTBase(dim_in=16, features=8, out_channels=(4, 8, 8, 8), output_dim=3)
    tokens = [torch.randn(2, 5 * 7, 16) for _ in range(4)]
    levels = dpt.levels(tokens, (5, 7), (70, 98))
    assert [tuple(t.shape[-2:]) for t in levels] == [(20, 28), (10, 14), (5, 7), (3, 4)]  # ceil for level 4
    fused = dpt.fuse(dpt.scratch_levels(levels))
    assert fused[-1].shape[-2:] == (40, 56)
    assert dpt.output_map(fused[-1], (70, 98)).shape == (2, 3, 70, 98)
