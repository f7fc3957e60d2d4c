"""Full-size models built on the meta device reproduce the official checkpoint manifests key for key.

VGGT part: VGGT-1B (no track head) = vggt1b_keys.json minus the keys the loader drops on purpose
(``track_head.*``, ``aggregator.patch_embed.mask_token``).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import PARITY_DIR

from lite3r.models.loading import VGGT_RULES
from lite3r.models.vggt import VGGT, VGGTConfig


@pytest.fixture(scope="module")
def vggt_manifest():
    return json.loads((PARITY_DIR / "vggt1b_keys.json").read_text())


@pytest.fixture(scope="module")
def vggt_1b():
    with torch.device("meta"):
        return VGGT(VGGTConfig.vggt_1b())


def _dropped(keys):
    return [k for k in keys if k.startswith(VGGT_RULES.drop_prefixes)]


def test_vggt1b_keys_and_shapes(vggt_manifest, vggt_1b):
    keys = vggt_manifest["keys"]
    assert len(keys) == vggt_manifest["num_tensors"] == 1797
    dropped = _dropped(keys)
    assert len(dropped) == vggt_manifest["keys_unused_for_camera_depth_point_inference"]["count"] == 395
    state = vggt_1b.state_dict()
    assert set(state) == set(keys) - set(dropped)
    wrong = {k: (list(v.shape), keys[k]) for k, v in state.items() if list(v.shape) != keys[k]}
    assert wrong == {}


def test_vggt1b_param_count(vggt_manifest, vggt_1b):
    keys = vggt_manifest["keys"]
    dropped = sum(math.prod(keys[k]) for k in _dropped(keys))
    assert sum(p.numel() for p in vggt_1b.parameters()) == vggt_manifest["num_params"] - dropped
    by_prefix = vggt_manifest["param_count_by_prefix"]
    for prefix, count in by_prefix.items():
        if prefix == "track_head.":
            continue
        got = sum(p.numel() for n, p in vggt_1b.named_parameters() if n.startswith(prefix))
        expect = count - (sum(math.prod(keys[k]) for k in _dropped(keys) if k.startswith(prefix)))
        assert got == expect, prefix


def test_vggt1b_non_persistent_buffers(vggt_manifest, vggt_1b):
    buffers = {n for n, _ in vggt_1b.named_buffers()}
    assert buffers == set(vggt_manifest["non_persistent_buffers_not_in_checkpoint"])
    assert not buffers & set(vggt_1b.state_dict())


def test_vggt1b_head_layers_and_sites(vggt_1b):
    assert vggt_1b.default_layers() == (4, 11, 17, 23)
    sites = vggt_1b.attention_sites()
    assert {k: len(s.modules) for k, s in sites.items()} == {
        "dino": 24,
        "frame": 24,
        "global": 24,
        "camera": 4,
    }
    assert vggt_1b.aggregator.global_blocks[0].attn.head_dim == 64
    assert vggt_1b.camera_head.trunk[0].attn.head_dim == 128
