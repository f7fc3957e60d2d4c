"""FP8 on the GPU (Hopper): real ``_scaled_mm`` GEMMs, compiled Triton producers, torch.compile.

    pytest -q -m "gpu or hopper" tests/test_fp8_gpu.py

What is checked: the compiled per-token quantiser is bit-exact with the format spec at VGGT sizes;
the fused LayerNorm/GELU producers match their references (codes at most one step apart, rarely);
``FP8Linear`` equals the dequantised float32 reference and QAT's fake quantisation within bf16
rounding; a whole VGGT-size block in FP8 stays close to QAT; torch.compile (default and
reduce-overhead) traces the custom ops and the ``QuantizedActivation`` carrier without graph breaks.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lite3r.models.layers.block import Block
from lite3r.models.layers.rope import RotaryPositionEmbedding2D, patch_positions
from lite3r.quant import (
    FP8_DTYPE,
    FP8FakeQuantLinear,
    FP8Linear,
    QuantizedActivation,
    apply_fp8_inference,
    apply_fp8_qat,
    apply_precision,
    compile_trunk,
    fake_quantize_rowwise,
    mark_step,
    precision_support,
    quantize_features,
    quantize_rowwise,
)

pytestmark = [pytest.mark.gpu, pytest.mark.hopper]

DEV = "cuda"
TOKENS = 1374  # tokens per frame at 518×518 (37×37 patches + camera + 4 registers)
LAYERS = {"qkv": (1024, 3072), "proj": (1024, 1024), "fc1": (1024, 4096), "fc2": (4096, 1024)}


@pytest.fixture(autouse=True)
def _no_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = saved


def _kernels():
    from lite3r.kernels import fp8_quantize, gelu_fp8, layernorm_fp8

    return fp8_quantize, layernorm_fp8, gelu_fp8


def _codes_close(q, s, q_ref, s_ref, max_mismatch=0.01):
    torch.testing.assert_close(s, s_ref, rtol=2e-6, atol=0.0)
    a, b = q.view(torch.uint8).to(torch.int16), q_ref.view(torch.uint8).to(torch.int16)
    diff = ((a & 0x7F) - (b & 0x7F)).abs()
    zero = ((a & 0x7F) == 0) | ((b & 0x7F) == 0)
    assert (((a >> 7) == (b >> 7)) | zero).all()
    assert int(diff.max()) <= 1
    assert (diff != 0).float().mean().item() <= max_mismatch


@pytest.mark.parametrize("K", [1024, 4096, 1000])
def test_quantize_kernel_bit_exact_at_vggt_sizes(K):
    fq, _, _ = _kernels()
    torch.manual_seed(K)
    x = (
        torch.randn(2 * TOKENS, K, device=DEV) * torch.logspace(-4, 4, 2 * TOKENS, device=DEV)[:, None]
    ).bfloat16()
    x[7] = 0
    q, s = fq.fp8_quantize(x)
    q_ref, s_ref = quantize_rowwise(x)
    assert torch.equal(q.view(torch.uint8), q_ref.view(torch.uint8))
    assert torch.equal(s, s_ref)
    assert torch.equal(q.float() * s, fake_quantize_rowwise(x.float()))


def test_layernorm_and_gelu_producers_at_vggt_sizes():
    _, ln, ge = _kernels()
    torch.manual_seed(0)
    x = torch.randn(8 * TOKENS, 1024, device=DEV).bfloat16() * 3
    x[:, 5] += 40  # a "massive activation" channel, as in real ViT residual streams
    w = (torch.rand(1024, device=DEV) + 0.5).bfloat16()
    b = (torch.randn(1024, device=DEV) * 0.1).bfloat16()
    _codes_close(*ln.layernorm_fp8(x, w, b, 1e-5), *ln.layernorm_fp8_reference(x, w, b, 1e-5))
    h = torch.randn(8 * TOKENS, 4096, device=DEV).bfloat16() * 2
    _codes_close(*ge.gelu_fp8(h), *ge.gelu_fp8_reference(h))
    bias = torch.randn(4096, device=DEV).bfloat16()
    _codes_close(*ge.gelu_fp8(h, bias), *ge.gelu_fp8_reference(h, bias))


@pytest.mark.parametrize("layer", list(LAYERS))
def test_fp8_linear_matches_reference_and_qat_within_bf16_rounding(layer):
    K, N = LAYERS[layer]
    torch.manual_seed(1)
    lin = nn.Linear(K, N, device=DEV)
    x = torch.randn(2, TOKENS, K, device=DEV).bfloat16()
    with torch.no_grad():
        dep = FP8Linear.from_linear(lin, mode="kernel")
        ref = FP8Linear.from_linear(lin, mode="reference")
        assert torch.equal(dep.weight_fp8.view(torch.uint8), ref.weight_fp8.view(torch.uint8))
        out = dep(x)
        expected = ref(x)  # float32 dequantised matmul over the same codes and scales
        qat = FP8FakeQuantLinear.from_linear(lin)(x.float())
    assert out.dtype == torch.bfloat16 and out.shape == (2, TOKENS, N)
    tol = dict(rtol=2**-7, atol=1e-3 * expected.abs().max().item())
    torch.testing.assert_close(out.float(), expected, **tol)
    torch.testing.assert_close(out.float(), qat, **tol)
    with torch.no_grad():  # the carrier path gives the same result as quantising inside
        q, s = _kernels()[0].fp8_quantize(x)
        assert torch.equal(dep(QuantizedActivation(q, s, x.shape)), out)


def test_fp8_linear_fast_accum_and_unaligned_shapes_raise():
    from lite3r.errors import UnsupportedError

    with pytest.raises(UnsupportedError):
        FP8Linear.from_linear(nn.Linear(1000, 24, device=DEV))
    lin = nn.Linear(1024, 1024, device=DEV)
    x = torch.randn(TOKENS, 1024, device=DEV).bfloat16()
    with torch.no_grad():
        exact = FP8Linear.from_linear(lin)(x)
        fast = FP8Linear.from_linear(lin)
        fast.use_fast_accum = True
        torch.testing.assert_close(fast(x).float(), exact.float(), rtol=2**-6, atol=1e-2)


def _vggt_block(seed=0, layer_scale=0.1) -> Block:
    torch.manual_seed(seed)
    blk = Block(
        1024,
        16,
        qk_norm=True,
        norm_eps=1e-5,
        layer_scale_init=layer_scale,
        rope=RotaryPositionEmbedding2D(100),
    )
    with torch.no_grad():
        for p in blk.parameters():
            if p.dim() == 2:
                nn.init.trunc_normal_(p, std=0.02)
    return blk.to(DEV)


def _block_input(S=2, seed=1):
    torch.manual_seed(seed)
    x = torch.randn(S, TOKENS, 1024, device=DEV)
    pos = patch_positions(S, 37, 37, num_special=5).to(DEV)
    return x, pos


def test_vggt_block_fp8_kernels_match_reference_deployment():
    """A whole VGGT-size block: real kernels vs the dequantised reference, both with bf16 weights and
    activations, compared on the block's update (layer scale 1, so bf16 rounding of the residual
    stream does not dominate). FP8 codes flip where tiny float differences cross a rounding boundary
    (each flip is a whole FP8 step), so the two agree to about a percent, not bit for bit; the
    quantisation error itself (QAT vs unquantised) is the yardstick. On CPU (float32 reference vs
    QAT) the agreement is exact: tests/test_fp8_quant.py."""
    blk = _vggt_block(layer_scale=1.0)
    qat = copy.deepcopy(blk)
    apply_fp8_qat(qat)
    dep = copy.deepcopy(blk).bfloat16()
    report = apply_fp8_inference(dep, mode="kernel")
    assert len(report.fused_layernorms) == 2 and len(report.fused_gelus) == 1
    # bf16 → fp8 weights: half the bytes, plus per-row scales and bf16 biases
    assert report.weight_bytes_after < 0.51 * report.weight_bytes_before
    ref = copy.deepcopy(blk).bfloat16()
    apply_fp8_inference(ref, mode="reference")
    x, pos = _block_input()
    x = x.bfloat16().float()  # the same input for all
    with torch.no_grad():
        d_fp32 = blk(x, pos=pos) - x  # compare the block's update, not the residual stream
        d_qat = qat(x, pos=pos) - x
        d_ref = ref(x.bfloat16(), pos=pos).float() - x
        d_dep = dep(x.bfloat16(), pos=pos).float() - x

    def rel(a, b):
        return ((a - b).norm() / b.norm()).item()

    err_dep, err_quant, err_vs_qat = rel(d_dep, d_ref), rel(d_qat, d_fp32), rel(d_dep, d_qat)
    print(
        f"kernels vs reference: {err_dep:.4f}; vs fp32 QAT: {err_vs_qat:.4f}; QAT vs unquantised: {err_quant:.4f}"
    )
    assert err_dep < 0.03 and err_dep < 0.6 * err_quant
    assert err_vs_qat < err_quant  # (CPU measurement of the reference: ≈ 0.038 vs 0.054)


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_fp8_blocks(mode):
    torch._dynamo.reset()
    net = nn.ModuleList([_vggt_block(0), _vggt_block(1)]).bfloat16()
    apply_fp8_inference(net, mode="kernel")
    net.requires_grad_(False)
    x, pos = _block_input()
    x = x.bfloat16()
    with torch.no_grad():
        eager = net[1](net[0](x, pos=pos), pos=pos)
    report = compile_trunk(net, mode, fullgraph=True)
    assert report.blocks == ["0", "1"]
    with torch.no_grad():
        for _ in range(3):
            mark_step()
            out = net[1](net[0](x, pos=pos), pos=pos).clone()
    torch.testing.assert_close(out.float(), eager.float(), rtol=2e-2, atol=2e-2)
    assert set(net.state_dict()) == {k for k in net.state_dict() if "_orig_mod" not in k}


def test_precision_support_and_apply_fp8_on_a_small_model():
    ok, reason = precision_support(DEV)["fp8"]
    assert ok, reason

    class Trunk(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([Block(256, 4, qk_norm=True) for _ in range(2)])

        def forward(self, x):
            for b in self.blocks:
                x = b(x)
            return x

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.trunk = Trunk()
            self.head = nn.Linear(256, 3)

        def trunk_modules(self):
            return ["trunk"]

        def head_modules(self):
            return ["head"]

        def forward(self, x):
            return self.head(self.trunk(x).float())

    model = Tiny()
    report = apply_precision(model, "fp8", DEV)
    assert report.fp8["linears"] and "fp8" in report.description
    assert model.trunk.blocks[0].attn.qkv.weight_fp8.dtype == FP8_DTYPE
    assert (
        model.trunk.blocks[0].norm1.weight.dtype == torch.bfloat16
        and model.head.weight.dtype == torch.float32
    )
    with torch.inference_mode():
        out = model(torch.randn(2, 50, 256, device=DEV))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_feature_quantisation_kernel_equals_reference():
    torch.manual_seed(2)
    feats = {
        4: torch.randn(1, 2, TOKENS, 2048, device=DEV).bfloat16(),
        23: torch.randn(1, 2, TOKENS, 2048, device=DEV),
    }
    a = quantize_features(feats)  # kernel on CUDA
    b = quantize_features(feats, use_kernel=False)
    for i in feats:
        assert torch.equal(a[i].data.view(torch.uint8), b[i].data.view(torch.uint8))
        assert torch.equal(a[i].scale, b[i].scale) and a[i].shape == feats[i].shape
