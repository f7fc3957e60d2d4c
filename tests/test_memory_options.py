"""Memory options of the deployment path: token-chunked trunk MLPs and FP8 storage of the features
kept for the heads (both off by default). CPU tests prove they compute what the default path does;
the GPU test checks that they lower the trunk's peak memory."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import PHOTOS_DIR
from engine_fixtures import small_vggt

from lite3r.engine.reconstructor import Reconstructor
from lite3r.errors import InputError, UnsupportedError
from lite3r.eval.variants import FEATURE_STORAGES, parse_variant
from lite3r.models.layers.block import Block, set_mlp_chunk_tokens
from lite3r.quant import apply_fp8_inference
from lite3r.quant.fp8_features import (
    FEATURE_STORAGES as QUANT_FEATURE_STORAGES,
)
from lite3r.quant.fp8_features import (
    dequantize_features,
    dequantize_frames,
    dequantize_tokens,
    feature_bytes,
    feature_quantizer,
    quantize_concat,
    quantize_tensor,
)
from lite3r.quant.fp8_format import QuantizedActivation

PAIR = [PHOTOS_DIR / "motorcycle_left.jpg", PHOTOS_DIR / "motorcycle_right.jpg"]
SIZE = 126  # 126 × 84 for the pair: 9·6 patches + 5 special = 59 tokens per view, 118 per sequence


def _block(dim: int = 32) -> Block:
    torch.manual_seed(0)
    blk = Block(dim, 2, layer_scale_init=0.5).eval()
    for p in blk.parameters():  # non-trivial norms / biases
        p.data.add_(0.1 * torch.randn_like(p))
    return blk


# ---- chunked MLP -------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 16, 37, 74, 1000])
def test_chunked_mlp_matches_unchunked_block(chunk):
    blk = _block()
    x = torch.randn(2, 37, 32)  # 74 tokens: 16 and 37-sized chunks, one partial
    with torch.inference_mode():
        ref = blk(x)
        blk.mlp_chunk_tokens = chunk
        out = blk(x)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)


def test_chunked_mlp_only_at_inference_and_keys_unchanged():
    blk = _block()
    keys = list(blk.state_dict())
    set_mlp_chunk_tokens(blk, 16)
    assert list(blk.state_dict()) == keys
    x = torch.randn(1, 40, 32, requires_grad=True)
    blk(x).sum().backward()  # grad enabled: the ordinary (autograd-safe) path runs
    assert x.grad is not None
    with pytest.raises(ValueError, match="positive"):
        set_mlp_chunk_tokens(blk, 0)


def test_chunked_mlp_keeps_fused_fp8_producers():
    """FP8 deployment modules (reference mode on CPU): the fused LN→FP8 and GELU→FP8 producers stay,
    and per-token quantisation makes chunking exact."""
    blk = _block()
    holder = torch.nn.Sequential(blk)
    report = apply_fp8_inference(holder, mode="reference")
    assert report.fused_gelus and report.fused_layernorms
    x = torch.randn(2, 37, 32)
    with torch.inference_mode():
        ref = blk(x)
        blk.mlp_chunk_tokens = 20
        out = blk(x)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)


def test_chunked_mlp_compiles_without_graph_breaks():
    blk = _block()
    blk.mlp_chunk_tokens = 16
    ref_blk = copy.deepcopy(blk)
    ref_blk.mlp_chunk_tokens = None
    blk.compile(backend="aot_eager", fullgraph=True, dynamic=True)
    with torch.inference_mode():
        for n in (37, 50):
            x = torch.randn(2, n, 32)
            torch.testing.assert_close(blk(x), ref_blk(x), rtol=0, atol=1e-6)


def test_chunked_mlp_small_vggt_engine():
    ref = Reconstructor(small_vggt(), precision="fp32", device="cpu", input_size=SIZE).reconstruct(PAIR)
    rc = Reconstructor(small_vggt(), precision="fp32", device="cpu", input_size=SIZE, mlp_chunk_tokens=7)
    keys = list(small_vggt().state_dict())
    assert list(rc.model.state_dict()) == keys
    blocks = [m for m in rc.model.aggregator.modules() if isinstance(m, Block)]
    assert blocks and all(b.mlp_chunk_tokens == 7 for b in blocks)
    assert rc.model.camera_head is None or all(
        m.mlp_chunk_tokens is None for m in rc.model.camera_head.modules() if isinstance(m, Block)
    )
    rec = rc.reconstruct(PAIR)
    np.testing.assert_allclose(rec.depth, ref.depth, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rec.extrinsics, ref.extrinsics, rtol=1e-5, atol=1e-6)
    assert rec.metadata["memory"]["mlp_chunk_tokens"] == 7


@pytest.mark.parametrize("chunk", [1, 4, 16])  # 6 frames: 1 each, 4 + a partial 2, one chunk for all
def test_chunked_patch_embedding_matches_all_frames_at_once(chunk):
    agg = small_vggt().aggregator
    images = torch.rand(2, 3, 3, 56, 70, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = agg(images)
        agg.patch_embed_chunk_frames = chunk
        out = agg(images)
    for i in ref:
        torch.testing.assert_close(out[i], ref[i], rtol=1e-5, atol=1e-6)
    grads_on = agg(images)  # training (autograd recording) embeds every frame at once, as the reference
    torch.testing.assert_close(grads_on[0].detach(), ref[0], rtol=1e-5, atol=1e-6)


def test_memory_options_embed_images_in_frame_chunks():
    from lite3r.engine.policy import PATCH_EMBED_CHUNK_FRAMES

    lean = Reconstructor(small_vggt(), precision="fp32", device="cpu", mlp_chunk_tokens=64)
    assert lean.model.aggregator.patch_embed_chunk_frames == PATCH_EMBED_CHUNK_FRAMES
    assert f"{PATCH_EMBED_CHUNK_FRAMES} frames at a time" in lean.memory.description
    plain = Reconstructor(small_vggt(), precision="fp32", device="cpu")
    assert plain.model.aggregator.patch_embed_chunk_frames is None
    assert "frames at a time" not in plain.memory.description


# ---- FP8 features -------------------------------------------------------------------------------------


def test_quantize_concat_equals_quantizing_the_concatenation():
    a, b = torch.randn(2, 11, 5, 8), 3 * torch.randn(2, 11, 5, 8)
    whole = quantize_tensor(torch.cat([a, b], -1), use_kernel=False)
    qa = quantize_concat([a, b], "reference", frames_chunk=4)  # 11 frames: a partial chunk
    assert tuple(qa.shape) == (2, 11, 5, 16)
    assert torch.equal(qa.data.view(torch.uint8), whole.data.view(torch.uint8))
    assert torch.equal(qa.scale, whole.scale)
    # frame / token slices dequantise what the whole does
    full = dequantize_features(qa, torch.float32)
    torch.testing.assert_close(dequantize_frames(qa, 3, 7, torch.float32), full[:, 3:7], rtol=0, atol=0)
    torch.testing.assert_close(dequantize_tokens(qa, 0, 2, torch.float32), full[:, :, :2], rtol=0, atol=0)


def test_feature_storage_support_rules():
    assert QUANT_FEATURE_STORAGES == FEATURE_STORAGES
    assert feature_quantizer("native", "cpu") is None
    assert feature_quantizer("fp8", "cpu") == "reference"
    with pytest.raises(UnsupportedError, match="unknown feature storage"):
        feature_quantizer("fp4", "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(UnsupportedError):
            feature_quantizer("fp8", "cuda")
        with pytest.raises(UnsupportedError):
            Reconstructor(small_vggt(), precision="bf16", device="cuda", feature_storage="fp8")


@pytest.fixture(scope="module")
def bf16_pair():
    ref_rc = Reconstructor(small_vggt(), precision="bf16", device="cpu", input_size=SIZE, frames_chunk_size=1)
    rc = Reconstructor(
        small_vggt(),
        precision="bf16",
        device="cpu",
        input_size=SIZE,
        frames_chunk_size=1,
        feature_storage="fp8",
    )
    return ref_rc, rc


def test_fp8_features_stored_and_smaller(bf16_pair):
    ref_rc, rc = bf16_pair
    images = torch.rand(1, 3, 3, 84, 126)
    with torch.inference_mode():
        native = ref_rc.encode(images)
        fp8 = rc.encode(images)
    assert all(isinstance(t, QuantizedActivation) for t in fp8.layers.values())
    assert sorted(fp8.layers) == sorted(native.layers)
    ratio = feature_bytes(fp8) / feature_bytes(native)
    assert ratio < 0.6  # 1 byte per value + one float32 scale per token, vs 2 bytes (bf16)
    for i, t in native.layers.items():
        deq = dequantize_features(fp8.layers[i], torch.float32)
        rel = (deq - t.float()).norm() / t.float().norm()
        assert rel < 0.05, (i, rel.item())
    # the camera head's view holds only the special tokens, dequantised
    cam = rc.camera_features(fp8)
    assert all(t.shape[2] == fp8.patch_start_idx for t in cam.layers.values())


def test_fp8_features_depth_close_to_bf16_features(bf16_pair):
    """Storing the head features in FP8 costs about what the bf16 trunk costs against fp32 (measured
    on CPU, parity model, motorcycle pair at 126 px: depth relative error median 9.4e-3, p95 3.2e-2,
    max 7.3e-2; bf16 vs fp32 trunk: 5.3e-3 / 1.7e-2 / 4.2e-2; extrinsics max abs 0.053 vs 0.059)."""
    ref_rc, rc = bf16_pair
    ref, rec = ref_rc.reconstruct(PAIR), rc.reconstruct(PAIR)
    rel = np.abs(rec.depth - ref.depth) / np.abs(ref.depth)
    print(f"fp8 features vs bf16 features: depth rel err median {np.median(rel):.2e}, max {rel.max():.2e}")
    assert np.median(rel) < 1e-2 and rel.max() < 0.1
    assert np.abs(rec.depth - ref.depth).mean() / np.abs(ref.depth).mean() < 0.05  # as bf16 vs fp32
    np.testing.assert_allclose(rec.extrinsics, ref.extrinsics, atol=0.1)
    assert rec.world_points is not None and np.isfinite(rec.world_points).all()
    assert rec.metadata["memory"]["feature_storage"] == "fp8"
    assert rec.metadata["memory"]["feature_quantizer"] == "reference"
    assert ref.metadata["memory"]["feature_storage"] == "native"


# ---- variants -----------------------------------------------------------------------------------------


def test_variant_memory_tokens():
    v = parse_variant("lite3r-fp8-lean:fp8:sla0.1:compile:feat=fp8:mlpchunk=16384")
    assert (v.feature_storage, v.mlp_chunk_tokens, v.precision, v.attention) == ("fp8", 16384, "fp8", "sla")
    d = parse_variant("dense:bf16")
    assert (d.feature_storage, d.mlp_chunk_tokens) == ("native", None)
    assert "feature_storage" in d.to_dict() and "mlp_chunk_tokens" in d.to_dict()
    for bad in ("x:feat=fp4", "x:mlpchunk=0", "x:mlpchunk=abc", "x:feat="):
        with pytest.raises(InputError):
            parse_variant(bad)


# ---- GPU ----------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.hopper
@pytest.mark.parametrize("precision", ["bf16", "fp8"])
def test_memory_options_lower_trunk_peak_gpu(precision):
    from lite3r.quant.precision import precision_support

    if not torch.cuda.is_available() or not precision_support("cuda")["fp8"][0]:
        pytest.skip("needs an FP8-capable CUDA GPU")
    images = torch.rand(1, 16, 3, 518, 518, device="cuda")

    def trunk_peak(**opts):
        rc = Reconstructor(small_vggt(), precision=precision, device="cuda", **opts)
        with torch.inference_mode():
            rc.encode(images[:, :2])  # warm-up (kernels, workspaces) outside the measurement
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            feats = rc.encode(images)
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() - base
            depth = rc.model.decode_depth(rc.frame_features(feats, 0, 4, 16), images[:, :4])[0]
        return peak, depth.float()

    peak_default, depth_default = trunk_peak()
    peak_lean, depth_lean = trunk_peak(feature_storage="fp8", mlp_chunk_tokens=2048)
    assert peak_lean < peak_default, (peak_lean, peak_default)
    rel = ((depth_lean - depth_default).abs() / depth_default.abs()).median().item()
    assert rel < 2e-2


def test_cli_reconstruct_memory_flags():
    import argparse

    from lite3r.commands import reconstruct

    p = argparse.ArgumentParser()
    reconstruct.add_arguments(p)
    args = p.parse_args(["photos", "--features", "fp8", "--mlp-chunk", "16384"])
    assert (args.features, args.mlp_chunk) == ("fp8", 16384)
    default = p.parse_args(["photos"])
    assert (default.features, default.mlp_chunk) == ("native", None)


def _key_loads(rc) -> set[str]:
    from lite3r.attention.sla import SparseLinearAttention

    return {m.config.key_loads for m in rc.model.modules() if isinstance(m, SparseLinearAttention)}


def test_memory_options_keep_sla_key_loads_lean(monkeypatch):
    """With a memory option on, SLA gathers its key blocks (TMA key loads hold one more K- and V-sized
    buffer per global layer, where the lean trunk peaks) unless the config names its key loads."""
    import lite3r.convert as convert_mod

    monkeypatch.setattr(convert_mod, "default_key_loads", lambda *a: "tma")  # as on a Hopper GPU
    kw = dict(precision="fp32", device="cpu", attention="sla", input_size=SIZE)
    assert _key_loads(Reconstructor(small_vggt(), **kw)) == {"tma"}
    assert _key_loads(Reconstructor(small_vggt(), mlp_chunk_tokens=64, **kw)) == {"gather"}
    explicit = convert_mod.Lite3RConfig(key_loads="tma")
    assert _key_loads(Reconstructor(small_vggt(), mlp_chunk_tokens=64, sla=explicit, **kw)) == {"tma"}


def test_adapter_variants_take_the_keys_token_and_the_lean_rule(monkeypatch, tmp_path):
    """An adapter variant converts through the adapter's own config: ``keys=`` still reaches it, and
    with a memory option on and no ``keys=`` it gathers, as bare conversions do."""
    from lite3r.engine.policy import lean_key_loads
    from lite3r.eval import variants

    class Loaded(Exception):
        pass

    seen = {}

    def fake_load_adapter(model, path, base_hash=None, device=None, *, key_loads=None, **kw):
        seen["key_loads"] = key_loads
        raise Loaded

    monkeypatch.setattr("lite3r.adapters.load_adapter", fake_load_adapter)
    monkeypatch.setattr("lite3r.adapters.base_hash_of", lambda model: "hash")
    monkeypatch.setattr(variants, "build_model", lambda source, device: (torch.nn.Linear(1, 1), None))
    (tmp_path / "a.safetensors").write_bytes(b"")  # parse_variant checks that the file exists
    monkeypatch.chdir(tmp_path)
    cases = {
        "lite3r:adapter=a.safetensors": None,  # the conversion's choice for the device
        "lite3r:adapter=a.safetensors:feat=fp8": "gather",
        "lite3r:adapter=a.safetensors:mlpchunk=64:keys=tma": "tma",
        "lite3r:adapter=a.safetensors:keys=gather": "gather",
    }
    for text, want in cases.items():
        with pytest.raises(Loaded):
            variants.build_reconstructor(None, variants.parse_variant(text), "cpu")
        assert seen["key_loads"] == want, text
    assert lean_key_loads("tma", True) == "tma" and lean_key_loads(None, False) is None
