"""The block selection's float64 GEMM operands in one pass: pooled q, and pooled k centred on k̄.

Selection scores are float64 dot products pq · (pk − k̄)ᵀ rounded once to float32 (see
``sla_block_select.sla_block_select_gemm``: under bf16 autocast a float32 matmul flips ~4 % of the rows).
Written as PyTorch ops the operands take three small kernels (the centring subtraction and two float64
conversions: 13 µs at 32 VGGT frames on the H100, where the module spends ~0.4 ms outside its sparse
kernel); this kernel writes both in one launch (5.6 µs), with the same float32 subtraction before the
conversion, so the scores are bit-identical. Reference:
:func:`select_operands_reference`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .sla_triton_common import kernel_runs_on

_ROWS = 32


@triton.jit(do_not_specialize=["M", "NK"])
def _select_operands_kernel(
    PQ, PK, KMEAN, PQ64, KEYS64, M, NK, BLOCK_R: tl.constexpr, HEAD_DIM: tl.constexpr
):  # fmt: skip
    bh = tl.program_id(1).to(tl.int64)
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    d = tl.arange(0, HEAD_DIM)
    kmask = (rows < NK)[:, None]
    kmean = tl.load(KMEAN + bh * HEAD_DIM + d)
    k_offs = (bh * NK + rows[:, None]) * HEAD_DIM + d[None, :]
    pk = tl.load(PK + k_offs, mask=kmask, other=0.0)
    tl.store(KEYS64 + k_offs, (pk - kmean[None, :]).to(tl.float64), mask=kmask)
    qmask = (rows < M)[:, None]
    q_offs = (bh * M + rows[:, None]) * HEAD_DIM + d[None, :]
    tl.store(PQ64 + q_offs, tl.load(PQ + q_offs, mask=qmask, other=0.0).to(tl.float64), mask=qmask)


def runs_here(x: torch.Tensor) -> bool:
    """Whether the kernel can run on ``x``'s device: CUDA, or CPU under the Triton interpreter."""
    return kernel_runs_on(_select_operands_kernel, x)


def select_operands(
    pq: torch.Tensor, pk: torch.Tensor, kmean: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(pq as float64 [B, H, M, D], (pk − k̄) as float64 [B, H, Nk, D]) from the prepare pass's float32
    pq [B, H, M, D], pk [B, H, Nk, D] and k̄ [B, H, D] (contiguous)."""
    B, H, M, D = pq.shape
    NK = pk.shape[2]
    if not runs_here(pq):
        return select_operands_reference(pq, pk, kmean)
    if D & (D - 1):
        raise ValueError(f"the selection operands kernel needs a power-of-two head dim, got {D}")
    pq, pk, kmean = (t.float().contiguous() for t in (pq, pk, kmean))
    pq64 = torch.empty(B, H, M, D, device=pq.device, dtype=torch.float64)
    keys64 = torch.empty(B, H, NK, D, device=pq.device, dtype=torch.float64)
    if B * H and max(M, NK):
        _select_operands_kernel[(triton.cdiv(max(M, NK), _ROWS), B * H)](
            pq, pk, kmean, pq64, keys64, M, NK, BLOCK_R=_ROWS, HEAD_DIM=D
        )
    return pq64, keys64


def select_operands_reference(pq, pk, kmean) -> tuple[torch.Tensor, torch.Tensor]:
    return pq.double(), (pk.float() - kmean.float()[:, :, None]).double()
