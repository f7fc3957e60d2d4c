"""Row sums of small float32 tables, [G, R, C] → [G, C], in a fixed order.

The SLA pipeline reduces a few [B·H, R, D] tables over their middle axis: the prepare pass's per-program
partial sums of k (→ the sequence mean k̄ the selection centres on) and the linear branch's per-block
denominators z_j (→ z_tot, the complement sums' total). ``torch.sum(dim=1)`` runs these on few thread
blocks (1,024 outputs, ~700 rows each): 24.6 µs for [16, 687, 64] and 7 µs for [16, 115, 64] on the
H100 at 32 VGGT frames, 8 % of the time the module spends outside its sparse kernel. One program per
(group, column tile) walking the rows in order takes a few µs, and the order is fixed, so the result is
deterministic. The reference is :func:`sum_rows_reference`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .sla_triton_common import kernel_runs_on

# 128 rows × 16 columns per step: [16, 687, 64] runs as 64 programs of 6 steps (32 × 64: 16 programs of
# 22 steps took 9 µs on the H100).
_ROWS = 128
_COLS = 16


@triton.jit(do_not_specialize=["R", "C"])
def _sum_rows_kernel(X, Y, R, C, stride_g, stride_r, scale, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    g = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    acc = tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.float32)
    for r0 in range(0, R, BLOCK_R):
        rows = r0 + tl.arange(0, BLOCK_R)
        acc += tl.load(
            X + g * stride_g + rows[:, None] * stride_r + cols[None, :],
            mask=(rows < R)[:, None] & cmask[None, :],
            other=0.0,
        )
    tl.store(Y + g * C + cols, tl.sum(acc, axis=0) * scale, mask=cmask)


def runs_here(x: torch.Tensor) -> bool:
    """Whether the kernel can run on ``x``'s device: CUDA, or CPU under the Triton interpreter."""
    return kernel_runs_on(_sum_rows_kernel, x)


def sum_rows(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """scale · Σ_r x[g, r, c] for float32 ``x`` [G, R, C] (last stride 1) → [G, C] float32."""
    if x.dtype != torch.float32 or x.dim() != 3 or x.stride(-1) != 1:
        raise ValueError(
            f"sum_rows takes a float32 [G, R, C] tensor with unit last stride, got {x.dtype} {x.shape}"
        )
    if not runs_here(x):
        return sum_rows_reference(x, scale)
    G, R, C = x.shape
    y = torch.empty(G, C, device=x.device, dtype=torch.float32)
    if G == 0 or C == 0:
        return y
    if R == 0:
        return y.zero_()
    _sum_rows_kernel[(G, triton.cdiv(C, _COLS))](
        x, y, R, C, x.stride(0), x.stride(1), float(scale), BLOCK_R=_ROWS, BLOCK_C=_COLS
    )
    return y


def sum_rows_reference(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    return x.sum(1) * scale
