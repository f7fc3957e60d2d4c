"""DA3 checkpoint rules and loader (architectures.md §3 "DA3-Large", on :mod:`lite3r.models.loading`).

- Hub files (``depth-anything/DA3-LARGE-1.1``) hold the API class's state dict, so every key has the
  prefix ``model.``; it is stripped (as is a DDP ``module.``).
- Legacy training-format checkpoints use older names (``net.`` for the backbone, ``all_heads.*``,
  ``camera_token_extra``, ``_ray`` for ``_aux``, …). When a file uses any of them, the reference's
  rename table is applied (:func:`legacy_rename`); the legacy file's unused old ``camera_token`` is
  ignored and reported. Files in the current format are never renamed.
- The Lite3R authors' DA3 checkpoints: ``*.attn.lam`` ignored, ``*.attn.proj_lin.weight`` set aside
  as adapter tensors (as for VGGT).
- A VGGT checkpoint is recognised and refused with a message naming VGGT.
- A model built without the camera encoder (``cam_enc=None``) drops ``cam_enc.*`` (reported).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from pathlib import Path

import torch

from lite3r.errors import CheckpointError
from lite3r.models.loading import (
    CheckpointRules,
    TensorSource,
    build_and_load,
    open_checkpoint,
    read_config_json,
    resolve_weights,
)

log = logging.getLogger(__name__)

LEGACY_UNUSED = "#legacy-unused"  # suffix given to the legacy file's superseded camera_token

_VGGT_PREFIXES = ("aggregator.", "camera_head.", "depth_head.", "point_head.", "track_head.")

DA3_RULES = CheckpointRules(
    model_name="DA3",
    strip_prefixes=("model.", "module."),
    ignore_patterns=(r"\.attn\.lam$", r"(^|\.)smooth$"),
    adapter_patterns=(r"\.attn\.proj_lin\.weight$",),
    foreign=(("VGGT", _VGGT_PREFIXES),),
)

# Names that only legacy (training-format) DA3 checkpoints use.
_LEGACY_MARKERS = re.compile(
    r"(^|\.)net\.|all_heads\.|camera_token_extra|\.more_mlps\.|\.fc_rot\.|_ray\.|output_conv2_additional|"
    r"gaussian_param_head\."
)


def legacy_rename(key: str) -> str:
    """The reference's ``utils/model_loading.py`` table on a key whose ``model.``/``module.`` prefix
    was already stripped. The superseded ``backbone.pretrained.camera_token`` of a legacy file is
    marked :data:`LEGACY_UNUSED` (ignored), and ``camera_token_extra`` becomes ``camera_token``."""
    k = "model." + key
    k = k.replace(".net.", ".backbone.")
    if k == "model.backbone.pretrained.camera_token":
        return k[len("model.") :] + LEGACY_UNUSED
    k = k.replace(".camera_token_extra", ".camera_token")
    k = k.replace("model.all_heads.camera_cond_head", "model.cam_enc")
    k = k.replace("model.all_heads.camera_head", "model.cam_dec")
    k = k.replace(".more_mlps.", ".backbone.")
    k = k.replace(".fc_rot.", ".fc_qvec.")
    k = k.replace("model.all_heads.head", "model.head")
    k = k.replace("_ray.", "_aux.")
    k = k.replace("output_conv2_additional.sky_mask", "sky_output_conv2")
    k = k.replace("gaussian_param_head.", "gs_head.")
    return k[len("model.") :]


def is_legacy(keys) -> bool:
    """Whether a checkpoint (keys with or without prefix) uses legacy training-format names."""
    return any(_LEGACY_MARKERS.search(k) for k in keys)


def rules_for(source: TensorSource, config) -> CheckpointRules:
    """DA3_RULES, plus the legacy renames when the file needs them and the ``cam_enc.*`` drop when the
    model has no camera encoder."""
    rules = DA3_RULES
    if is_legacy(source.shapes):
        log.info("%s uses legacy DA3 key names: applying the reference's rename table", source.path)
        rules = dataclasses.replace(
            rules,
            rename=legacy_rename,
            ignore_patterns=(*rules.ignore_patterns, re.escape(LEGACY_UNUSED) + "$"),
        )
    if config is not None and config.cam_enc is None:
        rules = dataclasses.replace(rules, drop_prefixes=(*rules.drop_prefixes, "cam_enc."))
    return rules


def load_da3(
    path_or_repo_id: str | os.PathLike,
    config=None,
    strict: bool = True,
    device: str | torch.device = "cpu",
    default_path: Path | None = None,
):
    """:meth:`DA3.from_pretrained` (and the registry's loader for the ``da3`` family). The config comes
    from ``config``, else a ``config.json`` beside the weights (ours, or the hub's
    ``{"model_name": "da3-large"}``), else DA3-Large."""
    from lite3r.models.da3.config import DA3Config
    from lite3r.models.da3.model import CONFIG_FILE, DA3

    path = resolve_weights(path_or_repo_id, "model.safetensors", default_path=default_path, model_name="DA3")
    source = open_checkpoint(path)
    if config is None:
        config = read_da3_config(path.parent / CONFIG_FILE) or DA3Config.da3_large()
    rules = rules_for(source, config)
    model, report = build_and_load(lambda: DA3(config), source, rules, strict=strict, device=device)
    model.load_report = report
    return model


SUPPORTED_PRESETS = ("da3-large",)


def read_da3_config(path: Path):
    """Our ``config.json`` ({"family": "da3", "config": {...}}), the hub's ({"model_name": "da3-large"}
    → DA3-Large), or None when absent or not a DA3 config. Other DA3 presets raise."""
    from lite3r.models.da3.config import DA3Config

    data = read_config_json(path)
    if data is None:
        return None
    if "family" in data:
        if data["family"] != "da3":
            raise CheckpointError(f"{path} describes a {data['family']} model, not DA3")
        return DA3Config.from_dict(data["config"])
    if "model_name" in data:
        name = data["model_name"]
        if name not in SUPPORTED_PRESETS:
            raise CheckpointError(
                f"{path}: DA3 preset {name!r} is not supported",
                hint=f"Lite3R implements {', '.join(SUPPORTED_PRESETS)} (depth-anything/DA3-LARGE-1.1)",
            )
        return DA3Config.da3_large()
    return None
