"""Block-selection scores in one kernel: pq · (pk − k̄)ᵀ as float64 dot products, rounded once to float32.

The selection ranks key blocks per query block by these scores, defined (``block_scores_reference``)
as float64 dot products of the float32 pooled q and the float32 centred pooled k, rounded to float32
once, so the table does not depend on an autocast or TF32 state, nor on a GEMM's summation order
beyond float64 rounding. This took three launches: an operands kernel (both operands to float64, the
centring subtraction in float32 first), a cuBLAS float64 GEMM writing float64 scores, and the top-k
reading them back (``sla_topk_rows`` rounds to float32 on load). Here one Triton kernel loads the
float32 operands, centres and widens them in registers, runs the float64 tensor-core MMA (Triton emits
``mma.sync.m16n8k16.f64`` for sm_90) and writes float32 scores: half the bytes of the score tile, no
operand copies. The products of float32 values are exact in float64, so the rounded scores equal
the reference's except where float64 summation order changes a float32 rounding (never seen).

Reference: :func:`select_scores_reference`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .sla_triton_common import kernel_runs_on

_BLOCK_M = 64  # query blocks per program
_BLOCK_N = 64  # key blocks per program


@triton.jit(do_not_specialize=("M", "NK", "row0", "rows"))
def _select_scores_kernel(
    PQ, PK, KMEAN, S, M, NK, row0, rows, stride_s,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
):  # fmt: skip
    bh = tl.program_id(2).to(tl.int64)
    r = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # row of this chunk (query block row0 + r)
    c = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # key block
    d = tl.arange(0, HEAD_DIM)
    rmask = r < rows
    cmask = c < NK
    q = tl.load(PQ + (bh * M + row0 + r)[:, None] * HEAD_DIM + d[None, :], mask=rmask[:, None], other=0.0)
    kmean = tl.load(KMEAN + bh * HEAD_DIM + d)
    k = tl.load(PK + (bh * NK + c)[:, None] * HEAD_DIM + d[None, :], mask=cmask[:, None], other=0.0)
    keys = (k - kmean[None, :]).to(tl.float64)  # centred in float32, then widened (the reference)
    s = tl.dot(q.to(tl.float64), tl.trans(keys))
    out = S + (bh * rows + r).to(tl.int64)[:, None] * stride_s + c[None, :]
    tl.store(out, s.to(tl.float32), mask=rmask[:, None] & cmask[None, :])


def runs_here(x: torch.Tensor) -> bool:
    """Whether the kernel can run on ``x``'s device: CUDA, or CPU under the Triton interpreter."""
    return kernel_runs_on(_select_scores_kernel, x)


def select_scores(
    pq: torch.Tensor,
    pk: torch.Tensor,
    kmean: torch.Tensor,
    rows: tuple[int, int] | None = None,
    launch: tuple[int, int, int] | None = None,
) -> torch.Tensor:
    """float32 scores [B, H, R, Nk] of query blocks ``rows`` = (start, stop) (default all M) against every
    key block, from the prepare pass's float32 pq [B, H, M, D], pk [B, H, Nk, D] and k̄ [B, H, D].
    ``launch`` (probes): (query blocks, key blocks, warps) per program instead of the defaults."""
    B, H, M, D = pq.shape
    NK = pk.shape[2]
    r0, r1 = rows or (0, M)
    if not runs_here(pq):
        return select_scores_reference(pq[:, :, r0:r1], pk, kmean)
    if D & (D - 1) or D < 16:
        raise ValueError(f"the selection scores kernel needs a power-of-two head dim ≥ 16, got {D}")
    pq, pk, kmean = (t.float().contiguous() for t in (pq, pk, kmean))
    s = torch.empty(B, H, r1 - r0, NK, device=pq.device, dtype=torch.float32)
    if B * H and r1 > r0 and NK:
        bm, bn, warps = launch or (_BLOCK_M, _BLOCK_N, 4)
        grid = (triton.cdiv(r1 - r0, bm), triton.cdiv(NK, bn), B * H)
        _select_scores_kernel[grid](
            pq, pk, kmean, s, M, NK, r0, r1 - r0, NK, BLOCK_M=bm, BLOCK_N=bn, HEAD_DIM=D,
            **({"num_warps": warps} if pq.is_cuda else {}),
        )  # fmt: skip
    return s


def select_scores_reference(pq, pk, kmean) -> torch.Tensor:
    """The same in PyTorch: float64 matmul of the widened operands (centring in float32), rounded once."""
    keys = (pk.float() - kmean.float()[:, :, None]).double()
    with torch.autocast(pq.device.type, enabled=False):
        return torch.matmul(pq.double(), keys.transpose(-1, -2)).float()
