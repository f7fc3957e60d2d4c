"""The model protocol the engine uses (HELPERS.md "Model protocol"), shared by VGGT and DA3.

A model class provides ``family``, ``input_normalization``, ``encode``, ``decode_cameras``,
``decode_depth``, ``decode_points``, ``forward`` (reference dict), ``attention_sites``,
``head_modules`` and ``trunk_modules``. :class:`CameraPrediction` is what ``decode_cameras`` returns.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch

from lite3r.models.sites import AttentionSite


class CameraPrediction(NamedTuple):
    """Cameras of every view; ``ext, intr = pred[:2]`` gives the pair.

    extrinsics [B, S, 3, 4] world→camera (OpenCV, world = the reference/first camera); intrinsics
    [B, S, 3, 3] in model pixels; ``pose_enc`` [B, S, 9] the model's raw encoding (VGGT: world→camera;
    DA3: camera→world) or None; ``pose_enc_list`` every refinement step (VGGT) or None.
    """

    extrinsics: torch.Tensor
    intrinsics: torch.Tensor
    pose_enc: torch.Tensor | None = None
    pose_enc_list: list[torch.Tensor] | None = None


@runtime_checkable
class ReconstructionModel(Protocol):
    family: str
    input_normalization: str

    def encode(self, images: torch.Tensor) -> Any: ...

    def decode_cameras(self, features: Any, image_hw: tuple[int, int] | None = None) -> CameraPrediction: ...

    def decode_depth(
        self, features: Any, images: torch.Tensor, frames_chunk_size: int = 8
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def decode_points(
        self, features: Any, images: torch.Tensor, frames_chunk_size: int = 8
    ) -> tuple[torch.Tensor, torch.Tensor] | None: ...

    def attention_sites(self) -> dict[str, AttentionSite]: ...

    def head_modules(self) -> list[str]: ...

    def trunk_modules(self) -> list[str]: ...
