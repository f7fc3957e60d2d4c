"""Fused (bias +) exact GELU → FP8: h [M, K] → (q fp8 [M, K], scale fp32 [M, 1]) of GELU(h + b).

Replaces ``mlp.act`` between ``fc1`` and ``fc2``: fc1's bf16 output is read once and fc2's FP8 input
is written once, instead of GELU writing bf16 and the quantiser re-reading it. GELU is the erf form
0.5·h·(1 + erf(h/√2)) in float32, the value is never rounded to bf16. The optional ``bias`` lets fc1
skip its own bias add (it costs nothing in the GEMM epilogue either, so the module path keeps the
bias in fc1's GEMM and calls this without one).

Matches ``gelu_fp8_reference`` up to the erf implementation (a float32 ulp): scales agree to a few ulp
and FP8 codes differ only on rounding boundaries. Registered as ``lite3r::gelu_fp8``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch.library import wrap_triton

from lite3r.quant.fp8_format import FP8_DTYPE, quantize_rowwise

from .fp8_common import quantize_tile_rows, register_triton_op, row_tiling, running_in_interpreter
from .fp8_quantize import check_rows


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
    EMULATE_RNE: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_K)
    row_ok = rows < M
    col_ok = cols < K
    mask = row_ok[:, None] & col_ok[None, :]
    rows64 = rows.to(tl.int64)
    h = tl.load(h_ptr + rows64[:, None] * stride_hm + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        b = tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        h = h + b[None, :]
    g = 0.5 * h * (1.0 + tl.math.erf(h * 0.7071067811865476))
    g = tl.where(mask, g, 0.0)
    q, scale = quantize_tile_rows(g, EMULATE_RNE)
    tl.store(q_ptr + rows64[:, None] * K + cols[None, :], q, mask=mask)
    tl.store(scale_ptr + rows64, scale, mask=row_ok)


def _gelu_fp8_rows(h: torch.Tensor, bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """h [M, K] (unit stride along K) → (q float8_e4m3fn [M, K], scale float32 [M, 1]) of GELU(h + bias)."""
    M, K = h.shape
    q = torch.empty((M, K), dtype=FP8_DTYPE, device=h.device)
    scale = torch.empty((M, 1), dtype=torch.float32, device=h.device)
    if M == 0:
        return q, scale
    block_m, block_k, num_warps = row_tiling(int(K))  # specialised per row width (constexprs)
    wrap_triton(_gelu_fp8_kernel)[(triton.cdiv(M, block_m),)](
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
        EMULATE_RNE=running_in_interpreter(_gelu_fp8_kernel),
        num_warps=num_warps,
    )
    return q, scale


gelu_fp8_rows = register_triton_op("lite3r::gelu_fp8", _gelu_fp8_rows)


def gelu_fp8(h: torch.Tensor, bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """GELU(h + bias) over ``h`` [..., K], quantised per token: (q [M, K], scale [M, 1])."""
    check_rows(h, "gelu_fp8")
    h2 = h.reshape(-1, h.shape[-1])
    if h2.stride(-1) != 1:
        h2 = h2.contiguous()
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
