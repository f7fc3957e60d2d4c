"""Reconstructor on a CUDA GPU: the attention/precision paths it names really run, peak memory is
reported, fp32 on the GPU matches the CPU, and a VGGT-1B-sized trunk stays memory-lean."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import PHOTOS_DIR
from engine_fixtures import small_vggt

from lite3r.engine.reconstructor import Reconstructor

pytestmark = pytest.mark.gpu
PAIR = [PHOTOS_DIR / "motorcycle_left.jpg", PHOTOS_DIR / "motorcycle_right.jpg"]


def test_fp32_gpu_matches_cpu():
    cpu = Reconstructor(small_vggt(), precision="fp32", device="cpu", input_size=252).reconstruct(PAIR)
    gpu = Reconstructor(small_vggt(), precision="fp32", device="cuda", input_size=252).reconstruct(PAIR)
    assert "memory-efficient SDPA" in gpu.attention and gpu.metadata["tf32"] is False
    assert gpu.peak_memory_bytes and gpu.peak_memory_bytes > 0 and gpu.device.startswith("cuda")
    np.testing.assert_allclose(gpu.depth, cpu.depth, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(gpu.extrinsics, cpu.extrinsics, atol=1e-3)


def test_bf16_gpu_runs_cudnn_attention():
    ref = Reconstructor(small_vggt(), precision="fp32", device="cuda", input_size=252).reconstruct(PAIR)
    rc = Reconstructor(small_vggt(), precision="bf16", device="cuda", input_size=252)
    rec = rc.reconstruct(PAIR)  # the cuDNN backend is the only one allowed: it raises if it cannot run
    assert rec.attention == "dense · cuDNN SDPA" and rec.precision.startswith("bf16")
    assert np.isfinite(rec.depth).all()
    rel = np.abs(rec.depth - ref.depth).mean() / np.abs(ref.depth).mean()
    assert rel < 0.05


def _vggt_1b_random():
    from lite3r.models.vggt.config import VGGTConfig
    from lite3r.models.vggt.model import VGGT

    with torch.device("cuda"):
        return VGGT(VGGTConfig.vggt_1b()).eval()


def _frames(n, w=518, h=392, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def test_vggt_1b_bf16_memory_lean():
    """8 views at 518×392 with random VGGT-1B weights: only the 4 head layers are kept."""
    model = _vggt_1b_random()
    assert model.default_layers() == (4, 11, 17, 23)
    rc = Reconstructor(model, precision="bf16", device="cuda")
    rec = rc.reconstruct(_frames(8))
    assert rec.image_size == (392, 518) and rec.attention == "dense · cuDNN SDPA"
    weights = rec.metadata["weights_bytes"]
    # bf16 trunk (≈1.8 GiB) + fp32 heads (≈1.1 GiB); activations for 8 views are far below the stock
    # model's 24 kept layers (8 × 0.1 GB per layer-set in bf16 would already be ≈ 2 GB on top).
    assert rec.peak_memory_bytes < weights + 6 * 2**30


@pytest.mark.hopper
def test_fp8_path_is_named():
    model = _vggt_1b_random()
    rc = Reconstructor(model, precision="fp8", device="cuda")
    rec = rc.reconstruct(_frames(2))
    assert rec.precision.startswith("fp8") and rec.metadata["precision_name"] == "fp8"
    assert np.isfinite(rec.depth).all()
