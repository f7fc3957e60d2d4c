"""DA3 on a CUDA GPU through the engine: DA3-Large (random weights) at 504 px with 8 views in bf16 stays
memory-lean; the reduced model's fp32 GPU run matches the CPU; bf16 stays close to fp32; fp8 runs on
Hopper. Run on the device: ``pytest -m gpu tests/test_da3_gpu.py``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import PARITY_DIR, PHOTOS_DIR

from lite3r.engine.reconstructor import Reconstructor

pytestmark = pytest.mark.gpu
PAIR = [PHOTOS_DIR / "motorcycle_left.jpg", PHOTOS_DIR / "motorcycle_right.jpg"]
TRIPLE = [*PAIR, PHOTOS_DIR / "chelsea.jpg"]
GiB = 2**30


def _small_da3():
    import json

    from lite3r.models.reference import load

    cfg = json.loads((PARITY_DIR / "da3_small_config.json").read_text())
    model, _ = load(cfg, PARITY_DIR / "da3_small_state_dict.safetensors", strict=True)
    return model.eval()


def _da3_large_random():
    from lite3r.models.da3 import DA3, DA3Config

    torch.manual_seed(0)
    with torch.device("cuda"):
        return DA3(DA3Config.da3_large()).eval()


def _frames(n, w=504, h=378, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def test_da3_large_bf16_8_views_memory_lean():
    """8 views at 504×378 with random DA3-Large weights: the engine runs bf16 trunk / fp32 heads with
    cuDNN attention, and the trunk keeps only its 4 out layers."""
    model = _da3_large_random()
    rc = Reconstructor(model, precision="bf16", device="cuda", model_name="da3-large")
    rec = rc.reconstruct(_frames(8))
    assert rec.image_size == (378, 504) and rec.attention == "dense · cuDNN SDPA"
    assert rec.precision.startswith("bf16") and rec.metadata["family"] == "da3"
    assert np.isfinite(rec.depth).all() and (rec.depth > 0).all() and np.isfinite(rec.extrinsics).all()
    assert rec.world_points is None
    np.testing.assert_allclose(rec.extrinsics[0], np.eye(3, 4), atol=1e-4)
    weights = rec.metadata["weights_bytes"]
    # bf16 backbone (≈0.6 GiB) + fp32 heads (≈0.4 GiB); the fp32 DPT on 8 full-resolution frames
    # dominates the activations (a few 0.5 GiB maps), the trunk adds little.
    assert rec.peak_memory_bytes < weights + 6 * GiB

    images = torch.randn(1, 8, 3, 378, 504, device="cuda", dtype=torch.bfloat16)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    with torch.inference_mode():
        feats = model.encode(images)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    kept = sum(t.numel() * t.element_size() for t in [*feats.features, *feats.camera_tokens])
    assert len(feats.features) == 4 and feats.features[0].shape == (1, 8, 27 * 36, 2048)
    assert feats.features[0].dtype == torch.bfloat16
    # all 24 layer outputs [1, 8, 973, 2048] in bf16 would add ≈ 0.7 GiB on top of the 4 kept ones
    assert extra < kept + 1 * GiB, f"trunk peak {extra / GiB:.2f} GiB, kept {kept / GiB:.2f} GiB"


def test_fp32_gpu_matches_cpu():
    pytest.importorskip("cv2")
    cpu = Reconstructor(_small_da3(), precision="fp32", device="cpu", input_size=252).reconstruct(TRIPLE)
    gpu = Reconstructor(_small_da3(), precision="fp32", device="cuda", input_size=252).reconstruct(TRIPLE)
    assert "memory-efficient SDPA" in gpu.attention and gpu.metadata["tf32"] is False
    assert gpu.peak_memory_bytes and gpu.device.startswith("cuda")
    np.testing.assert_allclose(gpu.depth, cpu.depth, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(gpu.extrinsics, cpu.extrinsics, atol=1e-3)


def test_bf16_gpu_close_to_fp32():
    """Two views (no reference-view selection, so bf16 noise cannot pick another reference)."""
    pytest.importorskip("cv2")
    ref = Reconstructor(_small_da3(), precision="fp32", device="cuda", input_size=252).reconstruct(PAIR)
    rec = Reconstructor(_small_da3(), precision="bf16", device="cuda", input_size=252).reconstruct(PAIR)
    assert rec.attention == "dense · cuDNN SDPA" and np.isfinite(rec.depth).all()
    rel = np.abs(rec.depth - ref.depth).mean() / np.abs(ref.depth).mean()
    assert rel < 0.05


@pytest.mark.hopper
def test_da3_large_fp8_path_is_named():
    model = _da3_large_random()
    rec = Reconstructor(model, precision="fp8", device="cuda").reconstruct(_frames(2))
    assert rec.precision.startswith("fp8") and rec.metadata["precision_name"] == "fp8"
    assert np.isfinite(rec.depth).all()
