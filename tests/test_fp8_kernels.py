"""FP8 producer kernels (per-token quantise, LayerNorm→FP8, GELU→FP8) against their references.

On CPU the kernels run in the Triton interpreter (fp16/fp32/bf16 loads are exact there); on a GPU
they are compiled. The per-token quantiser must match the format spec bit for bit; the fused
LayerNorm/GELU kernels compute their float32 input with a different reduction order / erf, so
their FP8 codes may differ from the reference by one step where a value sits on a rounding boundary.
"""

from __future__ import annotations

from fp8_triton_env import interpreting, load_fp8_kernels, set_interpret_env

set_interpret_env()  # before anything imports triton (collection time)

import pytest  # noqa: E402
import torch  # noqa: E402

from lite3r.errors import UnsupportedError  # noqa: E402
from lite3r.quant.fp8_format import FP8_DTYPE, dequantize_rowwise, fake_quantize_rowwise  # noqa: E402

DEVICE = "cpu" if interpreting() else "cuda"
SHAPES = [(1, 1), (7, 100), (33, 64), (5, 1000), (130, 48), (3, 4096)]


@pytest.fixture(scope="module")
def k():
    return load_fp8_kernels()


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


_TRACE_SCRIPT = r"""
import torch
from torch._functorch.aot_autograd import aot_module_simplified
from lite3r.kernels import fp8_quantize as fq, gelu_fp8 as ge, layernorm_fp8 as ln

def f(x, w, b):
    q, s = fq.fp8_quantize(x)
    q2, s2 = ln.layernorm_fp8(x, w, b, 1e-5)
    q3, s3 = ge.gelu_fp8(x, b)
    return q.float() * s + q2.float() * s2 + q3.float() * s3

graphs = []
class Captured(Exception):
    pass

def backend(gm, inputs):
    def fw(g, _):
        graphs.append(g.code)
        def run(*a):
            raise Captured()
        return run
    return aot_module_simplified(gm, inputs, fw_compiler=fw)

cf = torch.compile(f, backend=backend, dynamic=True, fullgraph=True)
for M in (7, 19):
    try:
        cf(torch.randn(M, 64), torch.rand(64), torch.rand(64))
    except Captured:
        pass
code = graphs[-1]
assert code.count("triton_kernel_wrapper_functional(") == 3, code
assert "lite3r" not in code, code  # traced into the kernels, not an opaque op
print("TRACED", len(graphs))
"""


@pytest.mark.slow  # ~15 s: a fresh interpreter importing torch + dynamo
def test_custom_ops_trace_into_kernels_under_compile_with_dynamic_shapes():
    """fullgraph torch.compile traces the three ops down to Triton kernel HOPs (what Inductor
    schedules), with a symbolic token count. Compiled (not interpreted) kernels are needed for that,
    so it runs in a subprocess without TRITON_INTERPRET; nothing is launched."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run(
        [sys.executable, "-c", _TRACE_SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0 and "TRACED" in r.stdout, r.stdout[-2000:] + r.stderr[-4000:]
