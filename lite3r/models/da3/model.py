"""DA3 (``DepthAnything3Net``): backbone + DualDPT head + camera decoder (+ camera encoder), with the
engine protocol.

``forward(images)`` returns the reference network outputs (depth, depth_conf, extrinsics,
intrinsics). The engine calls ``encode`` (the backbone; keeps only the four out layers) and the
``decode_*`` methods (heads in float32 with autocast disabled, frames in chunks). DA3 predicts no
point map: ``decode_points`` returns None and the engine unprojects depth with the cameras.

Inputs are ImageNet-normalised images [B, S, 3, H, W] (``input_normalization = "imagenet"``). The
predicted cameras' world frame is the reference view chosen by the backbone (view 0 unless
``saddle_balanced`` / ``saddle_sim_range`` / ``middle`` picked another one for S ≥ 3).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lite3r.io.atomic import atomic_write
from lite3r.models.da3.backbone import DA3Backbone
from lite3r.models.da3.camera import CameraDec, CameraEnc, decode_pose
from lite3r.models.da3.config import DA3Config
from lite3r.models.da3.dualdpt import DualDPT
from lite3r.models.protocol import CameraPrediction
from lite3r.models.sites import AttentionSite

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass
class DA3Features:
    """What ``encode`` returns: the four out layers and their geometry.

    ``features[k]`` [B, S, h·w, 2C] patch features (raw per-view half ‖ normed cross-view half);
    ``camera_tokens[k]`` [B, S, 2C] (the decoder reads the last); ``ref_view`` [B] the reference view
    the backbone selected (None when no selection ran); ``cam_enc_tokens`` [B, S, C] in
    pose-conditioned mode.
    """

    features: list[torch.Tensor]
    camera_tokens: list[torch.Tensor]
    image_hw: tuple[int, int]
    ref_view: torch.Tensor | None = None
    cam_enc_tokens: torch.Tensor | None = None

    @property
    def num_views(self) -> int:
        return int(self.features[0].shape[1])


def _no_autocast(device_type: str):
    return torch.autocast(device_type=device_type, enabled=False)


class DA3(nn.Module):
    family = "da3"
    input_normalization = "imagenet"  # the caller passes (x − mean)/std; nothing is normalised inside

    def __init__(self, config: DA3Config | None = None) -> None:
        super().__init__()
        self.config = config = config or DA3Config()
        self.backbone = DA3Backbone(config.backbone)
        self.head = DualDPT(config.head)
        self.cam_dec = CameraDec(config.cam_dec)
        self.cam_enc = CameraEnc(config.cam_enc) if config.cam_enc is not None else None

    # ------------------------------------------------------------------------------------ trunk
    @staticmethod
    def _as_batch(images: torch.Tensor) -> torch.Tensor:
        if images.ndim == 4:
            images = images[None]
        if images.ndim != 5 or images.shape[2] != 3:
            raise ValueError(f"images must be [B, S, 3, H, W] or [S, 3, H, W], got {tuple(images.shape)}")
        return images

    def encode_cameras(
        self, extrinsics: torch.Tensor, intrinsics: torch.Tensor, image_hw: tuple[int, int]
    ) -> torch.Tensor:
        """Given cameras → camera-encoder tokens [B, S, C] (float32, autocast off, as the reference)."""
        if self.cam_enc is None:
            raise RuntimeError("this DA3 was built without the camera encoder (config.cam_enc is None)")
        with _no_autocast(extrinsics.device.type):
            return self.cam_enc(extrinsics, intrinsics, image_hw)

    def encode(
        self,
        images: torch.Tensor,
        extrinsics: torch.Tensor | None = None,
        intrinsics: torch.Tensor | None = None,
        ref_view_strategy: str | None = None,
    ) -> DA3Features:
        """images [B, S, 3, H, W] (or [S, 3, H, W]), ImageNet-normalised → :class:`DA3Features`.

        With ``extrinsics`` [B, S, 3|4, 4] (world→camera) and ``intrinsics`` [B, S, 3, 3] (pixels) the
        camera encoder's tokens replace the camera token (pose-conditioned mode, no view selection).
        ``ref_view_strategy`` overrides ``config.ref_view_strategy`` for this call.
        """
        images = self._as_batch(images)
        if (extrinsics is None) != (intrinsics is None):
            raise ValueError("pose-conditioned mode needs both extrinsics and intrinsics")
        H, W = images.shape[-2:]
        cam_tokens = None
        if extrinsics is not None:
            if extrinsics.ndim == 3:
                extrinsics, intrinsics = extrinsics[None], intrinsics[None]
            cam_tokens = self.encode_cameras(extrinsics, intrinsics, (H, W))
        out = self.backbone(
            images,
            cam_tokens=cam_tokens,
            ref_view_strategy=ref_view_strategy or self.config.ref_view_strategy,
        )
        return DA3Features(out.features, out.camera_tokens, (H, W), out.ref_view, cam_tokens)

    @staticmethod
    def select_frames(features: DA3Features, a: int, b: int) -> DA3Features:
        """Features of frames a..b−1 (views, not copies) for the per-frame heads (depth, rays, and the
        per-view camera decoder); the reference view keeps its meaning (it indexes the full set)."""
        return DA3Features(
            features=[t[:, a:b] for t in features.features],
            camera_tokens=[t[:, a:b] for t in features.camera_tokens],
            image_hw=features.image_hw,
            ref_view=features.ref_view,
            cam_enc_tokens=None if features.cam_enc_tokens is None else features.cam_enc_tokens[:, a:b],
        )

    # ------------------------------------------------------------------------------------ heads
    def camera_encoding(self, features: DA3Features) -> torch.Tensor:
        """The camera decoder's camera→world encoding [B, S, 9] (float32)."""
        last = features.camera_tokens[-1]
        with _no_autocast(last.device.type):
            return self.cam_dec(last)

    def decode_cameras(
        self, features: DA3Features, image_hw: tuple[int, int] | None = None
    ) -> CameraPrediction:
        """→ CameraPrediction(extrinsics [B, S, 3, 4] world→camera with the reference view as the world
        frame, intrinsics [B, S, 3, 3] pixels, pose_enc [B, S, 9] camera→world, None)."""
        pose_enc = self.camera_encoding(features)
        ext, intr = decode_pose(pose_enc, image_hw or features.image_hw)
        return CameraPrediction(ext, intr, pose_enc, None)

    def _head(self, features: DA3Features, images, frames_chunk_size, rays: bool) -> dict[str, torch.Tensor]:
        image_hw = features.image_hw if images is None else tuple(images.shape[-2:])
        with _no_autocast(features.features[0].device.type):
            return self.head(features.features, image_hw, frames_chunk_size, rays=rays)

    def decode_depth(
        self, features: DA3Features, images: torch.Tensor | None = None, frames_chunk_size: int | None = 8
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """→ (depth [B, S, H, W], depth_conf [B, S, H, W]); ``images`` only gives (H, W)."""
        out = self._head(features, images, frames_chunk_size, rays=False)
        return out["depth"], out["depth_conf"]

    def decode_rays(
        self, features: DA3Features, images: torch.Tensor | None = None, frames_chunk_size: int | None = 8
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """→ (ray [B, S, 8h, 8w, 6] = world direction (3) ‖ origin (3), ray_conf [B, S, 8h, 8w])."""
        out = self._head(features, images, frames_chunk_size, rays=True)
        return out["ray"], out["ray_conf"]

    def decode_points(
        self, features: DA3Features, images: torch.Tensor | None = None, frames_chunk_size: int | None = 8
    ) -> None:
        """DA3 has no point head: None (the engine unprojects depth with the predicted cameras)."""
        return None

    def predict(
        self,
        features: DA3Features,
        images: torch.Tensor | None = None,
        frames_chunk_size: int | None = 8,
        rays: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Reference outputs from encoded features: depth, depth_conf [B, S, H, W], extrinsics
        [B, S, 3, 4], intrinsics [B, S, 3, 3], plus pose_enc [B, S, 9] and, with ``rays``, ray /
        ray_conf."""
        pred = self._head(features, images, frames_chunk_size, rays=rays)
        cams = self.decode_cameras(
            features, features.image_hw if images is None else tuple(images.shape[-2:])
        )
        pred["extrinsics"], pred["intrinsics"], pred["pose_enc"] = (
            cams.extrinsics,
            cams.intrinsics,
            cams.pose_enc,
        )
        return pred

    def forward(
        self,
        images: torch.Tensor,
        extrinsics: torch.Tensor | None = None,
        intrinsics: torch.Tensor | None = None,
        ref_view_strategy: str | None = None,
        frames_chunk_size: int | None = 8,
    ) -> dict[str, torch.Tensor]:
        """The network outputs of ``DepthAnything3Net.forward`` (camera-decoder pose path): depth,
        depth_conf [B, S, H, W], extrinsics [B, S, 3, 4] world→camera, intrinsics [B, S, 3, 3]."""
        images = self._as_batch(images)
        feats = self.encode(images, extrinsics, intrinsics, ref_view_strategy)
        pred = self.predict(feats, images, frames_chunk_size)
        return {k: pred[k] for k in ("depth", "depth_conf", "extrinsics", "intrinsics")}

    # ---------------------------------------------------------------------------- engine metadata
    def attention_sites(self) -> dict[str, AttentionSite]:
        bb = self.backbone
        blocks = [f"backbone.pretrained.blocks.{i}.attn" for i in range(bb.depth)]
        sites = {
            "per_view": AttentionSite(
                "per_view",
                [n for i, n in enumerate(blocks) if not bb.is_cross_view(i)],
                cross_view=False,
                special_tokens_per_frame=1,
            ),
            "cross_view": AttentionSite(
                "cross_view",
                [n for i, n in enumerate(blocks) if bb.is_cross_view(i)],
                cross_view=True,
                special_tokens_per_frame=1,
            ),
        }
        if self.cam_enc is not None:
            sites["camera_encoder"] = AttentionSite(
                "camera_encoder",
                [f"cam_enc.trunk.{i}.attn" for i in range(len(self.cam_enc.trunk))],
                cross_view=False,  # S tokens only (one per view): not a conversion target by default
                special_tokens_per_frame=0,
                trunk=False,
            )
        return sites

    def head_modules(self) -> list[str]:
        return ["head", "cam_dec"] + (["cam_enc"] if self.cam_enc is not None else [])

    def trunk_modules(self) -> list[str]:
        return ["backbone"]

    # ------------------------------------------------------------------------------- checkpoints
    @torch.no_grad()
    def init_weights(self) -> None:
        """Re-initialise every parameter (training from scratch / random-weight benchmarks)."""
        self.backbone.pretrained.init_weights()
        for m in (*self.head.modules(), *self.cam_dec.modules()):
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
        if self.cam_enc is not None:
            self.cam_enc.init_weights()

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo_id: str | os.PathLike,
        config: DA3Config | None = None,
        strict: bool = True,
        device: str | torch.device = "cpu",
    ) -> DA3:
        """Load DA3 weights: a local ``.safetensors`` / ``.pt`` file, a folder with ``config.json`` +
        ``model.safetensors`` (the official hub layout or :meth:`save_pretrained`'s), or a Hugging Face
        repo id (e.g. ``depth-anything/DA3-LARGE-1.1``, downloaded when online). The hub's ``model.``
        prefix is stripped, legacy training-format names are renamed when the file uses them, and the
        load is strict by default. Returns the model in eval mode with ``model.load_report``."""
        from lite3r.models.da3.loading import load_da3

        return load_da3(path_or_repo_id, config=config, strict=strict, device=device)

    def save_pretrained(self, folder: str | os.PathLike, metadata: dict | None = None) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``folder`` (each atomically)."""
        from safetensors.torch import save

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        cfg = {"family": self.family, "config": self.config.to_dict()}
        if metadata:
            cfg["metadata"] = metadata
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        with atomic_write(folder / WEIGHTS_FILE) as f:
            f.write(save(state))
        with atomic_write(folder / CONFIG_FILE, "w") as f:
            f.write(json.dumps(cfg, indent=1) + "\n")
        return folder
