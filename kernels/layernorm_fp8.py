"""Fused LayerNorm → FP8: x [M, K] → (q fp8 [M, K], scale fp32 [M, 1]) of LN(x) quantised per token.

Replaces ``norm1`` → ``attn.qkv`` and ``norm2`` → ``mlp.fc1`` in the trunk blocks: the normalised
activation lives only in registers (float32, never rounded to bf16), so one read of x and one FP8
write replace the bf16 LayerNorm write plus the quantiser's re-read. Statistics in float32 as in
``torch.nn.functional.layer_norm`` (two passes over the registers: mean, then the biased variance of
the centred values, eps inside the square root).

Cost per element on sm_90 (SASS, 8×1024 tile): the load conversion, two reduction steps, one
subtract, one multiply (rstd), one FMA (weight, bias), the amax, the scale multiply and half a
packed cast (24 static SASS instructions per element with the row overheads, against 13 for the
plain quantiser; benchmarks/probes/fp8_kernel_sass.py). Masks on columns exist only when K is not a
power of two (``EVEN_K``); the clamp to ±448 is the cast's saturation (``fp8_common``).

Matches ``layernorm_fp8_reference`` up to the LayerNorm's own float32 rounding (a different
reduction order and rsqrt): scales agree to a few ulp and FP8 codes differ only where the float32
LayerNorm value sits on an FP8 rounding boundary. Registered as ``lite3r::layernorm_fp8``.
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


@triton.jit
def _layernorm_fp8_kernel(
    x_ptr,
    w_ptr,
    b_ptr,
    q_ptr,
    scale_ptr,
    M,
    K,
    stride_xm,
    eps,
    HAS_WEIGHT: tl.constexpr,
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
    x = tl.load(x_ptr + rows64[:, None] * stride_xm + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=1) / K
    xc = x - mean[:, None]
    if not EVEN_K:
        xc = tl.where(col_ok[None, :], xc, 0.0)  # padding columns must not enter the variance
    var = tl.sum(xc * xc, axis=1) / K
    rstd = 1.0 / tl.sqrt(var + eps)
    y = xc * rstd[:, None]
    # padding columns stay 0 below: xc is 0 there and the weight/bias loads give 0
    if HAS_WEIGHT:
        w = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        if HAS_BIAS:
            b = tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
            y = tl.fma(y, w[None, :], b[None, :])
        else:
            y = y * w[None, :]
    elif HAS_BIAS:
        b = tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        y = y + b[None, :]
    q, scale = quantize_tile_rows(y, EMULATE_RNE)
    tl.store(q_ptr + rows64[:, None] * K + cols[None, :], q, mask=mask)
    tl.store(scale_ptr + rows64, scale, mask=row_ok)


def _layernorm_fp8_rows(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] → (q float8_e4m3fn [M, K], scale float32 [M, 1]) of LN(x)."""
    x = unit_stride_rows(x)
    q, scale = rowwise_outputs(x)
    M, K = x.shape
    if M == 0:
        return q, scale
    weight = None if weight is None else weight.contiguous()
    bias = None if bias is None else bias.contiguous()
    block_m, block_k, num_warps = row_tiling(K)  # specialised per row width (constexprs)
    with device_guard(x):
        _layernorm_fp8_kernel[(triton.cdiv(M, block_m),)](
            x,
            weight if weight is not None else x,
            bias if bias is not None else x,
            q,
            scale,
            M,
            K,
            x.stride(0),
            float(eps),
            HAS_WEIGHT=weight is not None,
            HAS_BIAS=bias is not None,
            BLOCK_M=block_m,
            BLOCK_K=block_k,
            EVEN_K=block_k == K,
            EMULATE_RNE=running_in_interpreter(_layernorm_fp8_kernel),
            num_warps=num_warps,
        )
    return q, scale


def _layernorm_fp8_fake(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    return rowwise_outputs(x)


layernorm_fp8_rows = register_custom_op("lite3r::layernorm_fp8", _layernorm_fp8_rows, _layernorm_fp8_fake)


def layernorm_fp8(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """LayerNorm over the last dim of ``x`` [..., K], quantised per token: (q [M, K], scale [M, 1])."""
    check_rows(x, "layernorm_fp8")
    x2 = unit_stride_rows(x)
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and (p.shape != (x2.shape[1],) or not p.is_contiguous()):
            raise ValueError(f"layernorm_fp8: {name} must be contiguous of shape ({x2.shape[1]},)")
    return torch.ops.lite3r.layernorm_fp8(x2, weight, bias, float(eps))


def layernorm_fp8_reference(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 ``F.layer_norm`` followed by the format spec's per-row quantisation."""
    K = x.shape[-1]
    y = F.layer_norm(
        x.reshape(-1, K).float(),
        (K,),
        None if weight is None else weight.float(),
        None if bias is None else bias.float(),
        eps,
    )
    return quantize_rowwise(y)
