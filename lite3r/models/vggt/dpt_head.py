"""VGGT depth / point head (architectures.md §1.7): the generic DPT of ``layers/dpt.py`` on four
aggregator layers (patch tokens only, 2C wide), with VGGT's in-place-ReLU residual units and the UV
embedding in float64. Frames are processed in chunks (memory only; numerically identical)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from lite3r.models.layers.dpt import ACTIVATIONS, DPTBase, activate_head
from lite3r.models.vggt.config import DPTHeadConfig


class DPTHead(DPTBase):
    def __init__(self, cfg: DPTHeadConfig) -> None:
        for a in (cfg.activation, cfg.conf_activation):
            if a not in ACTIVATIONS:
                raise ValueError(f"unknown DPT activation {a!r}; choose one of {ACTIVATIONS}")
        super().__init__(
            dim_in=cfg.dim_in,
            features=cfg.features,
            out_channels=cfg.out_channels,
            output_dim=cfg.output_dim,
            patch_size=cfg.patch_size,
            pos_embed=cfg.pos_embed,
            skip_relu=True,
            uv_compute_dtype=torch.float64,
            norm_eps=1e-5,
        )
        self.cfg = cfg
        self.intermediate_layer_idx = tuple(cfg.intermediate_layer_idx)

    def forward(
        self,
        layers: Mapping[int, torch.Tensor],
        image_hw: tuple[int, int],
        patch_start_idx: int,
        frames_chunk_size: int | None = 8,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """layers {i: [B, S, P, 2C]} (at least ``intermediate_layer_idx``) → (preds [B, S, H, W, C−1],
        conf [B, S, H, W]), both float32."""
        missing = [i for i in self.intermediate_layer_idx if i not in layers]
        if missing:
            raise KeyError(f"DPT head needs aggregator layers {missing}, which were not kept by encode()")
        S = layers[self.intermediate_layer_idx[0]].shape[1]
        chunk = S if not frames_chunk_size or frames_chunk_size >= S else frames_chunk_size
        preds, confs = [], []
        for s0 in range(0, S, chunk):
            p, c = self._forward_frames(layers, image_hw, patch_start_idx, s0, min(S, s0 + chunk))
            preds.append(p)
            confs.append(c)
        if len(preds) == 1:
            return preds[0], confs[0]
        return torch.cat(preds, dim=1), torch.cat(confs, dim=1)

    def _forward_frames(self, layers, image_hw, patch_start_idx, s0, s1):
        H, W = image_hw
        patch_hw = (H // self.patch_size, W // self.patch_size)
        tokens = []
        for i in self.intermediate_layer_idx:
            x = layers[i][:, s0:s1, patch_start_idx:]
            tokens.append(x.reshape(-1, x.shape[-2], x.shape[-1]))
        B = layers[self.intermediate_layer_idx[0]].shape[0]
        out = self.main_map(tokens, patch_hw, image_hw)
        preds, conf = activate_head(out, self.cfg.activation, self.cfg.conf_activation)
        return preds.reshape(B, s1 - s0, *preds.shape[1:]), conf.reshape(B, s1 - s0, *conf.shape[1:])
