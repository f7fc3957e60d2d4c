"""VGGT aggregator: DINOv2 patch tokens → alternating frame / global attention (architectures.md §1.2–1.4).

Per frame the tokens are [camera (1) | registers (R) | patches (h·w)]; slot 0 of ``camera_token`` /
``register_token`` goes to the first frame of every sequence, slot 1 to the others. Block i runs
``frame_blocks[i]`` on [B·S, P, C] (within each frame) and then ``global_blocks[i]`` on [B, S·P, C]
(across the frames of a sequence, frame-major), both with the same per-frame RoPE positions; output i
is concat(frame_i, global_i) along channels, [B, S, P, 2C].

GPU notes: the RoPE tables are computed once per forward for one frame ([1, 1, P, D], broadcast over
B·S) and once for a global sequence ([1, 1, S·P, D]) and passed to every block; the frame↔global
reshapes are views of contiguous block outputs (no copies); only the requested layer outputs are kept.
With ``kept_features_fp8`` set ("kernel" | "reference", by ``lite3r.quant.fp8_features.
set_feature_storage``; None by default) each kept output is stored as FP8 (per token) as it is
produced, the concatenation built a few frames at a time — an engine memory option.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from lite3r.models.layers.block import Block
from lite3r.models.layers.dinov2 import DinoVisionTransformer, init_transformer_weights
from lite3r.models.layers.rope import RopeTables, RotaryPositionEmbedding2D, patch_positions
from lite3r.models.vggt.config import AggregatorConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _per_frame_slots(token: torch.Tensor, B: int, S: int) -> torch.Tensor:
    """[1, 2, X, C] → [B·S, X, C]: slot 0 for frame 0 of each sequence, slot 1 for frames 1..S−1."""
    first = token[:, :1].expand(B, 1, *token.shape[2:])
    rest = token[:, 1:].expand(B, S - 1, *token.shape[2:])
    return torch.cat([first, rest], dim=1).reshape(B * S, *token.shape[2:])


class Aggregator(nn.Module):
    def __init__(self, cfg: AggregatorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dino = cfg.patch_embed
        self.patch_size = cfg.patch_size
        self.depth = cfg.depth
        self.patch_embed = DinoVisionTransformer(
            img_size=dino.img_size,
            patch_size=dino.patch_size,
            embed_dim=dino.embed_dim,
            depth=dino.depth,
            num_heads=dino.num_heads,
            mlp_ratio=dino.mlp_ratio,
            num_register_tokens=dino.num_register_tokens,
            layer_scale_init=dino.layer_scale_init,
            qkv_bias=dino.qkv_bias,
            proj_bias=dino.proj_bias,
            ffn_bias=dino.ffn_bias,
            norm_eps=1e-6,
            final_norm_eps=1e-6,
            interpolate_antialias=True,
            interpolate_offset=0.0,
        )
        self.rope = RotaryPositionEmbedding2D(base=cfg.rope_freq)

        def block() -> Block:
            return Block(
                cfg.embed_dim,
                cfg.num_heads,
                mlp_ratio=cfg.mlp_ratio,
                qkv_bias=cfg.qkv_bias,
                proj_bias=cfg.proj_bias,
                ffn_bias=cfg.ffn_bias,
                norm_eps=1e-5,
                qk_norm=cfg.qk_norm,
                qk_norm_eps=1e-5,
                layer_scale_init=cfg.layer_scale_init,
                rope=self.rope,
            )

        self.frame_blocks = nn.ModuleList([block() for _ in range(cfg.depth)])
        self.global_blocks = nn.ModuleList([block() for _ in range(cfg.depth)])
        self.camera_token = nn.Parameter(torch.zeros(1, 2, 1, cfg.embed_dim))
        self.register_token = nn.Parameter(torch.zeros(1, 2, cfg.num_register_tokens, cfg.embed_dim))
        self.patch_start_idx = 1 + cfg.num_register_tokens
        # Constants, not in the checkpoint (non-persistent), re-filled by reset_constants() after a
        # meta-device build.
        self.kept_features_fp8: str | None = None  # memory option, see the module doc
        # memory option (inference): normalise + DINO-embed this many frames at a time, so the normalised
        # images and the DINO's working set never exist for every frame at once (None: all frames)
        self.patch_embed_chunk_frames: int | None = None
        self.register_buffer("_resnet_mean", torch.zeros(1, 1, 3, 1, 1), persistent=False)
        self.register_buffer("_resnet_std", torch.ones(1, 1, 3, 1, 1), persistent=False)
        self.reset_constants()
        self.init_weights()

    @torch.no_grad()
    def reset_constants(self) -> None:
        if self._resnet_mean.is_meta:
            return
        self._resnet_mean.copy_(torch.tensor(IMAGENET_MEAN).view(1, 1, 3, 1, 1))
        self._resnet_std.copy_(torch.tensor(IMAGENET_STD).view(1, 1, 3, 1, 1))

    @torch.no_grad()
    def init_weights(self) -> None:
        """Linears trunc-normal 0.02, LayerScale from the config, camera/register tokens normal
        (``token_init_std``); the DINO keeps its own init."""
        if self.camera_token.is_meta:
            return
        init_transformer_weights(self.frame_blocks, self.cfg.layer_scale_init)
        init_transformer_weights(self.global_blocks, self.cfg.layer_scale_init)
        nn.init.normal_(self.camera_token, std=self.cfg.token_init_std)
        nn.init.normal_(self.register_token, std=self.cfg.token_init_std)
        self.patch_embed.init_weights()

    def rope_tables(
        self, grid_hw: tuple[int, int], frames: int, device: torch.device
    ) -> tuple[RopeTables, RopeTables]:
        """(per-frame [1, 1, P, D], per-sequence [1, 1, S·P, D]) tables: the special tokens at (0, 0),
        patches at (r+1, c+1), the same positions in every frame."""
        head_dim = self.cfg.embed_dim // self.cfg.num_heads
        pos = patch_positions(1, grid_hw[0], grid_hw[1], self.patch_start_idx, device=device)
        frame = self.rope.tables(pos, head_dim)
        glob = RopeTables(cos=frame.cos.repeat(1, 1, frames, 1), sin=frame.sin.repeat(1, 1, frames, 1))
        return frame, glob

    def _normalized(self, frames: torch.Tensor) -> torch.Tensor:
        """(frames [N, 3, H, W] − ImageNet mean) / std with one temporary (the division is in place)."""
        mean = self._resnet_mean.view(1, 3, 1, 1).to(frames.dtype)
        return (frames - mean).div_(self._resnet_std.view(1, 3, 1, 1).to(frames.dtype))

    def _embed_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """frames [N, 3, H, W] in [0, 1] → DINO patch tokens [N, h·w, C]; with ``patch_embed_chunk_frames``
        (inference only) a chunk of frames at a time into one preallocated output. Every op is per
        frame, so the tokens are the same; what changes is the transient memory: the normalised images
        of the whole batch were the trunk's peak for a narrow model (tests/test_memory_options.py)."""
        chunk = self.patch_embed_chunk_frames
        N = frames.shape[0]
        if chunk is None or chunk >= N or torch.is_grad_enabled():
            return self.patch_embed(self._normalized(frames))
        out = None
        for a in range(0, N, chunk):
            tok = self.patch_embed(self._normalized(frames[a : a + chunk]))
            if out is None:
                out = tok.new_empty((N, *tok.shape[1:]))
            out[a : a + tok.shape[0]] = tok
            del tok
        return out

    def forward(self, images: torch.Tensor, keep: Iterable[int] | None = None) -> dict[int, torch.Tensor]:
        """images [B, S, 3, H, W] in [0, 1] → {i: [B, S, P, 2C]} for every layer i in ``keep``
        (default: all layers — pass the heads' layers to save memory). With ``kept_features_fp8`` the
        values are ``QuantizedActivation`` carriers of that shape instead."""
        B, S, _, H, W = images.shape
        keep_set = set(range(self.depth)) if keep is None else {self._index(i) for i in keep}
        patches = self._embed_frames(images.reshape(B * S, 3, H, W))  # [B·S, h·w, C]
        C = patches.shape[-1]
        cam = _per_frame_slots(self.camera_token, B, S).to(patches.dtype)
        reg = _per_frame_slots(self.register_token, B, S).to(patches.dtype)
        tokens = torch.cat([cam, reg, patches], dim=1)  # [B·S, P, C]
        # Free the DINO output now: held by this name, it would stay alive through all 24 block pairs
        # (with the normalised images, 0.53 GiB of the peak at 128 VGGT frames, memory_peak.py).
        del patches, cam, reg
        P = tokens.shape[1]
        grid_hw = (H // self.patch_size, W // self.patch_size)
        rope_frame, rope_global = self.rope_tables(grid_hw, S, images.device)
        pos_global = rope_global if self.cfg.global_rope else None
        outputs: dict[int, torch.Tensor] = {}
        for i in range(self.depth):
            tokens = self.frame_blocks[i](tokens.view(B * S, P, C), pos=rope_frame, frame_len=P)
            frame_out = tokens
            tokens = self.global_blocks[i](tokens.view(B, S * P, C), pos=pos_global, frame_len=P)
            if i in keep_set:
                halves = [frame_out.view(B, S, P, C), tokens.view(B, S, P, C)]
                if self.kept_features_fp8 is None:
                    outputs[i] = torch.cat(halves, dim=-1)
                else:
                    from lite3r.quant.fp8_features import quantize_concat

                    outputs[i] = quantize_concat(halves, self.kept_features_fp8)
                del halves
            del frame_out  # not kept alive through the next frame block
        return outputs

    def _index(self, i: int) -> int:
        j = i + self.depth if i < 0 else i
        if not 0 <= j < self.depth:
            raise IndexError(f"aggregator layer {i} out of range for depth {self.depth}")
        return j
