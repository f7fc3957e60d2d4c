"""SLA backward, key side: dK and dV of the sparse and linear branches.

One program per (key block, batch·head). The query blocks that selected the key block come from the
inverse look-up table (a CSR list built by :func:`inverse_lut` with one sort, no N_q × N_k map): for
each, recompute Pᵀ = 2^(k·q·scale·log2e − lse) and accumulate dV += Pᵀ·dO, dK += (Pᵀ ⊙ (V·dOᵀ − δ))·Q.

Linear branch, before the loop: block j's states S_j = φ(K_j)ᵀV_j, z_j = Σφ(K_j) receive dS_j = Σ G_i
over the query blocks whose linear domain contains j — all of them for the "all" branch (the totals),
the ones that did *not* select j for the complement (one per key block, summed beforehand by
:mod:`sla_linear_domain`) — so dV += φ(K_j)·dS_j and dφ(K_j) = V_j·dS_jᵀ + dz_j, chained through φ'.
It runs before the loop and initialises the dK/dV accumulators, so the loop holds nothing of it. Key blocks holding special
tokens are selected by every query block and have the longest lists; they come first in the grid so
they start first.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import sla_triton_common as _common
from .sla_reference import SLAGeometry
from .sla_triton_common import (
    FEATURE_CODES,
    SIZE_ARGS,
    bucketed_autotune,
    feature_map,
    linear_input_grad,
    load_linear_state,
    tuning_report,
    virtual_to_physical,
    work_bucket,
)


@triton.jit(do_not_specialize=SIZE_ARGS)
def _sla_backward_dkdv_kernel(
    Q, K, V, DO, DK, DV, LSE, DELTA,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_db, stride_dh, stride_dn,
    stride_kgb, stride_kgh, stride_kgn,
    stride_vgb, stride_vgh, stride_vgn,
    QLIST, QOFF, DSK, DZK,
    H, N, n_qblocks, n_kblocks,
    n_special, frame_len, n_special_total,
    sm_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
    FEATURE: tl.constexpr, LINEAR: tl.constexpr, HAS_SPECIAL: tl.constexpr, DOT_PRECISION: tl.constexpr,
    M_SPLIT: tl.constexpr,
):  # fmt: skip
    j = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    d = tl.arange(0, HEAD_DIM)
    cols = j * BLOCK_N + tl.arange(0, BLOCK_N)
    cmask = cols < N
    phys = virtual_to_physical(cols, n_special, frame_len, n_special_total, HAS_SPECIAL).to(tl.int64)
    k = tl.load(
        K + b * stride_kb + h * stride_kh + phys[:, None] * stride_kn + d[None, :],
        mask=cmask[:, None],
        other=0.0,
    )
    v = tl.load(
        V + b * stride_vb + h * stride_vh + phys[:, None] * stride_vn + d[None, :],
        mask=cmask[:, None],
        other=0.0,
    )
    qk_scale = sm_scale * 1.4426950408889634

    # Linear branch first, while only K and V are live; it initialises the accumulators (dK ÷ sm_scale:
    # the loop's sum is scaled once at the end), so the loop holds nothing more than the sparse-only one.
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    if LINEAR != 0:
        ds_j, dz_j = load_linear_state(DSK, DZK, bh * n_kblocks + j if LINEAR == 2 else bh, v.dtype, HEAD_DIM)
        phik = tl.where(cmask[:, None], feature_map(k.to(tl.float32), FEATURE), 0.0)
        dv = tl.dot(phik.to(v.dtype), ds_j, input_precision=DOT_PRECISION)
        dk_lin = linear_input_grad(phik, v, ds_j, dz_j[None, :], FEATURE, DOT_PRECISION)
        dk = dk_lin * (1.0 / sm_scale)

    q_base = Q + b * stride_qb + h * stride_qh
    do_base = DO + b * stride_db + h * stride_dh
    slot = bh * n_kblocks + j
    start = tl.load(QOFF + slot)
    end = tl.load(QOFF + slot + 1)
    # Each listed query block is walked in M_SPLIT row slices of SUB_M rows (an autotuned choice): the
    # transposed score tiles [BLOCK_N, SUB_M] are what the loop keeps in registers.
    SUB_M: tl.constexpr = BLOCK_M // M_SPLIT
    for e in range(start * M_SPLIT, end * M_SPLIT):
        i = tl.load(QLIST + e // M_SPLIT).to(tl.int32)
        rows = i * BLOCK_M + (e % M_SPLIT) * SUB_M + tl.arange(0, SUB_M)
        rmask = rows < N
        rows64 = rows.to(tl.int64)
        q = tl.load(q_base + rows64[:, None] * stride_qn + d[None, :], mask=rmask[:, None], other=0.0)
        do = tl.load(do_base + rows64[:, None] * stride_dn + d[None, :], mask=rmask[:, None], other=0.0)
        lse = tl.load(LSE + bh * N + rows64, mask=rmask, other=0.0)
        delta = tl.load(DELTA + bh * N + rows64, mask=rmask, other=0.0)
        qk_t = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION)
        # No mask needed: padded query rows load q = dO = 0 and lse = 0 (finite, and they add nothing to dV
        # or dK); padded key rows only touch their own dK/dV rows, which are never stored.
        p_t = tl.exp2(qk_t * qk_scale - lse[None, :])
        dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=DOT_PRECISION)
        dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
        ds_t = p_t * (dp_t - delta[None, :])
        dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision=DOT_PRECISION)
    dk = dk * sm_scale

    dk_offs = b * stride_kgb + h * stride_kgh + phys[:, None] * stride_kgn + d[None, :]
    dv_offs = b * stride_vgb + h * stride_vgh + phys[:, None] * stride_vgn + d[None, :]
    tl.store(DK + dk_offs, dk.to(DK.dtype.element_ty), mask=cmask[:, None])
    tl.store(DV + dv_offs, dv.to(DV.dtype.element_ty), mask=cmask[:, None])


# Per work bucket (query blocks per key block on average); configs in sla_triton_common.CONFIGS.
_sla_backward_dkdv_kernel_tuned = bucketed_autotune(
    _sla_backward_dkdv_kernel,
    "backward_dkdv",
    key=["HEAD_DIM", "BLOCK_M", "BLOCK_N", "FEATURE", "LINEAR", "HAS_SPECIAL"],
)


def autotune_choices() -> dict:
    return tuning_report(_sla_backward_dkdv_kernel_tuned)


def inverse_lut(lut: torch.Tensor, n_kblocks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """CSR of the query blocks that selected each key block: (qlist int32 [B·H·Mq·topk], offsets int64
    [B·H·Nk + 1]); the list of (bh, j) is qlist[offsets[bh·Nk + j] : offsets[bh·Nk + j + 1]]."""
    B, H, M, T = lut.shape
    dev = lut.device
    bh = torch.arange(B * H, device=dev, dtype=torch.int64).view(B * H, 1, 1)
    slots = (bh * n_kblocks + lut.reshape(B * H, M, T).long()).reshape(-1)
    order = torch.sort(slots, stable=True).indices
    qlist = ((order // T) % M).to(torch.int32)
    counts = torch.zeros(B * H * n_kblocks, device=dev, dtype=torch.int64)
    counts.index_add_(0, slots, torch.ones_like(slots))
    offsets = torch.zeros(B * H * n_kblocks + 1, device=dev, dtype=torch.int64)
    torch.cumsum(counts, 0, out=offsets[1:])
    return qlist, offsets


def sla_backward_dkdv(
    q, k, v, do, lse, delta, lut, ds_k, dz_k, geom: SLAGeometry, *,
    feature: str, linear_code: int, scale: float, dk: torch.Tensor, dv: torch.Tensor,
    m_split: int | None = None, inverse: tuple[torch.Tensor, torch.Tensor] | None = None,
):  # fmt: skip
    """Launch the dK/dV kernel; fills ``dk`` and ``dv``.

    ``m_split`` (query-row slices per listed query block) is chosen by the autotuner on CUDA; it may be
    given only for the plain kernel (interpreter tests), default 1.

    ``ds_k``/``dz_k``: the gradient of the linear state each key block feeds, [B,H,D,D]/[B,H,D] (the
    totals ΣG_i, Σdz_i) for the "all" branch, [B,H,Nk,D,D]/[B,H,Nk,D] (sums over the query blocks
    that did not select the key block) for the complement; unused without a linear branch.

    ``inverse``: :func:`inverse_lut` (``lut``) if the caller built it already (the complement sums use
    it too); else built here."""
    B, H, N, D = q.shape
    qlist, offsets = inverse if inverse is not None else inverse_lut(lut, geom.n_kblocks)
    if not linear_code:
        ds_k = dz_k = torch.empty(0, device=q.device, dtype=torch.float32)
    if _common.use_autotuner(q):
        if m_split is not None:
            raise ValueError(
                "m_split is an autotuned parameter; give it only to the plain (interpreted) kernel"
            )
        trips = geom.n_qblocks * geom.topk / geom.n_kblocks
        kernel, meta = _sla_backward_dkdv_kernel_tuned[work_bucket(trips)], {}
    else:
        if geom.block_q % (m_split or 1):
            raise ValueError(f"m_split {m_split} does not divide block_q {geom.block_q}")
        kernel, meta = _sla_backward_dkdv_kernel, {"M_SPLIT": m_split or 1}
    kernel[(geom.n_kblocks, B * H)](
        q, k, v, do, dk, dv, lse, delta,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        do.stride(0), do.stride(1), do.stride(2),
        dk.stride(0), dk.stride(1), dk.stride(2),
        dv.stride(0), dv.stride(1), dv.stride(2),
        qlist, offsets, ds_k, dz_k,
        H, N, geom.n_qblocks, geom.n_kblocks,
        max(geom.n_special, 1), geom.frame_len, geom.n_special_total,
        scale,
        BLOCK_M=geom.block_q, BLOCK_N=geom.block_k, HEAD_DIM=D,
        FEATURE=FEATURE_CODES[feature], LINEAR=linear_code, HAS_SPECIAL=geom.n_special > 0,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32", **meta,
    )  # fmt: skip
