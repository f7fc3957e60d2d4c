"""Fused (bias +) exact GELU → FP8: h [M, K] → (q fp8 [M, K], scale fp32 [M, 1]) of GELU(h + b).

Replaces ``mlp.act`` between ``fc1`` and ``fc2``: fc1's bf16 output is read once and fc2's FP8 input
is written once, instead of GELU writing bf16 and the quantiser re-reading it. The optional ``bias``
lets fc1 skip its own bias add (the module path keeps the bias in fc1's GEMM epilogue by default).

GELU is the exact (erf) GELU, x·Φ(x), evaluated in float32 and never rounded to bf16, but not with
``erf``: libdevice's erff selects between two coefficient sets per element and costs ~30 SASS
instructions, which made this kernel compute-bound (48 instructions per element in all, 1.84 TB/s on
the H100, slower than PyTorch's bf16 GELU). Here, with t = |x| and Q(t) = Φ(-t)::

    GELU(x) = max(x, 0) - t' · Q(t'),      t' = min(t, 6),  Q(t') = 2^P(t')

(x ≥ 0: x - x·Q = x·Φ(x); x < 0: -|x|·Q = x·Φ(x)). P is a degree-10 polynomial fitted to
log2 Φ(-t) on [0, 6] (weighted least squares in the Chebyshev sense, coefficients rounded to float32
one by one, lower ones refitted; max error 5.3e-7 in log2 units): one ``min`` (with the |x|), ten
FMAs, one ex2, one ``max`` and one FMA: the whole kernel compiles to 26.5 SASS instructions per
element on sm_90 (static count, benchmarks/probes/fp8_kernel_sass.py; 48 with erff), few enough to
stay memory-bound. Relative error of GELU in float32 ≤ 2.6e-6 (≤ 1.2e-6 for |x| < 4; the GPU's
ex2.approx adds 2 ulp), against 3.9e-3 for a bf16 rounding and 6e-2 for the FP8 step. Beyond |x| = 6: x - 6·Q(6) = x exactly for x > 6 (6·Q(6) =
6e-9 is below half an ulp), and -6·Q(6) = -6e-9 for x < -6 (an absolute error below 6e-9, where
the float32 reference 0.5·x·(1 + erf(x/√2)) itself cancels to 0).

Matches ``gelu_fp8_reference`` (float32 ``F.gelu``) up to those float32 differences: scales agree to
a few ulp and FP8 codes differ only where a value sits on an FP8 rounding boundary.
Registered as ``lite3r::gelu_fp8``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from lite3r.quant.fp8_format import quantize_rowwise

from .fp8_common import (
    device_guard,
    quantize_tile_rows,
    register_custom_op,
    row_tiling,
    running_in_interpreter,
)
from .fp8_quantize import check_rows, rowwise_outputs, unit_stride_rows

# log2 Φ(-t) ≈ Σ c_i t^i on [0, GELU_TAIL_T] (see the module docstring); c_0 … c_10.
GELU_LOG2_PHI_COEFFS = (
    -0.9999995231628418,
    -1.151119351387024,
    -0.45911723375320435,
    -0.05271168425679207,
    0.007299992721527815,
    -0.00026072034961543977,
    -0.00016424438217654824,
    4.527267810772173e-05,
    -5.938350568612805e-06,
    4.1466140032753174e-07,
    -1.2316852426863534e-08,
)
GELU_TAIL_T = 6.0

_C = [tl.constexpr(c) for c in GELU_LOG2_PHI_COEFFS]
_C0, _C1, _C2, _C3, _C4, _C5, _C6, _C7, _C8, _C9, _C10 = _C
_TAIL_T = tl.constexpr(GELU_TAIL_T)


@triton.jit
def gelu_f32(x):
    """Exact GELU x·Φ(x) of a float32 tensor (relative error ≤ 2.6e-6); see the module docstring."""
    t = tl.minimum(tl.abs(x), _TAIL_T)
    p = tl.fma(t, _C10, _C9)
    p = tl.fma(p, t, _C8)
    p = tl.fma(p, t, _C7)
    p = tl.fma(p, t, _C6)
    p = tl.fma(p, t, _C5)
    p = tl.fma(p, t, _C4)
    p = tl.fma(p, t, _C3)
    p = tl.fma(p, t, _C2)
    p = tl.fma(p, t, _C1)
    p = tl.fma(p, t, _C0)
    q = tl.exp2(p)  # Φ(-|x|)
    return tl.fma(t * -1.0, q, tl.maximum(x, 0.0))  # (t * -1 folds into the FMA; -t would be 0 - t)


@triton.jit
def _gelu_fp8_kernel(
    h_ptr,
    b_ptr,
    q_ptr,
    scale_ptr,
    M,
    K,
    stride_hm,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    EVEN_K: tl.constexpr,
    EMULATE_RNE: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_K)
    row_ok = rows < M
    col_ok = cols < K
    mask = row_ok[:, None] & (col_ok[None, :] if not EVEN_K else True)
    rows64 = rows.to(tl.int64)
    h = tl.load(h_ptr + rows64[:, None] * stride_hm + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        b = tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        h = h + b[None, :]
    g = gelu_f32(h)  # padding columns: GELU(0) = 0 exactly, as quantize_tile_rows needs
    q, scale = quantize_tile_rows(g, EMULATE_RNE)
    tl.store(q_ptr + rows64[:, None] * K + cols[None, :], q, mask=mask)
    tl.store(scale_ptr + rows64, scale, mask=row_ok)


def _gelu_fp8_rows(h: torch.Tensor, bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """h [M, K] → (q float8_e4m3fn [M, K], scale float32 [M, 1]) of GELU(h + bias)."""
    h = unit_stride_rows(h)
    q, scale = rowwise_outputs(h)
    M, K = h.shape
    if M == 0:
        return q, scale
    bias = None if bias is None else bias.contiguous()
    block_m, block_k, num_warps = row_tiling(K)  # specialised per row width (constexprs)
    with device_guard(h):
        _gelu_fp8_kernel[(triton.cdiv(M, block_m),)](
            h,
            bias if bias is not None else h,
            q,
            scale,
            M,
            K,
            h.stride(0),
            HAS_BIAS=bias is not None,
            BLOCK_M=block_m,
            BLOCK_K=block_k,
            EVEN_K=block_k == K,
            EMULATE_RNE=running_in_interpreter(_gelu_fp8_kernel),
            num_warps=num_warps,
        )
    return q, scale


def _gelu_fp8_fake(h: torch.Tensor, bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    return rowwise_outputs(h)


gelu_fp8_rows = register_custom_op("lite3r::gelu_fp8", _gelu_fp8_rows, _gelu_fp8_fake)


def gelu_fp8(h: torch.Tensor, bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """GELU(h + bias) over ``h`` [..., K], quantised per token: (q [M, K], scale [M, 1])."""
    check_rows(h, "gelu_fp8")
    h2 = unit_stride_rows(h)
    if bias is not None and (bias.shape != (h2.shape[1],) or not bias.is_contiguous()):
        raise ValueError(f"gelu_fp8: bias must be contiguous of shape ({h2.shape[1]},)")
    return torch.ops.lite3r.gelu_fp8(h2, bias)


def gelu_fp8_reference(
    h: torch.Tensor, bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 exact GELU of (h + bias) followed by the format spec's per-row quantisation."""
    h2 = h.reshape(-1, h.shape[-1]).float()
    if bias is not None:
        h2 = h2 + bias.float()
    return quantize_rowwise(F.gelu(h2))
