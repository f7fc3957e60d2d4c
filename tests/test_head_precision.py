"""Head precision: the DPT heads in bfloat16 (``head_precision="bf16"``), the camera head in float32.

Why this option exists: fp32 DPT heads are ~100 of the 355 ms of a compiled Lite3R FP8 forward at 32
frames on the H100. These CPU tests check what is cast, what is refused, that the outputs stay float32
and that depth moves by bf16 rounding only; the GPU benchmark measures the time.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import PHOTOS_DIR
from engine_fixtures import small_vggt

from lite3r.engine.reconstructor import Reconstructor
from lite3r.errors import InputError, UnsupportedError
from lite3r.eval.variants import HEAD_PRECISIONS, parse_variant
from lite3r.quant.precision import HEAD_PRECISIONS as QUANT_HEAD_PRECISIONS
from lite3r.quant.precision import apply_precision

PAIR = [PHOTOS_DIR / "motorcycle_left.jpg", PHOTOS_DIR / "motorcycle_right.jpg"]
SIZE = 126


def test_bf16_heads_cast_only_the_dpt_heads():
    model = small_vggt()
    report = apply_precision(model, "bf16", "cpu", head_precision="bf16")
    assert report.bf16_heads == [n for n in ("depth_head", "point_head") if getattr(model, n) is not None]
    assert all(p.dtype == torch.bfloat16 for p in model.depth_head.parameters())
    assert all(p.dtype == torch.float32 for p in model.camera_head.parameters())
    assert "bf16 DPT heads" in report.description and "fp32 camera head" in report.description


def test_default_heads_stay_fp32():
    model = small_vggt()
    report = apply_precision(model, "bf16", "cpu")
    assert report.bf16_heads == [] and report.head_dtype == "float32"
    assert all(p.dtype == torch.float32 for p in model.depth_head.parameters())
    assert report.description == "bf16 trunk · fp32 heads"


def test_bf16_heads_refused_with_fp32_trunk_and_unknown_value():
    with pytest.raises(UnsupportedError, match="fp32 trunk"):
        apply_precision(small_vggt(), "fp32", "cpu", head_precision="bf16")
    with pytest.raises(UnsupportedError, match="unknown head precision"):
        apply_precision(small_vggt(), "bf16", "cpu", head_precision="fp16")


def test_bf16_heads_engine_depth_within_bf16_rounding():
    """Same trunk (bf16), heads fp32 vs bf16: depth agrees to a few bf16 ulps, outputs are float32,
    and the engine names the path that ran."""
    ref = Reconstructor(small_vggt(), precision="bf16", device="cpu", input_size=SIZE).reconstruct(PAIR)
    rc = Reconstructor(small_vggt(), precision="bf16", device="cpu", input_size=SIZE, head_precision="bf16")
    got = rc.reconstruct(PAIR)
    assert "bf16 DPT heads" in rc.precision
    assert got.depth.dtype == np.float32
    rel = np.abs(got.depth - ref.depth) / np.maximum(np.abs(ref.depth), 1e-6)
    assert np.median(rel) < 2e-2 and np.percentile(rel, 99) < 1e-1
    # the cameras come from the fp32 camera head on the same bf16 trunk: unchanged
    np.testing.assert_allclose(got.extrinsics, ref.extrinsics, atol=1e-6)


def test_variant_token_heads():
    assert parse_variant("lite3r:fp8:sla0.1:heads=bf16").head_precision == "bf16"
    assert parse_variant("dense:bf16").head_precision == "fp32"
    with pytest.raises(InputError, match="heads=fp32"):
        parse_variant("dense:bf16:heads=fp16")
    assert HEAD_PRECISIONS == QUANT_HEAD_PRECISIONS


@pytest.mark.gpu
def test_bf16_heads_on_gpu_fp8_trunk():
    """On the GPU with the FP8 trunk: bf16 DPT heads move depth by bf16 rounding only."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (run benchmarks/gpu_check.sh on the device)")
    from lite3r.quant.precision import check_precision

    try:
        check_precision("fp8", "cuda")
    except UnsupportedError as e:
        pytest.skip(str(e))
    ref = Reconstructor(small_vggt(), precision="fp8", device="cuda", input_size=SIZE).reconstruct(PAIR)
    rc = Reconstructor(small_vggt(), precision="fp8", device="cuda", input_size=SIZE, head_precision="bf16")
    got = rc.reconstruct(PAIR)
    rel = np.abs(got.depth - ref.depth) / np.maximum(np.abs(ref.depth), 1e-6)
    assert np.median(rel) < 2e-2 and np.percentile(rel, 99) < 1e-1


def test_compile_covers_the_dpt_heads_and_changes_nothing():
    """The engine's compile step compiles each DPT head's main chain too (here with the aot_eager
    backend: same graphs, no code generation; fp32 heads, as bf16 decompositions round differently);
    the depth it computes is unchanged."""
    from lite3r.engine.policy import compile_trunk

    model = small_vggt()
    apply_precision(model, "bf16", "cpu")
    images = torch.rand(1, 3, 3, 56, 70)
    with torch.inference_mode():
        feats = model.encode(images.to(torch.bfloat16))
        ref = model.decode_depth(feats, images, frames_chunk_size=1)
        assert "main_map" not in vars(model.depth_head)
        torch._dynamo.reset()
        desc = compile_trunk(model, "default", backend="aot_eager")
        got = model.decode_depth(feats, images, frames_chunk_size=1)
    n_heads = sum(getattr(model, n) is not None for n in ("depth_head", "point_head"))
    assert desc.endswith(f"{n_heads} DPT heads)")
    assert "main_map" in vars(model.depth_head)  # the compiled callable shadows the method
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_app_engine_backend_passes_the_heads_choice():
    """The app's worker builds its engine with the panel's heads choice (and keys its cache on it)."""
    from conftest import PARITY_DIR

    from lite3r.app.engine_backend import EngineBackend

    backend = EngineBackend(dev_models={"parity-vggt": str(PARITY_DIR)})
    base = {"backbone": "parity-vggt", "attention": "dense", "precision": "bf16", "device": "cpu"}
    fp32_heads = backend.reconstructor(base)
    assert "fp32 heads" in fp32_heads.precision
    bf16_heads = backend.reconstructor({**base, "heads_precision": "bf16"})
    assert bf16_heads is not fp32_heads and "bf16 DPT heads" in bf16_heads.precision
