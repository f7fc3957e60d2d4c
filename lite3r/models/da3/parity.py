"""The DA3 family for :mod:`lite3r.models.reference` (reference-format parity cases, shared/parity).

Cases: ``input.images`` (ImageNet-normalised), optionally ``input.extrinsics`` / ``input.intrinsics``
(pose-conditioned) and the case's ``ref_view_strategy``. Produced names: ``output.{depth, depth_conf,
extrinsics, intrinsics}``, ``inter.pose_enc``, ``inter.head.{ray, ray_conf}``, ``inter.feat.{k}``,
``inter.cam_token.{k}``, ``inter.ref_view_idx`` (when a selection ran) and ``inter.cam_enc_tokens``
(pose-conditioned).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from lite3r.models.da3.config import from_reference_config, is_reference_config
from lite3r.models.da3.loading import DA3_RULES
from lite3r.models.reference import Family


def build(config: Mapping) -> nn.Module:
    from lite3r.models.da3.model import DA3

    return DA3(from_reference_config(config))


def outputs(model, case: Mapping, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    images = inputs["input.images"]
    feats = model.encode(
        images,
        inputs.get("input.extrinsics"),
        inputs.get("input.intrinsics"),
        ref_view_strategy=case.get("ref_view_strategy"),
    )
    pred = model.predict(feats, images, rays=True)
    out = {f"output.{k}": pred[k] for k in ("depth", "depth_conf", "extrinsics", "intrinsics")}
    out["inter.pose_enc"] = pred["pose_enc"]
    out["inter.head.ray"], out["inter.head.ray_conf"] = pred["ray"], pred["ray_conf"]
    for k, (f, c) in enumerate(zip(feats.features, feats.camera_tokens)):
        out[f"inter.feat.{k}"], out[f"inter.cam_token.{k}"] = f, c
    if feats.ref_view is not None:
        out["inter.ref_view_idx"] = feats.ref_view
    if feats.cam_enc_tokens is not None:
        out["inter.cam_enc_tokens"] = feats.cam_enc_tokens
    return out


FAMILY = Family("da3", is_reference_config, build, outputs, DA3_RULES)
