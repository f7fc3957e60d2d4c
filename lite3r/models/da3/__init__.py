"""Depth-Anything-3 written from the architecture notes; key names equal ``DepthAnything3Net``'s.

Importing this package registers the ``da3-large`` model (registry, with its loader) and the ``da3``
reference family (parity cases); :func:`lite3r.models.registry.import_optional_families` does that
automatically.
"""

from lite3r.models.da3.backbone import BackboneOutput, DA3Backbone, DA3VisionTransformer
from lite3r.models.da3.camera import CameraDec, CameraEnc, decode_pose, encode_pose
from lite3r.models.da3.config import (
    BackboneConfig,
    CameraDecConfig,
    CameraEncConfig,
    DA3Config,
    DualDPTConfig,
    from_reference_config,
)
from lite3r.models.da3.dualdpt import DualDPT
from lite3r.models.da3.loading import DA3_RULES, load_da3
from lite3r.models.da3.model import DA3, DA3Features
from lite3r.models.da3.ref_view import select_reference_view


def _da3_large_config() -> DA3Config:
    return DA3Config.da3_large()


def _register() -> None:
    from lite3r.models import reference, registry
    from lite3r.models.da3.parity import FAMILY

    registry.register(
        registry.ModelSpec(
            name="da3-large",
            family="da3",
            display_name="DA3-Large",
            hf_repo_id="depth-anything/DA3-LARGE-1.1",
            hf_filename="model.safetensors",
            default_input_size=504,
            preprocessing="da3_upper_bound_resize",
            licence="CC BY-NC 4.0 (Depth-Anything-3 Large weights; non-commercial)",
            config=_da3_large_config,
        ),
        loader=load_da3,
    )
    reference.register_family(FAMILY)


_register()

__all__ = [
    "DA3",
    "DA3_RULES",
    "BackboneConfig",
    "BackboneOutput",
    "CameraDec",
    "CameraDecConfig",
    "CameraEnc",
    "CameraEncConfig",
    "DA3Backbone",
    "DA3Config",
    "DA3Features",
    "DA3VisionTransformer",
    "DualDPT",
    "DualDPTConfig",
    "decode_pose",
    "encode_pose",
    "from_reference_config",
    "load_da3",
    "select_reference_view",
]
