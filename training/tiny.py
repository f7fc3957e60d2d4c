"""lite3r-tiny: the bundled small VGGT (same classes as VGGT-1B at a small config) and its export.

``tiny`` (the shipped model): 224 px, embed 256 with 4 heads of 64 (head_dim 64, so the SLA / FP8
kernels apply), DINO depth 4, aggregator depth 4 (4 frame + 4 global blocks), camera trunk 1, DPT
features 64: 14.9 M parameters, 29.8 MB as float16 safetensors. Training may add a point head as an
auxiliary signal (``build_tiny(point_head=True)``: dense points in the view-0 frame supervise the
cross-view geometry); ``export_tiny`` drops it (depth + cameras are unprojected, as VGGT recommends). ``small`` (quick experiments) and ``micro`` (CPU tests) have the
same structure.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import torch

from lite3r.models.vggt.config import VGGTConfig
from lite3r.models.vggt.model import CONFIG_FILE, VGGT, WEIGHTS_FILE

MAX_EXPORT_BYTES = 30_000_000

PRESETS = {
    "tiny": dict(
        img_size=224, embed_dim=256, num_heads=4, depth=4, dino_depth=4, camera_trunk_depth=1,
        dpt_features=64, dpt_out_channels=(32, 64, 128, 128), point_head=False,
    ),
    "small": dict(  # quick experiments (CPU / a few GPU minutes)
        img_size=112, embed_dim=128, num_heads=2, depth=3, dino_depth=2, camera_trunk_depth=1,
        dpt_features=32, dpt_out_channels=(16, 32, 64, 64), point_head=False,
    ),
    "micro": dict(
        img_size=56, embed_dim=32, num_heads=2, depth=2, dino_depth=1, camera_trunk_depth=1,
        dpt_features=16, dpt_out_channels=(8, 16, 16, 16), point_head=False,
    ),
}  # fmt: skip


def tiny_config(preset: str = "tiny", **overrides) -> VGGTConfig:
    if preset not in PRESETS:
        raise ValueError(f"unknown lite3r-tiny preset {preset!r}; choose one of {tuple(PRESETS)}")
    return VGGTConfig.scaled(**{**PRESETS[preset], **overrides})


def build_tiny(preset: str = "tiny", seed: int = 0, **overrides) -> VGGT:
    """A freshly initialised model (deterministic from ``seed``)."""
    cfg = tiny_config(preset, **overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VGGT(cfg)
        model.init_weights()
    return model


def export_tiny(
    model: VGGT,
    folder: str | Path,
    metadata: dict | None = None,
    dtype=torch.float16,
    keep_point_head: bool = False,
) -> Path:
    """Write ``model.safetensors`` (``dtype`` storage; loading casts back to float32) + ``config.json``
    atomically, and check the size limit for bundling (``assets/lite3r-tiny``).

    A point head used only as an auxiliary training signal is dropped unless ``keep_point_head``: the
    engine unprojects depth with the predicted cameras, and the bundled model must stay under 30 MB."""
    folder = Path(folder)
    twin = copy.deepcopy(model).to("cpu", dtype=dtype)
    if twin.point_head is not None and not keep_point_head:
        twin.point_head = None
        twin.config = dataclasses.replace(twin.config, point_head=None)
    meta = {"storage_dtype": str(dtype).removeprefix("torch."), **(metadata or {})}
    twin.save_pretrained(folder, metadata=meta)
    size = (folder / WEIGHTS_FILE).stat().st_size
    if size > MAX_EXPORT_BYTES:
        raise ValueError(
            f"{folder / WEIGHTS_FILE} is {size / 1e6:.1f} MB, over the {MAX_EXPORT_BYTES / 1e6:.0f} MB limit"
        )
    json.loads((folder / CONFIG_FILE).read_text())  # written and readable
    return folder
