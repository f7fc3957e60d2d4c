"""Per-token FP8 quantisation in one pass: x [M, K] (bf16/fp16/fp32) → (q fp8 [M, K], scale fp32 [M, 1]).

Used where no fused producer exists (the input of ``attn.proj``, features kept for the heads). Each
program loads BLOCK_M whole rows, computes the row amax and the scales in registers, and writes FP8,
so x is read once and never re-written. Bit-exact with ``fp8_quantize_reference`` (the format spec
in ``lite3r.quant.fp8_format``): max is order-independent and the arithmetic is IEEE.

Registered as the custom op ``lite3r::fp8_quantize_rowwise`` (opaque to torch.compile, see
``fp8_common``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lite3r.errors import UnsupportedError
from lite3r.quant.fp8_format import FP8_DTYPE, quantize_rowwise

from .fp8_common import (
    MAX_ROW,
    device_guard,
    quantize_tile_rows,
    register_custom_op,
    row_tiling,
    running_in_interpreter,
)


@triton.jit
def _fp8_quantize_rowwise_kernel(
    x_ptr,
    q_ptr,
    scale_ptr,
    M,
    K,
    stride_xm,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    EVEN_K: tl.constexpr,
    EMULATE_RNE: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_K)
    row_ok = rows < M
    mask = row_ok[:, None] & ((cols[None, :] < K) if not EVEN_K else True)
    rows64 = rows.to(tl.int64)
    x = tl.load(x_ptr + rows64[:, None] * stride_xm + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    q, scale = quantize_tile_rows(x, EMULATE_RNE)
    tl.store(q_ptr + rows64[:, None] * K + cols[None, :], q, mask=mask)
    tl.store(scale_ptr + rows64, scale, mask=row_ok)


def check_rows(x: torch.Tensor, what: str) -> None:
    """Rows along the last dim of ``x`` must be non-empty and fit the single-pass kernels."""
    if x.dim() < 1 or x.shape[-1] == 0:
        raise ValueError(f"{what}: expected [..., K] with K > 0, got shape {tuple(x.shape)}")
    if x.shape[-1] > MAX_ROW:
        raise UnsupportedError(
            f"{what}: rows of {x.shape[-1]} elements exceed the single-pass limit of {MAX_ROW}",
            hint="keep such layers in bf16 (add them to the FP8 skip list)",
        )


def unit_stride_rows(x: torch.Tensor) -> torch.Tensor:
    """``x`` as [M, K] with unit stride along K (a view when possible)."""
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


def rowwise_outputs(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Empty (q float8_e4m3fn [M, K] contiguous, scale float32 [M, 1]) for a 2-D ``x`` (also the fake)."""
    M, K = x.shape
    return x.new_empty((M, K), dtype=FP8_DTYPE), x.new_empty((M, 1), dtype=torch.float32)


def _fp8_quantize_rowwise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] → (q float8_e4m3fn [M, K] contiguous, scale float32 [M, 1])."""
    x = unit_stride_rows(x)
    q, scale = rowwise_outputs(x)
    M, K = x.shape
    if M == 0:
        return q, scale
    block_m, block_k, num_warps = row_tiling(K)  # specialised per row width (constexprs)
    with device_guard(x):
        _fp8_quantize_rowwise_kernel[(triton.cdiv(M, block_m),)](
            x,
            q,
            scale,
            M,
            K,
            x.stride(0),
            BLOCK_M=block_m,
            BLOCK_K=block_k,
            EVEN_K=block_k == K,
            EMULATE_RNE=running_in_interpreter(_fp8_quantize_rowwise_kernel),
            num_warps=num_warps,
        )
    return q, scale


def _fp8_quantize_rowwise_fake(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return rowwise_outputs(x)


fp8_quantize_rowwise = register_custom_op(
    "lite3r::fp8_quantize_rowwise", _fp8_quantize_rowwise, _fp8_quantize_rowwise_fake
)


def fp8_quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantise ``x`` [..., K] per token with the Triton kernel: (q [M, K], scale [M, 1]), M = numel / K."""
    check_rows(x, "fp8_quantize")
    return torch.ops.lite3r.fp8_quantize_rowwise(unit_stride_rows(x))


def fp8_quantize_reference(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The pure-PyTorch reference (the format spec itself)."""
    return quantize_rowwise(x.reshape(-1, x.shape[-1]))
