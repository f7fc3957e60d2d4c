"""Shared builders for the engine/CLI tests: the reduced VGGT parity model as a real checkpoint."""

from __future__ import annotations

import json

from conftest import PARITY_DIR


def small_vggt():
    """A fresh reduced VGGT (parity config + weights), float32, eval mode."""
    from safetensors.torch import load_file

    from lite3r.models.vggt.config import from_reference_config
    from lite3r.models.vggt.model import VGGT

    cfg = from_reference_config(json.loads((PARITY_DIR / "vggt_small_config.json").read_text()))
    model = VGGT(cfg)
    state = load_file(str(PARITY_DIR / "vggt_small_state_dict.safetensors"))
    state.pop("aggregator.patch_embed.mask_token", None)
    model.load_state_dict(state, strict=True)
    return model.eval()


def save_small_vggt(folder):
    """Write the reduced VGGT as config.json + model.safetensors (the format --weights FOLDER takes)."""
    return small_vggt().save_pretrained(folder)
