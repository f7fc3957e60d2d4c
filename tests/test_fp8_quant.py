"""FP8 format, QAT fake quantisation, deployment modules (reference mode) and precision policy on CPU.

The central claim: what QAT simulates is exactly what deployment computes — same scales, same
rounding — shown bit for bit in float32 (the reference mode of the deployment modules is a
dequantised float32 matmul over the FP8 codes and scales they store).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lite3r.errors import UnsupportedError
from lite3r.models.layers.block import Block
from lite3r.quant import (
    AMAX_EPS,
    FP8_DTYPE,
    FP8_MAX,
    FP8FakeQuantLinear,
    FP8Linear,
    GeluFP8,
    LayerNormFP8,
    QuantizedActivation,
    apply_fp8_inference,
    apply_fp8_qat,
    apply_precision,
    check_precision,
    compile_trunk,
    dequantize_activation,
    dequantize_features,
    dequantize_frames,
    dequantize_rowwise,
    fake_quantize_rowwise,
    fake_quantize_ste,
    feature_bytes,
    precision_support,
    quantize_features,
    quantize_rowwise,
    remove_fp8_qat,
    select_linears,
)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.uint8) if t.dtype == FP8_DTYPE else t.contiguous().view(torch.int32)


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(_bits(a), _bits(b))


def _random_block(seed: int = 0, dim: int = 64, heads: int = 4) -> Block:
    torch.manual_seed(seed)
    blk = Block(dim, heads, qk_norm=True, layer_scale_init=0.5)
    with torch.no_grad():
        for p in blk.parameters():
            p.normal_(0.0, 0.2)
    return blk


# ---- the format ------------------------------------------------------------------------------------


def test_scales_follow_the_spec():
    x = torch.tensor([[1.0, -3.5, 0.25], [0.0, 0.0, 0.0], [1e-15, -2e-14, 0.0], [448.0, 1.0, -1.0]])
    q, scale = quantize_rowwise(x)
    amax = torch.tensor([[3.5], [AMAX_EPS], [AMAX_EPS], [448.0]], dtype=torch.float32)
    assert q.dtype == FP8_DTYPE and scale.dtype == torch.float32 and scale.shape == (4, 1)
    assert _same_bits(scale, amax / FP8_MAX)
    # the row amax maps to ±448 exactly; all-zero and sub-eps rows quantise to exact zeros
    assert q[0].float().abs().max() == FP8_MAX and q[3, 0].float() == FP8_MAX
    assert torch.equal(q[1].float(), torch.zeros(3)) and torch.equal(q[2].float(), torch.zeros(3))
    deq = dequantize_rowwise(q, scale)
    assert torch.isfinite(deq).all() and torch.equal(deq[1], torch.zeros(3))


def test_quantisation_is_rne_of_x_times_inverse_scale():
    torch.manual_seed(0)
    x = torch.randn(64, 96) * torch.logspace(-6, 6, 64)[:, None]
    q, _ = quantize_rowwise(x)
    amax = x.abs().amax(-1, keepdim=True).clamp_min(AMAX_EPS)
    v = (x * (FP8_MAX / amax)).clamp(-FP8_MAX, FP8_MAX)
    grid = torch.arange(256, dtype=torch.uint8).view(FP8_DTYPE).float()
    grid = grid[grid.isfinite()].unique()
    # nearest representable value (ties to even are checked on exact midpoints below)
    nearest = grid[(v.reshape(-1, 1) - grid).abs().argmin(dim=1)].reshape(v.shape)
    assert torch.equal(q.float().abs(), nearest.abs())
    assert ((q.float() - v).abs() <= (nearest - v).abs()).all()
    # a midpoint between 1.0 and 1.125 rounds to the even code (1.0), between 1.125 and 1.25 to 1.25
    ties = torch.tensor([[1.0625, 1.1875, 448.0]])
    assert quantize_rowwise(ties)[0].float().tolist() == [[1.0, 1.25, 448.0]]


def test_huge_and_tiny_rows_stay_finite_and_relative():
    x = torch.tensor([[3e38, -1e38, 1.0], [1e-7, -5e-8, 2e-8], [-2.0, 0.5, 0.0]])
    deq = fake_quantize_rowwise(x)
    assert torch.isfinite(deq).all()
    rel = (deq - x).abs() / x.abs().amax(-1, keepdim=True)
    assert (rel <= 2.0**-4).all()  # half an E4M3 step relative to the row amax


def test_fake_quant_equals_dequantised_deployment_storage_bit_for_bit():
    torch.manual_seed(1)
    lin = nn.Linear(80, 48)
    fq_w = fake_quantize_rowwise(lin.weight.detach())
    fp8 = FP8Linear.from_linear(lin, mode="reference")
    assert fp8.weight_fp8.dtype == FP8_DTYPE and fp8.weight_scale.shape == (1, 48)
    assert _same_bits(fp8.weight_fp8.float() * fp8.weight_scale.t(), fq_w)
    x = torch.randn(3, 7, 80) * 5
    a = QuantizedActivation(*quantize_rowwise(x.reshape(-1, 80)), x.shape)
    assert _same_bits(dequantize_activation(a), fake_quantize_rowwise(x))


# ---- QAT -------------------------------------------------------------------------------------------


def test_ste_gradients_are_identity():
    x = (torch.randn(5, 33) * 3).requires_grad_()
    y = fake_quantize_ste(x)
    assert _same_bits(y.detach(), fake_quantize_rowwise(x.detach()))
    g = torch.randn_like(y)
    y.backward(g)
    assert torch.equal(x.grad, g)


def test_fake_quant_linear_forward_and_gradients():
    torch.manual_seed(2)
    lin = nn.Linear(32, 16)
    fq = FP8FakeQuantLinear.from_linear(lin)
    assert fq.weight is lin.weight and fq.bias is lin.bias  # shared, not copied
    assert set(fq.state_dict()) == {"weight", "bias"}
    x = torch.randn(4, 9, 32, requires_grad=True)
    out = fq(x)
    w_q = fake_quantize_rowwise(lin.weight.detach())
    x_q = fake_quantize_rowwise(x.detach())
    assert _same_bits(out.detach(), F.linear(x_q, w_q, lin.bias.detach()))
    g = torch.randn_like(out)
    out.backward(g)
    torch.testing.assert_close(x.grad, g @ w_q, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(
        lin.weight.grad, g.reshape(-1, 16).t() @ x_q.reshape(-1, 32), rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(lin.bias.grad, g.reshape(-1, 16).sum(0))


def test_apply_fp8_qat_skip_list_and_state_dict_keys():
    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(16, 48)
            self.proj_lin = nn.Linear(16, 16)  # SLA linear-branch projection: stays unquantised

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.trunk = nn.ModuleDict({"attn": Attn(), "fc": nn.Linear(16, 16)})
            self.head = nn.Linear(16, 3)

    net = Net()
    keys = list(net.state_dict())
    before = copy.deepcopy(net.state_dict())
    wrapped = apply_fp8_qat(net, modules=["trunk"])
    assert wrapped == ["trunk.attn.qkv", "trunk.fc"]
    assert type(net.trunk.attn.proj_lin) is nn.Linear and type(net.head) is nn.Linear
    assert isinstance(net.trunk.attn.qkv, FP8FakeQuantLinear)
    assert list(net.state_dict()) == keys
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert apply_fp8_qat(net, modules=["trunk"]) == wrapped  # idempotent
    assert apply_fp8_qat(net, modules=["trunk"], skip=("fc",)) == ["trunk.attn.qkv", "trunk.attn.proj_lin"]
    assert select_linears(net, ["trunk"], skip=())[1] == []
    assert set(remove_fp8_qat(net)) == {"trunk.attn.qkv", "trunk.attn.proj_lin", "trunk.fc"}
    assert not any(isinstance(m, FP8FakeQuantLinear) for m in net.modules())
    with pytest.raises(ValueError, match="no submodule"):
        apply_fp8_qat(net, modules=["nope"])


# ---- deployment modules, reference mode ------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
def test_fp8_linear_reference_matches_qat_bit_for_bit(bias):
    torch.manual_seed(3)
    lin = nn.Linear(64, 32, bias=bias)
    qat = FP8FakeQuantLinear.from_linear(copy.deepcopy(lin))
    dep = FP8Linear.from_linear(lin, mode="reference")
    x = torch.randn(2, 11, 64) * 4
    x[0, 3] = 0.0  # an all-zero token
    with torch.no_grad():
        expected = qat(x)
        assert _same_bits(dep(x), expected)
        assert _same_bits(dep(QuantizedActivation(*quantize_rowwise(x.reshape(-1, 64)), x.shape)), expected)


def test_block_reference_deployment_equals_qat_bit_for_bit():
    blk = _random_block()
    qat, dep = copy.deepcopy(blk), copy.deepcopy(blk)
    apply_fp8_qat(qat)
    report = apply_fp8_inference(dep, mode="reference")
    assert report.linears == ["attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"]
    assert report.fused_layernorms == ["norm1", "norm2"] and report.fused_gelus == ["mlp.act"]
    assert report.standalone_quant == ["attn.proj"]
    assert isinstance(dep.norm1, LayerNormFP8) and isinstance(dep.mlp.act, GeluFP8)
    assert dep.norm1.weight is blk.norm1.weight or torch.equal(dep.norm1.weight, blk.norm1.weight)
    torch.manual_seed(4)
    x = torch.randn(2, 37, 64)
    x[1, 5] = 0.0
    with torch.no_grad():
        a, b = qat(x), dep(x)
    assert _same_bits(a, b)
    with torch.no_grad():  # and FP8 changes the output only by quantisation noise
        ref = blk(x)
    assert (a - ref).abs().max() < 0.1 * ref.abs().max()


def test_weight_bytes_report():
    blk = _random_block(dim=64)
    report = apply_fp8_inference(blk, mode="reference")
    n_w = sum(o * i for o, i in [(192, 64), (64, 64), (256, 64), (64, 256)])
    n_b = 192 + 64 + 256 + 64
    out_rows = 192 + 64 + 256 + 64
    assert report.weight_bytes_before == 4 * (n_w + n_b)
    # reference mode keeps float32 biases (its output dtype); kernel mode stores them in bf16
    assert report.weight_bytes_after == n_w + 4 * out_rows + 4 * n_b
    assert "4 linears" in report.summary()


def test_fp8_inference_skip_list_and_unfused_blocks():
    class CustomBlock(Block):
        def forward(self, x, pos=None, frame_len=None):
            return super().forward(x, pos, frame_len)

    torch.manual_seed(5)
    blk = CustomBlock(64, 4)
    report = apply_fp8_inference(blk, mode="reference", skip=("mlp.fc2",))
    assert report.skipped == ["mlp.fc2"] and type(blk.mlp.fc2) is nn.Linear
    assert report.fused_layernorms == [] and report.fused_gelus == []  # unknown forward: no fusion
    assert type(blk.norm1) is nn.LayerNorm and report.standalone_quant == report.linears
    with torch.no_grad():
        assert torch.isfinite(blk(torch.randn(1, 5, 64))).all()


def test_fast_accumulation_is_an_explicit_recorded_option():
    from lite3r.quant import FP8_FAST_ACCUM_DEFAULT, PrecisionReport

    blk = _random_block(9)
    report = apply_fp8_inference(blk, mode="reference", fast_accum=True)
    assert report.fast_accum and "fast accumulation" in report.summary()
    assert all(m.use_fast_accum for m in blk.modules() if isinstance(m, FP8Linear))
    assert "fast_acc" in repr(blk.attn.qkv)
    assert apply_fp8_inference(_random_block(9), mode="reference").fast_accum is False
    fp8 = {"fused_layernorms": ["norm1"], "fast_accum": True}
    desc = PrecisionReport("fp8", "cuda:0", "bfloat16", "float32", fp8=fp8).description
    assert "fast accumulation" in desc and "LN/GELU→FP8 fused" in desc
    assert "fast" not in PrecisionReport("fp8", "cuda:0", "bfloat16", "float32", fp8={}).description
    assert FP8_FAST_ACCUM_DEFAULT is False  # until the GPU measurements say otherwise
    with pytest.raises(ValueError, match="fp8 only"):
        apply_precision(_TinyModel(), "bf16", "cpu", fp8_fast_accum=False)


def test_unsupported_shapes_and_cpu_kernel_mode_raise():
    with pytest.raises(UnsupportedError, match="multiples of 16"):
        FP8Linear.from_linear(nn.Linear(9, 32), mode="reference")
    net = nn.Sequential(nn.Linear(32, 32), nn.Linear(32, 9))
    with pytest.raises(UnsupportedError, match="skip list"):
        apply_fp8_inference(net, mode="reference")
    assert type(net[0]) is nn.Linear  # validated before anything changed
    with pytest.raises(UnsupportedError, match="CUDA"):
        FP8Linear.from_linear(nn.Linear(32, 32), mode="kernel")
    with pytest.raises(UnsupportedError, match="CUDA"):
        apply_fp8_inference(nn.Sequential(nn.Linear(32, 32)), mode="kernel")
    with pytest.raises(ValueError, match="unknown FP8 mode"):
        FP8Linear(32, 32, mode="fast")


def test_casting_never_touches_fp8_storage():
    dep = FP8Linear.from_linear(nn.Linear(32, 16), mode="reference")
    q, s, b = dep.weight_fp8.clone(), dep.weight_scale.clone(), dep.bias.clone()
    dep.to(torch.bfloat16)
    dep.half()
    dep.float()
    assert dep.weight_fp8.dtype == FP8_DTYPE and _same_bits(dep.weight_fp8, q)
    assert _same_bits(dep.weight_scale, s) and _same_bits(dep.bias, b)
    assert set(dep.state_dict()) == {"weight_fp8", "weight_scale", "bias"}


def test_feature_storage_roundtrip_and_bytes():
    torch.manual_seed(6)
    feats = {
        "layers": [torch.randn(1, 2, 10, 32).bfloat16() for _ in range(4)],
        "idx": 3,
        "pos": torch.arange(5),
    }
    q = quantize_features(feats)
    assert all(isinstance(t, QuantizedActivation) for t in q["layers"]) and q["idx"] == 3
    assert torch.equal(q["pos"], feats["pos"])
    back = dequantize_features(q, torch.float32)
    for a, b in zip(back["layers"], feats["layers"]):
        assert a.shape == b.shape and a.dtype == torch.float32
        assert _same_bits(a, fake_quantize_rowwise(b.float()))
    assert feature_bytes(q["layers"]) == 4 * (20 * 32 + 20 * 4)
    chunk = dequantize_frames(q, 1, 2, torch.float32)  # one frame, as a per-frame head chunk reads it
    for a, b in zip(chunk["layers"], back["layers"]):
        assert a.shape == (1, 1, 10, 32) and _same_bits(a, b[:, 1:2])
    assert torch.equal(chunk["pos"], feats["pos"])  # 1-D tensors pass through
    assert feature_bytes(feats["layers"]) == 4 * 20 * 32 * 2


# ---- precision policy ------------------------------------------------------------------------------


def test_precision_support_on_cpu_refuses_fp8_with_reason():
    support = precision_support("cpu")
    assert set(support) == {"fp32", "bf16", "fp8"}
    assert support["fp32"][0] and support["bf16"][0]
    ok, reason = support["fp8"]
    assert not ok and "FP8 tensor cores" in reason and "CPU" in reason
    with pytest.raises(UnsupportedError, match="fp8 is not supported on cpu") as e:
        check_precision("fp8", "cpu")
    assert "bf16" in str(e.value)  # the fix names what does run
    with pytest.raises(UnsupportedError, match="unknown precision"):
        check_precision("int4", "cpu")
    check_precision("bf16", "cpu")


class _TinyModel(nn.Module):
    family = "vggt"

    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16))
        self.head = nn.Linear(16, 3)

    def trunk_modules(self):
        return ["trunk"]

    def head_modules(self):
        return ["head"]

    def forward(self, x):
        return self.head(self.trunk(x).float())  # heads cast their own inputs (model protocol)


def test_apply_precision_bf16_trunk_fp32_heads_on_cpu():
    model = _TinyModel()
    report = apply_precision(model, "bf16", "cpu")
    assert report.trunk_dtype == "bfloat16" and report.head_dtype == "float32" and report.fp8 is None
    assert all(p.dtype == torch.bfloat16 for p in model.trunk.parameters())
    assert all(p.dtype == torch.float32 for p in model.head.parameters())
    assert not any(p.requires_grad for p in model.parameters())
    out = model(torch.randn(4, 16))  # float32 in: the trunk hook casts to bf16
    assert out.dtype == torch.float32
    assert "bf16" in report.description
    with pytest.raises(ValueError, match="already applied"):
        apply_precision(model, "fp32", "cpu")
    with pytest.raises(UnsupportedError):
        apply_precision(_TinyModel(), "fp8", "cpu")


def test_apply_precision_fp32():
    model = _TinyModel().to(torch.bfloat16)
    report = apply_precision(model, "fp32", "cpu")
    assert report.trunk_dtype == "float32" and all(p.dtype == torch.float32 for p in model.parameters())
    assert model(torch.randn(2, 16)).dtype == torch.float32


# ---- compile ---------------------------------------------------------------------------------------


def test_compile_trunk_modes_and_tracing_of_fp8_reference_blocks():
    with pytest.raises(ValueError, match="unknown compile mode"):
        compile_trunk(nn.Linear(2, 2), "fast")
    net = nn.ModuleDict({"blocks": nn.ModuleList([_random_block(7), _random_block(8)])})
    assert compile_trunk(net, "none").blocks == []
    with pytest.raises(UnsupportedError, match="CUDA"):
        compile_trunk(net, "reduce-overhead")
    apply_fp8_inference(net, mode="reference")
    x = torch.randn(1, 9, 64)
    with torch.no_grad():
        eager = net["blocks"][1](net["blocks"][0](x))
    torch._dynamo.reset()
    report = compile_trunk(net, "default", modules=["blocks"], backend="eager", fullgraph=True)
    assert report.blocks == ["blocks.0", "blocks.1"]
    with torch.no_grad():  # fullgraph: the QuantizedActivation carrier traces without graph breaks
        compiled = net["blocks"][1](net["blocks"][0](x))
    assert _same_bits(compiled, eager)
    assert set(net.state_dict()) == {k for k in net.state_dict() if "_orig_mod" not in k}
