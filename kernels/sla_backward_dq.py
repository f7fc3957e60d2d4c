"""SLA backward, query side: dQ of the sparse and linear branches, and the per-query-block linear grads.

One program per (query block, batch·head), walking the same look-up table as the forward:

* sparse branch (FlashAttention-2 style): δ = rowsum(o_s ⊙ dO) (also stored for the key-side kernel),
  P = 2^(q·k·scale·log2e − lse), dS = P ⊙ (dO·Vᵀ − δ), dQ += dS·K;
* linear branch, before the loop, from g = dL/do_l and the query block's linear state S_i, z_i (read
  from ``s_q``/``z_q``: the totals for the "all" branch, one state per query block — the sum over its
  complement, :mod:`sla_linear_domain` — for the complement), o_l = φ(q)S_i/(φ(q)·z_i + eps):
  dφ(q) = (g/den)·S_iᵀ − (rowsum(g ⊙ o_l)/den)·z_iᵀ, chained through φ'; and the block's contribution
  to the state gradients, G_i = φ(q)ᵀ(g/den) and dz_i = −φ(q)ᵀ(rowsum(g ⊙ o_l)/den), written for the
  key-side kernel (dS_j = Σ over query blocks whose linear domain contains block j).

The linear branch runs before the loop (it initialises the dQ accumulator), so the loop holds nothing
of it: the states arrive summed, and rowsum(g ⊙ o_l) comes from the forward's o_l instead of a
φ(q)·S_i product (register pressure decides occupancy).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import sla_complement_map as _map
from . import sla_triton_common as _common
from .sla_reference import SLAGeometry
from .sla_triton_common import (
    FEATURE_CODES,
    SIZE_ARGS,
    bucketed_autotune,
    fast_patch_map,
    feature_map,
    linear_input_grad,
    load_linear_state,
    patch_pair_rows,
    tuning_report,
    virtual_to_physical,
    work_bucket,
)

LOG2E = 1.4426950408889634


@triton.jit
def _dq_block(
    q, do, lse, delta, dq, k_base, v_base, stride_kn, stride_vn, cols, phys, N, qk_scale,
    HEAD_DIM: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """dQ += dS·K for the key columns ``cols`` (virtual) stored at physical rows ``phys``."""
    d = tl.arange(0, HEAD_DIM)
    cmask = cols < N
    phys = phys.to(tl.int64)
    k = tl.load(k_base + phys[:, None] * stride_kn + d[None, :], mask=cmask[:, None], other=0.0)
    v = tl.load(v_base + phys[:, None] * stride_vn + d[None, :], mask=cmask[:, None], other=0.0)
    qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
    # Padded keys (zero rows) would give P = 2^(-lse), which overflows for very negative rows: mask them.
    # Padded query rows (q = 0, lse = 0) stay finite and are never stored.
    p = tl.where(cmask[None, :], tl.exp2(qk * qk_scale - lse[:, None]), 0.0)
    dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
    ds = p * (dp - delta[:, None])
    return tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PRECISION)


@triton.jit(do_not_specialize=(*SIZE_ARGS, "g_rows"))
def _sla_backward_dq_kernel(
    Q, K, V, O, OL, DO, DOL, DQ, LSE, DELTA,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_on,
    stride_lb, stride_lh, stride_ln,
    stride_db, stride_dh, stride_dn,
    stride_gb, stride_gh, stride_gn,
    stride_xb, stride_xh, stride_xn,
    LUT, SQ, ZQ, GBLK, DZBLK,
    H, N, n_qblocks, n_kblocks, topk, g_rows,
    n_special, frame_len, n_special_total, n_forced,
    sm_scale, eps,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
    FEATURE: tl.constexpr, LINEAR: tl.constexpr, HAS_SPECIAL: tl.constexpr, DOT_PRECISION: tl.constexpr,
    FAST_MAP: tl.constexpr,
):  # fmt: skip
    i = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    rows = i * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < N
    rows64 = rows.to(tl.int64)
    d = tl.arange(0, HEAD_DIM)

    q = tl.load(
        Q + b * stride_qb + h * stride_qh + rows64[:, None] * stride_qn + d[None, :],
        mask=rmask[:, None],
        other=0.0,
    )
    qk_scale = sm_scale * 1.4426950408889634

    # Linear branch first, while only q is live (dO is loaded after it): the loop then holds nothing more
    # than the sparse-only kernel. Its dQ initialises the accumulator (÷ sm_scale: the loop's sum is
    # scaled once at the end).
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    if LINEAR != 0:
        g = tl.load(
            DOL + b * stride_gb + h * stride_gh + rows64[:, None] * stride_gn + d[None, :],
            mask=rmask[:, None],
            other=0.0,
        )
        o_l = tl.load(
            OL + b * stride_lb + h * stride_lh + rows64[:, None] * stride_ln + d[None, :],
            mask=rmask[:, None],
            other=0.0,
        )
        # rowsum(g ⊙ o_l) from the forward's o_l: no φ(q)·S_i product is needed.
        g_ol = tl.sum(g.to(tl.float32) * o_l.to(tl.float32), axis=1)
        phiq = tl.where(rmask[:, None], feature_map(q.to(tl.float32), FEATURE), 0.0)
        blk_q = bh * n_qblocks + i
        s_i, z_i = load_linear_state(SQ, ZQ, blk_q if LINEAR == 2 else bh, q.dtype, HEAD_DIM)
        g_row = bh * g_rows + i  # G and dz rows: g_rows ≥ n_qblocks per batch·head
        den = tl.sum(phiq * z_i[None, :], axis=1) + eps
        dnum = (g.to(tl.float32) / den[:, None]).to(q.dtype)
        dden = -g_ol / den  # = −rowsum(dnum ⊙ φ(q)S_i) / den, since o_l = φ(q)S_i / den
        g_i = tl.dot(tl.trans(phiq.to(q.dtype)), dnum, input_precision=DOT_PRECISION)
        dd = d[:, None] * HEAD_DIM + d[None, :]
        tl.store(GBLK + g_row * HEAD_DIM * HEAD_DIM + dd, g_i.to(GBLK.dtype.element_ty))
        tl.store(DZBLK + g_row * HEAD_DIM + d, tl.sum(phiq * dden[:, None], axis=0))
        # The padding rows past n_qblocks (the complement GEMM's reduction length rounded up to a
        # multiple of 8) must be zeros, not uninitialised memory: the first programs write them.
        if LINEAR == 2:
            for pad_row in range(n_qblocks + i, g_rows, n_qblocks):
                pad = bh * g_rows + pad_row
                tl.store(GBLK + pad * HEAD_DIM * HEAD_DIM + dd, tl.zeros_like(g_i).to(GBLK.dtype.element_ty))
                tl.store(DZBLK + pad * HEAD_DIM + d, tl.zeros([HEAD_DIM], dtype=tl.float32))
        dq_lin = linear_input_grad(phiq, dnum, s_i, dden[:, None] * z_i[None, :], FEATURE, DOT_PRECISION)
        dq = dq_lin * (1.0 / sm_scale)

    do = tl.load(
        DO + b * stride_db + h * stride_dh + rows64[:, None] * stride_dn + d[None, :],
        mask=rmask[:, None],
        other=0.0,
    )
    o = tl.load(
        O + b * stride_ob + h * stride_oh + rows64[:, None] * stride_on + d[None, :],
        mask=rmask[:, None],
        other=0.0,
    )
    lse_offs = bh * N + rows64
    lse = tl.load(LSE + lse_offs, mask=rmask, other=0.0)
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), axis=1)
    tl.store(DELTA + lse_offs, delta, mask=rmask)

    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    lut = LUT + (bh * n_qblocks + i) * topk
    # As in the forward: with FAST_MAP the first n_forced LUT entries (the blocks holding special
    # tokens) take the general virtual → physical mapping, the later ones (patch-only blocks) the
    # per-block mapping of patch_pair_rows.
    n_lead = topk
    if FAST_MAP:
        n_lead = tl.minimum(n_forced, topk)
    for t in range(0, n_lead):
        j = tl.load(lut + t).to(tl.int32)
        cols = j * BLOCK_N + tl.arange(0, BLOCK_N)
        phys = virtual_to_physical(cols, n_special, frame_len, n_special_total, HAS_SPECIAL)
        dq = _dq_block(
            q, do, lse, delta, dq, k_base, v_base, stride_kn, stride_vn, cols, phys, N, qk_scale, HEAD_DIM,
            DOT_PRECISION,
        )  # fmt: skip
    if FAST_MAP:
        for t in range(n_lead, topk):
            j = tl.load(lut + t).to(tl.int32)
            cols = j * BLOCK_N + tl.arange(0, BLOCK_N)
            phys = patch_pair_rows(j, j, n_special, frame_len, n_special_total, BLOCK_N, 1)
            dq = _dq_block(
                q, do, lse, delta, dq, k_base, v_base, stride_kn, stride_vn, cols, phys, N, qk_scale,
                HEAD_DIM, DOT_PRECISION,
            )  # fmt: skip
    dq = dq * sm_scale

    dq_offs = b * stride_xb + h * stride_xh + rows64[:, None] * stride_xn + d[None, :]
    tl.store(DQ + dq_offs, dq.to(DQ.dtype.element_ty), mask=rmask[:, None])


# Per work bucket (selected blocks per query block); configs per head_dim in sla_triton_common.CONFIGS.
_sla_backward_dq_kernel_tuned = bucketed_autotune(
    _sla_backward_dq_kernel,
    "backward_dq",
    key=["HEAD_DIM", "BLOCK_M", "BLOCK_N", "FEATURE", "LINEAR", "HAS_SPECIAL", "FAST_MAP"],
)


def autotune_choices() -> dict:
    return tuning_report(_sla_backward_dq_kernel_tuned)


def sla_backward_dq(
    q, k, v, o_s, o_l, do, do_l, lse, lut, s_q, z_q, geom: SLAGeometry, *,
    feature: str, linear_code: int, eps: float, scale: float, dq: torch.Tensor,
    g_dtype: torch.dtype = torch.float32,
):  # fmt: skip
    """Launch the dQ kernel; fills ``dq`` and returns (delta [B,H,N] f32, G [B,H,R,D,D] ``g_dtype``,
    dz [B,H,R,D] f32) — the last two empty when there is no linear branch. R = Mq for the "all"
    branch; for the complement, Mq rounded up to a multiple of 8 with zero rows past Mq, so the
    per-key-block sums (``sla_linear_domain.complement_sums``, transposed) reduce over an aligned length.

    ``s_q``/``z_q``: the linear state each query block attends to, [B,H,D,D]/[B,H,D] (the totals) for
    the "all" branch (linear_code 1), [B,H,Mq,D,D]/[B,H,Mq,D] for the complement (linear_code 2); any
    float dtype (read as float32, S rounded to the input dtype for the MMA as in the forward)."""
    B, H, N, D = q.shape
    dev = q.device
    delta = torch.empty(B, H, N, device=dev, dtype=torch.float32)
    g_rows = _map.padded_columns(geom.n_qblocks) if linear_code == 2 else geom.n_qblocks
    if linear_code:
        g_blk = torch.empty(B, H, g_rows, D, D, device=dev, dtype=g_dtype)
        dz_blk = torch.empty(B, H, g_rows, D, device=dev, dtype=torch.float32)
        dol, ol = do_l, o_l
    else:
        g_blk = dz_blk = torch.empty(0, device=dev, dtype=torch.float32)
        dol, ol = do, o_s
    if _common.use_autotuner(q):
        kernel = _sla_backward_dq_kernel_tuned[work_bucket(geom.topk)]
    else:
        kernel = _sla_backward_dq_kernel
    kernel[(geom.n_qblocks, B * H)](
        q, k, v, o_s, ol, do, dol, dq, lse, delta,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        o_s.stride(0), o_s.stride(1), o_s.stride(2),
        ol.stride(0), ol.stride(1), ol.stride(2),
        do.stride(0), do.stride(1), do.stride(2),
        dol.stride(0), dol.stride(1), dol.stride(2),
        dq.stride(0), dq.stride(1), dq.stride(2),
        lut, s_q, z_q, g_blk, dz_blk,
        H, N, geom.n_qblocks, geom.n_kblocks, geom.topk, g_rows,
        max(geom.n_special, 1), geom.frame_len, geom.n_special_total, geom.n_forced,
        scale, eps,
        BLOCK_M=geom.block_q, BLOCK_N=geom.block_k, HEAD_DIM=D,
        FEATURE=FEATURE_CODES[feature], LINEAR=linear_code, HAS_SPECIAL=geom.n_special > 0,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32", FAST_MAP=fast_patch_map(geom),
    )  # fmt: skip
    return delta, g_blk, dz_blk
