"""VGGT: aggregator + camera / depth / point heads (no track head), with the engine protocol.

``forward(images)`` returns the reference output dictionary (parity). The engine instead calls
``encode`` (the trunk; keeps only the layers the heads read) and the ``decode_*`` methods (heads in
float32 with autocast disabled, frames in chunks), so the trunk can run in bf16/fp8 and the heads in
fp32 without guesswork.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lite3r.geometry import pose_encoding_to_extri_intri
from lite3r.models.protocol import CameraPrediction
from lite3r.models.sites import AttentionSite
from lite3r.models.vggt.aggregator import Aggregator
from lite3r.models.vggt.camera_head import CameraHead
from lite3r.models.vggt.config import VGGTConfig
from lite3r.models.vggt.dpt_head import DPTHead

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass
class VGGTFeatures:
    """What ``encode`` returns: the kept aggregator layers {i: [B, S, P, 2C]} and their geometry."""

    layers: dict[int, torch.Tensor]
    patch_start_idx: int
    image_hw: tuple[int, int]
    num_layers: int

    def layer(self, i: int) -> torch.Tensor:
        j = i + self.num_layers if i < 0 else i
        if j not in self.layers:
            raise KeyError(f"aggregator layer {i} was not kept by encode() (kept: {sorted(self.layers)})")
        return self.layers[j]


def _no_autocast(device_type: str):
    return torch.autocast(device_type=device_type, enabled=False)


class VGGT(nn.Module):
    family = "vggt"
    input_normalization = "none"  # takes [0, 1] images and normalises inside (ImageNet mean/std)

    def __init__(self, config: VGGTConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or VGGTConfig()
        self.aggregator = Aggregator(config.aggregator)
        self.camera_head = CameraHead(config.camera_head) if config.camera_head else None
        self.depth_head = DPTHead(config.depth_head) if config.depth_head else None
        self.point_head = DPTHead(config.point_head) if config.point_head else None
        # Training speed option (not in the checkpoint): True leaves the DPT heads under the caller's
        # autocast instead of float32 as the reference (lite3r-tiny training: each DPT head's fwd+bwd
        # 60 → 47 ms per 192 views, benchmarks/results/tiny/throughput/). Deployment sets head precision through
        # lite3r.quant.precision instead.
        self.dpt_autocast = False
        # How these weights' poses are best read (not in the state dict; config.json "pose_readout"):
        # None = the camera head; a MatchPoseConfig = geometrically from the global attention's
        # cross-view matches (lite3r.models.vggt.match_pose), for weights trained to match (lite3r-tiny).
        self.pose_readout = None

    # ------------------------------------------------------------------------------------ trunk
    def default_layers(self) -> tuple[int, ...]:
        """The aggregator layers the built heads read: the DPT layers and the last layer."""
        keep = set()
        for head in (self.depth_head, self.point_head):
            if head is not None:
                keep.update(head.intermediate_layer_idx)
        if self.camera_head is not None:
            keep.add(self.aggregator.depth - 1)
        return tuple(sorted(keep))

    @staticmethod
    def _as_batch(images: torch.Tensor) -> torch.Tensor:
        if images.ndim == 4:
            images = images[None]
        if images.ndim != 5 or images.shape[2] != 3:
            raise ValueError(f"images must be [B, S, 3, H, W] or [S, 3, H, W], got {tuple(images.shape)}")
        return images

    def encode(self, images: torch.Tensor, layers: Iterable[int] | str | None = None) -> VGGTFeatures:
        """images [B, S, 3, H, W] (or [S, 3, H, W]) in [0, 1] → :class:`VGGTFeatures`.

        ``layers``: None keeps only what the heads read (VGGT-1B: 4, 11, 17, 23); ``"all"`` keeps
        every layer (parity); or an explicit list of indices.
        """
        images = self._as_batch(images)
        if layers is None:
            keep = self.default_layers()
        elif layers == "all":
            keep = None
        else:
            keep = tuple(layers)
        out = self.aggregator(images, keep=keep)
        return VGGTFeatures(
            layers=out,
            patch_start_idx=self.aggregator.patch_start_idx,
            image_hw=(images.shape[-2], images.shape[-1]),
            num_layers=self.aggregator.depth,
        )

    @staticmethod
    def select_frames(features: VGGTFeatures, a: int, b: int) -> VGGTFeatures:
        """Features of frames a..b−1 (views, not copies) for the per-frame heads (depth / points).
        Not for the camera head, which attends across all frames."""
        return VGGTFeatures(
            layers={i: t[:, a:b] for i, t in features.layers.items()},
            patch_start_idx=features.patch_start_idx,
            image_hw=features.image_hw,
            num_layers=features.num_layers,
        )

    # ------------------------------------------------------------------------------------ heads
    def _require(self, name: str):
        head = getattr(self, name)
        if head is None:
            raise RuntimeError(f"this VGGT was built without a {name} (config.{name} is None)")
        return head

    def camera_encodings(self, features: VGGTFeatures) -> list[torch.Tensor]:
        """Activated pose encodings of every refinement step, [B, S, 9] each (float32)."""
        head = self._require("camera_head")
        last = features.layer(-1)
        with _no_autocast(last.device.type):
            return head(last)

    def decode_cameras(
        self, features: VGGTFeatures, image_hw: tuple[int, int] | None = None
    ) -> CameraPrediction:
        """→ CameraPrediction(extrinsics [B, S, 3, 4] world→camera, intrinsics [B, S, 3, 3],
        pose_enc [B, S, 9], pose_enc_list)."""
        enc_list = self.camera_encodings(features)
        ext, intr = pose_encoding_to_extri_intri(enc_list[-1], image_hw or features.image_hw)
        return CameraPrediction(ext, intr, enc_list[-1], enc_list)

    def _dpt(self, name: str, features: VGGTFeatures, images: torch.Tensor | None, frames_chunk_size):
        head = self._require(name)
        image_hw = features.image_hw if images is None else tuple(images.shape[-2:])
        any_layer = next(iter(features.layers.values()))
        ctx = contextlib.nullcontext() if self.dpt_autocast else _no_autocast(any_layer.device.type)
        with ctx:
            return head(features.layers, image_hw, features.patch_start_idx, frames_chunk_size)

    def decode_depth(
        self, features: VGGTFeatures, images: torch.Tensor | None = None, frames_chunk_size: int | None = 8
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """→ (depth [B, S, H, W], depth_conf [B, S, H, W]); ``images`` only gives (H, W)."""
        depth, conf = self._dpt("depth_head", features, images, frames_chunk_size)
        return depth[..., 0], conf

    def decode_points(
        self, features: VGGTFeatures, images: torch.Tensor | None = None, frames_chunk_size: int | None = 8
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """→ (world_points [B, S, H, W, 3] in the first camera's frame, conf [B, S, H, W]), or None
        when the model has no point head."""
        if self.point_head is None:
            return None
        return self._dpt("point_head", features, images, frames_chunk_size)

    def predict(
        self, features: VGGTFeatures, images: torch.Tensor, frames_chunk_size: int | None = 8
    ) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """The reference output dictionary from encoded features (the heads that exist):
        pose_enc [B,S,9], pose_enc_list, depth [B,S,H,W,1], depth_conf, world_points [B,S,H,W,3],
        world_points_conf, and images when not training."""
        images = self._as_batch(images)
        pred: dict = {}
        if self.camera_head is not None:
            enc_list = self.camera_encodings(features)
            pred["pose_enc"] = enc_list[-1]
            pred["pose_enc_list"] = enc_list
        if self.depth_head is not None:
            pred["depth"], pred["depth_conf"] = self._dpt("depth_head", features, images, frames_chunk_size)
        if self.point_head is not None:
            pts, conf = self._dpt("point_head", features, images, frames_chunk_size)
            pred["world_points"], pred["world_points_conf"] = pts, conf
        if not self.training:
            pred["images"] = images
        return pred

    def forward(self, images: torch.Tensor, frames_chunk_size: int | None = 8) -> dict:
        """images [B, S, 3, H, W] (or [S, 3, H, W]) in [0, 1] → the reference output dictionary
        (see :meth:`predict`); heads in float32 with autocast disabled, as the reference."""
        images = self._as_batch(images)
        return self.predict(self.encode(images), images, frames_chunk_size)

    # ---------------------------------------------------------------------------- engine metadata
    def attention_sites(self) -> dict[str, AttentionSite]:
        agg = self.aggregator
        special = agg.patch_start_idx
        sites = {
            "dino": AttentionSite(
                "dino",
                [f"aggregator.patch_embed.blocks.{i}.attn" for i in range(len(agg.patch_embed.blocks))],
                cross_view=False,
                special_tokens_per_frame=agg.patch_embed.num_special_tokens,
            ),
            "frame": AttentionSite(
                "frame",
                [f"aggregator.frame_blocks.{i}.attn" for i in range(agg.depth)],
                cross_view=False,
                special_tokens_per_frame=special,
            ),
            "global": AttentionSite(
                "global",
                [f"aggregator.global_blocks.{i}.attn" for i in range(agg.depth)],
                cross_view=True,
                special_tokens_per_frame=special,
            ),
        }
        if self.camera_head is not None:
            sites["camera"] = AttentionSite(
                "camera",
                [f"camera_head.trunk.{i}.attn" for i in range(len(self.camera_head.trunk))],
                # attends across the S camera tokens (one per view), but only S tokens: not a
                # cross-view site for the conversion, which targets the S·P-token global blocks
                cross_view=False,
                special_tokens_per_frame=0,
                trunk=False,
            )
        return sites

    def head_modules(self) -> list[str]:
        return [n for n in ("camera_head", "depth_head", "point_head") if getattr(self, n) is not None]

    def trunk_modules(self) -> list[str]:
        return ["aggregator"]

    # ------------------------------------------------------------------------------- checkpoints
    @torch.no_grad()
    def init_weights(self) -> None:
        """Re-initialise every parameter (training from scratch)."""
        self.aggregator.init_weights()
        if self.camera_head is not None:
            self.camera_head.init_weights()
        for head in (self.depth_head, self.point_head):
            if head is not None:
                for m in head.modules():
                    if m is not head and hasattr(m, "reset_parameters"):
                        m.reset_parameters()

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo_id: str | os.PathLike,
        config: VGGTConfig | None = None,
        strict: bool = True,
        device: str | torch.device = "cpu",
    ) -> VGGT:
        """Load VGGT weights: a local ``.safetensors`` / ``.pt`` file, a folder with ``config.json`` +
        ``model.safetensors`` (:meth:`save_pretrained`), or a Hugging Face repo id (downloaded when
        online). Strict by default (every key consumed, shapes equal); ``track_head.*`` and
        ``aggregator.patch_embed.mask_token`` are dropped and reported. Returns the model in eval mode
        with ``model.load_report``.
        """
        from lite3r.models.loading import load_vggt

        return load_vggt(path_or_repo_id, config=config, strict=strict, device=device)

    def save_pretrained(self, folder: str | os.PathLike, metadata: dict | None = None) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``folder`` (atomically, file by file)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        cfg = {"family": self.family, "config": self.config.to_dict()}
        if self.pose_readout is not None:
            cfg["pose_readout"] = self.pose_readout.to_dict()
        if metadata:
            cfg["metadata"] = metadata
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        _atomic_write(folder / WEIGHTS_FILE, lambda p: save_file(state, str(p)))
        _atomic_write(folder / CONFIG_FILE, lambda p: Path(p).write_text(json.dumps(cfg, indent=1) + "\n"))
        return folder


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
