"""FP8 producer kernels (per-token quantise, LayerNorm→FP8, GELU→FP8) against their references.

On CPU the kernels run in the Triton interpreter (fp16/fp32/bf16 loads are exact there); on a GPU
they are compiled. The per-token quantiser must match the format spec bit for bit; the fused
LayerNorm/GELU kernels compute their float32 input with a different reduction order / erf, so
their FP8 codes may differ from the reference by one step where a value sits on a rounding boundary.
"""

from __future__ import annotations

import math

from fp8_triton_env import interpreting, load_fp8_kernels, set_interpret_env

set_interpret_env()  # before anything imports triton (collection time)

import pytest  # noqa: E402
import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from lite3r.errors import UnsupportedError  # noqa: E402
from lite3r.quant.fp8_format import FP8_DTYPE, dequantize_rowwise, fake_quantize_rowwise  # noqa: E402

DEVICE = "cpu" if interpreting() else "cuda"
SHAPES = [(1, 1), (7, 100), (33, 64), (5, 1000), (130, 48), (3, 4096)]


@pytest.fixture(scope="module")
def k():
    return load_fp8_kernels()


_gelu_mod = None  # the (possibly re-imported) gelu_fp8 module, for _gelu_probe_kernel


def _data(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    M, K = shape
    x = torch.randn(M, K, generator=g) * torch.logspace(-3, 3, M)[:, None]
    if M > 2:
        x[1] = 0.0  # an all-zero row
    if M > 4:
        x[3] *= 1e12 if dtype == torch.float32 else 1e2  # huge (fp16 stays finite)
        x[4] *= 1e-9 if dtype == torch.float32 else 1e-4  # tiny (below AMAX_EPS for fp32)
    return x.to(dtype).to(DEVICE)


def _sign_magnitude(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    b = q.view(torch.uint8).to(torch.int16)
    return b >> 7, b & 0x7F


def assert_fp8_close(q, s, q_ref, s_ref, max_mismatch=0.01):
    """Scales within a few float32 ulp; FP8 codes equal or one step apart, and rarely apart."""
    assert (
        q.dtype == FP8_DTYPE
        and s.dtype == torch.float32
        and q.shape == q_ref.shape
        and s.shape == s_ref.shape
    )
    torch.testing.assert_close(s, s_ref, rtol=2e-6, atol=0.0)
    sign, mag = _sign_magnitude(q)
    sign_r, mag_r = _sign_magnitude(q_ref)
    diff = (mag - mag_r).abs()
    zero = (mag == 0) | (mag_r == 0)
    assert ((sign == sign_r) | zero).all()
    assert (diff <= 1).all()
    assert (diff != 0).float().mean().item() <= max_mismatch


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_quantize_kernel_is_bit_exact(k, shape, dtype):
    x = _data(shape, dtype, seed=shape[0])
    q, s = k["fp8_quantize"].fp8_quantize(x)
    q_ref, s_ref = k["fp8_quantize"].fp8_quantize_reference(x)
    assert q.shape == shape and s.shape == (shape[0], 1)
    assert torch.equal(q.view(torch.uint8), q_ref.view(torch.uint8))
    assert torch.equal(s, s_ref)
    # the deployment's dequantised activation is exactly what QAT's fake quantisation produces
    assert torch.equal(dequantize_rowwise(q, s), fake_quantize_rowwise(x.float()))


def test_quantize_kernel_leading_dims_strides_and_empty(k):
    fq = k["fp8_quantize"]
    x = _data((24, 96), torch.float32).reshape(2, 12, 96)
    q, s = fq.fp8_quantize(x)
    assert q.shape == (24, 96) and torch.equal(
        q.view(torch.uint8), fq.fp8_quantize_reference(x)[0].view(torch.uint8)
    )
    wide = _data((10, 160), torch.float16)
    view = wide[:, :80]  # row stride 160, unit column stride: read in place
    assert torch.equal(
        fq.fp8_quantize(view)[0].view(torch.uint8), fq.fp8_quantize_reference(view)[0].view(torch.uint8)
    )
    cols = wide.t()[:80]  # non-unit column stride: copied first
    assert torch.equal(fq.fp8_quantize(cols)[1], fq.fp8_quantize_reference(cols)[1])
    q, s = fq.fp8_quantize(torch.zeros(0, 64, device=DEVICE))
    assert q.shape == (0, 64) and s.shape == (0, 1)
    with pytest.raises(UnsupportedError, match="single-pass"):
        fq.fp8_quantize(torch.zeros(2, 20000, device=DEVICE))
    with pytest.raises(ValueError):
        fq.fp8_quantize(torch.zeros(4, 0, device=DEVICE))


def test_rounding_covers_every_code_and_every_tie(k):
    # all finite E4M3 values, the midpoints between neighbours and their float32 neighbours, scaled so
    # each row's amax is 448 (inv = 1 exactly): exercises round-to-nearest-even and subnormals
    grid = torch.arange(256, dtype=torch.uint8).view(FP8_DTYPE).float()
    grid = grid[grid.isfinite()].unique()
    mids = (grid[1:] + grid[:-1]) / 2
    vals = torch.cat([grid, mids, mids.nextafter(torch.tensor(1e9)), mids.nextafter(torch.tensor(-1e9))])
    vals = vals[vals.abs() < 448]
    rows = vals[: (vals.numel() // 63) * 63].reshape(-1, 63)
    x = torch.cat([rows, torch.full((rows.shape[0], 1), 448.0)], dim=1).to(DEVICE)
    q, _ = k["fp8_quantize"].fp8_quantize(x)
    assert torch.equal(q.view(torch.uint8).cpu(), x.cpu().to(FP8_DTYPE).view(torch.uint8))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("affine", ["both", "weight", "none"])
def test_layernorm_fp8_matches_reference(k, shape, affine):
    x = _data(shape, torch.float16 if shape[1] > 1 else torch.float32, seed=shape[1])
    K = shape[1]
    g = torch.Generator().manual_seed(K)
    w = (torch.randn(K, generator=g) * 0.5 + 1).to(DEVICE) if affine != "none" else None
    b = (torch.randn(K, generator=g) * 0.1).to(DEVICE) if affine == "both" else None
    ln = k["layernorm_fp8"]
    q, s = ln.layernorm_fp8(x, w, b, 1e-6)
    q_ref, s_ref = ln.layernorm_fp8_reference(x, w, b, 1e-6)
    assert_fp8_close(q, s, q_ref, s_ref)


def test_layernorm_fp8_bf16_params_and_leading_dims(k):
    x = _data((40, 256), torch.bfloat16).reshape(2, 20, 256)
    w = torch.rand(256, device=DEVICE).bfloat16() + 0.5
    b = torch.randn(256, device=DEVICE).bfloat16() * 0.1
    q, s = k["layernorm_fp8"].layernorm_fp8(x, w, b, 1e-5)
    assert_fp8_close(q, s, *k["layernorm_fp8"].layernorm_fp8_reference(x, w, b, 1e-5))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_gelu_fp8_matches_reference(k, shape, with_bias):
    h = _data(shape, torch.float32, seed=3 * shape[0])
    h = h / h.abs().amax(-1, keepdim=True).clamp_min(1e-6) * 6  # GELU's interesting range, ±6
    if shape[0] > 2:
        h[1] = 0.0
    bias = (torch.randn(shape[1]) * 0.5).to(DEVICE) if with_bias else None
    ge = k["gelu_fp8"]
    q, s = ge.gelu_fp8(h, bias)
    assert_fp8_close(q, s, *ge.gelu_fp8_reference(h, bias))


def test_gelu_fp8_half_inputs(k):
    h = (_data((64, 512), torch.float32) / 100).clamp(-8, 8).to(torch.bfloat16)
    q, s = k["gelu_fp8"].gelu_fp8(h)
    assert_fp8_close(q, s, *k["gelu_fp8"].gelu_fp8_reference(h))


@triton.jit
def _gelu_probe_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n)
    tl.store(y_ptr + offs, _gelu_mod.gelu_f32(x), mask=offs < n)


def test_gelu_f32_is_exact_gelu_to_a_few_ppm(k):
    """The kernel's float32 GELU (polynomial log2 Φ + ex2, no erf) against float64 x·Φ(x): relative
    error ≤ 4e-6 (2.6e-6 by design, plus the GPU's ex2.approx), exact 0 at 0, the tails handled."""
    global _gelu_mod
    _gelu_mod = k["gelu_fp8"]
    x = torch.cat(
        [
            torch.linspace(-12, 12, 48001, dtype=torch.float64),
            torch.tensor([0.0, -0.0, 1e-30, -1e-30, 5.999, 6.0, 6.001, -6.0, 1e4, -1e4], dtype=torch.float64),
        ]
    ).float()
    y = torch.empty_like(x, device=DEVICE)
    _gelu_probe_kernel[(triton.cdiv(x.numel(), 1024),)](x.to(DEVICE), y, x.numel(), BLOCK=1024)
    y = y.cpu().double()
    xd = x.double()
    exact = xd * 0.5 * torch.special.erfc(-xd / 2**0.5)
    big = exact.abs() > 1e-7
    rel = ((y - exact).abs() / exact.abs())[big]
    assert rel.max().item() < 4e-6, rel.max().item()
    assert ((y - exact).abs()[~big] <= 6e-9 + 1e-6 * exact.abs()[~big]).all()  # |x| > 6 tail, ±0, tiny
    assert y[x == 0].eq(0).all()
    beyond = x > 6
    assert torch.equal(y[beyond], xd[beyond])  # GELU(x) = x in float32 there
    from scipy.special import log_ndtr  # the stored coefficients fit log2 Φ(-t) on [0, 6]

    t = torch.linspace(0, _gelu_mod.GELU_TAIL_T, 10001, dtype=torch.float64)
    poly = sum(c * t**i for i, c in enumerate(_gelu_mod.GELU_LOG2_PHI_COEFFS))
    assert (poly - torch.from_numpy(log_ndtr(-t.numpy())) / math.log(2)).abs().max() < 6e-7


# ---- torch.compile: opaque custom ops ------------------------------------------------------------


class _GraphCapture:
    """A torch.compile backend that records each graph after AOT tracing (functionalised ATen + our
    ops, what Inductor receives) and runs it eagerly, like ``aot_eager``."""

    def __init__(self):
        self.codes: list[str] = []

    def __call__(self, gm, example_inputs):
        from torch._functorch.aot_autograd import aot_module_simplified

        def fw(g, _inputs):
            self.codes.append(g.code)
            return g.forward

        return aot_module_simplified(gm, example_inputs, fw_compiler=fw)


def test_custom_ops_are_opaque_under_fullgraph_compile_with_dynamic_shapes(k):
    """fullgraph torch.compile with a symbolic token count: one graph for two sizes, holding our three
    ops as opaque calls (nothing traced into Triton, so Inductor never re-generates the kernels),
    and running it launches the same kernels as eager mode (here interpreted): identical results."""
    fq, ln, ge = k["fp8_quantize"], k["layernorm_fp8"], k["gelu_fp8"]

    def f(x, w, b):
        q, s = fq.fp8_quantize(x)
        q2, s2 = ln.layernorm_fp8(x, w, b, 1e-5)
        q3, s3 = ge.gelu_fp8(x, b)
        return q.float() * s + q2.float() * s2 + q3.float() * s3

    torch._dynamo.reset()
    capture = _GraphCapture()
    cf = torch.compile(f, backend=capture, dynamic=True, fullgraph=True)
    g = torch.Generator().manual_seed(0)
    w, b = torch.rand(64, generator=g).to(DEVICE), torch.rand(64, generator=g).to(DEVICE)
    for M in (7, 19):
        x = torch.randn(M, 64, generator=g).to(DEVICE)
        assert torch.equal(cf(x, w, b), f(x, w, b))
    assert len(capture.codes) == 1, "a new token count must not recompile"
    code = capture.codes[0]
    for op in ("fp8_quantize_rowwise", "layernorm_fp8", "gelu_fp8"):
        assert code.count(f"torch.ops.lite3r.{op}.default(") == 1, code
    assert "triton_kernel_wrapper" not in code, code


def test_fp8_block_compiles_fullgraph_with_kernel_ops(k, monkeypatch):
    """A whole trunk ``Block`` with the deployment modules in kernel mode, compiled per block like
    ``compile_trunk`` does (fullgraph, dynamic shapes): no graph break, the fused producers and
    standalone quantiser appear as our ops, the GEMMs as ``_scaled_mm``, and it equals eager mode.
    CPU stand-ins: the Triton interpreter and PyTorch's CPU ``_scaled_mm`` (kernel mode refuses
    CPU tensors in the library; the check is lifted for this test only). Numerics of the real GPU
    path: tests/test_fp8_gpu.py."""
    import lite3r.quant.fp8_modules as fm
    from lite3r.models.layers.block import Block
    from lite3r.models.layers.rope import RotaryPositionEmbedding2D, patch_positions
    from lite3r.quant import apply_fp8_inference, compile_trunk

    monkeypatch.setattr(fm, "_require_cuda", lambda t, what: None)
    torch.manual_seed(0)
    blocks = torch.nn.ModuleList(
        [
            Block(64, 4, qk_norm=True, layer_scale_init=0.5, rope=RotaryPositionEmbedding2D(100))
            for _ in range(2)
        ]
    )
    blocks = blocks.to(DEVICE, torch.bfloat16).requires_grad_(False)
    report = apply_fp8_inference(blocks, mode="reference")
    assert len(report.fused_layernorms) == 4 and len(report.fused_gelus) == 2
    for m in blocks.modules():
        if isinstance(m, fm.FP8Linear | fm.LayerNormFP8 | fm.GeluFP8):
            m.mode = "kernel"

    def run(S):
        x = torch.randn(S, 5 + 9, 64, device=DEVICE).bfloat16()
        pos = patch_positions(S, 3, 3, num_special=5).to(DEVICE)
        with torch.no_grad():
            return blocks[1](blocks[0](x, pos=pos), pos=pos)

    torch.manual_seed(1)
    eager = [run(3), run(4)]  # (S = 2 would duck-size with the 2 of pos [S, N, 2] and recompile once)
    torch._dynamo.reset()
    capture = _GraphCapture()
    assert compile_trunk(blocks, "default", backend=capture, fullgraph=True, dynamic=True).blocks == [
        "0",
        "1",
    ]
    torch.manual_seed(1)
    compiled = [run(3), run(4)]
    for a, b in zip(compiled, eager, strict=True):
        assert torch.equal(a, b)
    assert len(capture.codes) == 1, "both blocks and both sizes share one graph"
    code = capture.codes[0]
    assert code.count("torch.ops.lite3r.layernorm_fp8.default(") == 2, code
    assert code.count("torch.ops.lite3r.gelu_fp8.default(") == 1, code
    assert code.count("torch.ops.lite3r.fp8_quantize_rowwise.default(") == 1, code  # attn.proj
    assert code.count("torch.ops.aten._scaled_mm.default(") == 4, code
