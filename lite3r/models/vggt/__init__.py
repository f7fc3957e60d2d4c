"""VGGT written from the architecture notes (no track head); key names equal facebook/VGGT-1B's."""

from lite3r.models.vggt.aggregator import Aggregator
from lite3r.models.vggt.camera_head import CameraHead
from lite3r.models.vggt.config import (
    AggregatorConfig,
    CameraHeadConfig,
    DinoConfig,
    DPTHeadConfig,
    VGGTConfig,
    from_reference_config,
)
from lite3r.models.vggt.dpt_head import DPTHead
from lite3r.models.vggt.model import VGGT, VGGTFeatures

__all__ = [
    "VGGT",
    "Aggregator",
    "AggregatorConfig",
    "CameraHead",
    "CameraHeadConfig",
    "DPTHead",
    "DPTHeadConfig",
    "DinoConfig",
    "VGGTConfig",
    "VGGTFeatures",
    "from_reference_config",
]
