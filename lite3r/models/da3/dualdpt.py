"""DA3's DualDPT head (architectures.md §2.4): the shared DPT trunk of ``layers/dpt.py`` (plain x + f(x)
residual units, UV embedding in float32) with two fusion chains on the same ``layer{k}_rn`` maps.

- Main branch: ``refinenet1-4`` → ``output_conv1`` → bilinear to (H, W) → UV embedding →
  ``output_conv2`` → depth = exp(c₀), depth_conf = 1 + exp(c₁), [B, S, H, W].
- Ray branch: ``refinenet1-4_aux`` → of the four pyramid outputs only the finest is used:
  ``output_conv1_aux[3]`` (5 plain 3×3 convs, no activation) → UV embedding at its own size →
  ``output_conv2_aux[3]`` (3×3 conv → channels-last LayerNorm → ReLU → 1×1 conv to 7) → ray = c₀..₅
  (linear), ray_conf = 1 + exp(c₆), at 8h × 8w (not upsampled). ``output_conv1_aux[0..2]`` and
  ``output_conv2_aux[0..2]`` exist in the checkpoint but do not affect the outputs, so they are not run.

The ray branch runs only when asked (``rays=True``): depth and cameras do not need it. Frames are
processed in chunks (memory only; numerically identical).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lite3r.models.da3.config import DualDPTConfig
from lite3r.models.layers.dpt import DPTBase, FusionBlock, activate_head

HEAD_NORM_EPS = 1e-5
HIDDEN = 32  # output_conv2 / output_conv2_aux width
RAY_CHANNELS = 7  # direction (3), origin (3), confidence
AUX_LEVELS = 4
AUX_NECK_CONVS = 5


class Permute(nn.Module):
    """Dimension permutation as a module (keeps the reference's Sequential indices: LayerNorm at .2)."""

    def __init__(self, dims: Sequence[int]) -> None:
        super().__init__()
        self.dims = tuple(dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)


def aux_neck(features: int) -> nn.Sequential:
    """``output_conv1_aux[k]``: features → f/2 → f → f/2 → f → f/2, 3×3 convs without activations."""
    chans = [features, features // 2] * 3
    return nn.Sequential(
        *[
            nn.Conv2d(chans[j], chans[j + 1], kernel_size=3, stride=1, padding=1)
            for j in range(AUX_NECK_CONVS)
        ]
    )


def aux_output(in_channels: int) -> nn.Sequential:
    """``output_conv2_aux[k]``: 3×3 conv → LayerNorm over channels (channels-last) → ReLU → 1×1 conv."""
    return nn.Sequential(
        nn.Conv2d(in_channels, HIDDEN, kernel_size=3, stride=1, padding=1),
        Permute((0, 2, 3, 1)),
        nn.LayerNorm(HIDDEN, eps=HEAD_NORM_EPS),
        Permute((0, 3, 1, 2)),
        nn.ReLU(),
        nn.Conv2d(HIDDEN, RAY_CHANNELS, kernel_size=1, stride=1, padding=0),
    )


class DualDPT(DPTBase):
    def __init__(self, cfg: DualDPTConfig) -> None:
        super().__init__(
            dim_in=cfg.dim_in,
            features=cfg.features,
            out_channels=cfg.out_channels,
            output_dim=cfg.output_dim,
            patch_size=cfg.patch_size,
            pos_embed=True,
            skip_relu=False,
            uv_compute_dtype=torch.float32,
            norm_eps=HEAD_NORM_EPS,
        )
        self.cfg = cfg
        s = self.scratch
        for k in range(1, 5):
            setattr(s, f"refinenet{k}_aux", FusionBlock(cfg.features, skip_relu=False, has_lateral=k != 4))
        s.output_conv1_aux = nn.ModuleList([aux_neck(cfg.features) for _ in range(AUX_LEVELS)])
        s.output_conv2_aux = nn.ModuleList([aux_output(cfg.features // 2) for _ in range(AUX_LEVELS)])

    def forward(
        self,
        features: Sequence[torch.Tensor],
        image_hw: tuple[int, int],
        frames_chunk_size: int | None = 8,
        rays: bool = False,
    ) -> dict[str, torch.Tensor]:
        """features: 4 × [B, S, h·w, dim_in] (patch tokens) → {depth, depth_conf [B, S, H, W]} and,
        with ``rays``, {ray [B, S, 8h, 8w, 6], ray_conf [B, S, 8h, 8w]}; float32."""
        if len(features) != 4:
            raise ValueError(f"the DualDPT head takes 4 feature maps, got {len(features)}")
        S = features[0].shape[1]
        chunk = S if not frames_chunk_size or frames_chunk_size >= S else frames_chunk_size
        parts = [
            self._forward_frames(features, image_hw, s0, min(S, s0 + chunk), rays)
            for s0 in range(0, S, chunk)
        ]
        out = {}
        for key in parts[0]:
            t = parts[0][key] if len(parts) == 1 else torch.cat([p[key] for p in parts], dim=1)
            out[key] = t
        return out

    def _forward_frames(self, features, image_hw, s0: int, s1: int, rays: bool) -> dict[str, torch.Tensor]:
        H, W = image_hw
        patch_hw = (H // self.patch_size, W // self.patch_size)
        B = features[0].shape[0]
        n = s1 - s0
        tokens = [f[:, s0:s1].reshape(B * n, f.shape[-2], f.shape[-1]) for f in features]
        if rays:  # the auxiliary chain shares the main chain's layer{k}_rn maps
            rn = self.scratch_levels(self.levels(tokens, patch_hw, image_hw))
            main = self.output_map(self.fuse(rn)[-1], image_hw)
        else:
            main = self.main_map(tokens, patch_hw, image_hw)
        depth, conf = activate_head(main, "exp", "expp1")
        out = {
            "depth": depth[..., 0].reshape(B, n, H, W),
            "depth_conf": conf.reshape(B, n, H, W),
        }
        if rays:
            s = self.scratch
            fine = s.output_conv1_aux[AUX_LEVELS - 1](self.fuse(rn, suffix="_aux")[-1])
            logits = s.output_conv2_aux[AUX_LEVELS - 1](self._pos(fine, image_hw))
            ray, ray_conf = activate_head(logits, "linear", "expp1")
            out["ray"] = ray.reshape(B, n, *ray.shape[1:])
            out["ray_conf"] = ray_conf.reshape(B, n, *ray_conf.shape[1:])
        return out
