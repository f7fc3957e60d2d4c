"""Shared builders for the engine/CLI tests: the reduced VGGT parity model as a real checkpoint."""

from __future__ import annotations

import json

from conftest import PARITY_DIR


def small_vggt():
    """A fresh reduced VGGT: parity config, weights loaded from the real safetensors file through the
    project's checked loader (strict), float32, eval mode."""
    from lite3r.models.reference import load

    cfg = json.loads((PARITY_DIR / "vggt_small_config.json").read_text())
    model, _ = load(cfg, PARITY_DIR / "vggt_small_state_dict.safetensors", strict=True)
    return model.eval()


def save_small_vggt(folder):
    """Write the reduced VGGT as config.json + model.safetensors (the format --weights FOLDER takes)."""
    return small_vggt().save_pretrained(folder)
