"""SLA forward kernel: block-sparse softmax attention fused with the linear branch.

One program per (query block, batch·head). It loads the query tile once and walks the look-up table of
selected key blocks (virtual key order, see ``sla_reference.py``): online softmax in base 2 with float32
accumulators, masks for a trailing partial key block. Key rows are gathered by their physical index:
per column for the blocks that hold special tokens, per block for the patch-only blocks after them
(``patch_pair_rows``: 359 → 383 TFLOP/s at 64 frames). For the complement linear branch (SLA-1) it
accumulates the selected blocks' states S_j, z_j on the way and forms the linear attention over the
remaining blocks from the totals: o_l = φ(q)(S_tot − ΣS_j) / (φ(q)·(z_tot − Σz_j) + eps); or it gets
the complement states already summed per query block (``summed_states``: one batched GEMM outside,
``sla_linear_domain.complement_sums``), so the loop carries no state accumulators and reads no
per-block states — the sparse loop then runs as fast as with the all-token linear branch. At inference
the head_dim × head_dim projection is fused too and the kernel writes o = o_s + o_l·Wᵀ directly; for
training it writes o_s, o_l and the base-2 log-sum-exp for the backward.

Inputs are strided [B, H, N, D] views (last stride 1); the output is written through its strides, so
the module allocates it as [B, N, H, D] and the head merge after attention is a free view.

The online-softmax step, the linear read-out and the fused projection (``softmax_step``,
``linear_readout``, ``add_projected``) are shared with the TMA forward (``sla_forward_tma``), which
reads its key blocks from virtual-order copies instead of gathering them.
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
    augmented_states,
    bucketed_autotune,
    effective_linear_code,
    fast_patch_map,
    feature_map,
    patch_pair_rows,
    tuning_report,
    virtual_to_physical,
)

LOG2E = 1.4426950408889634


@triton.jit
def _attend_cols(
    q, k_base, v_base, stride_kn, stride_vn, cols, phys, m_i, l_i, acc, N, qk_scale,
    HEAD_DIM: tl.constexpr, MASK: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """One online-softmax step over the key columns ``cols`` (virtual positions: one key block, or two
    selected blocks side by side) stored at physical rows ``phys``, base 2 with the scale folded into
    the exponent."""
    d = tl.arange(0, HEAD_DIM)
    phys = phys.to(tl.int64)
    k_ptrs = k_base + phys[:, None] * stride_kn + d[None, :]
    v_ptrs = v_base + phys[:, None] * stride_vn + d[None, :]
    cmask = cols < N
    if MASK:
        k = tl.load(k_ptrs, mask=cmask[:, None], other=0.0)
        v = tl.load(v_ptrs, mask=cmask[:, None], other=0.0)
    else:
        k = tl.load(k_ptrs)
        v = tl.load(v_ptrs)
    m_i, l_i, acc = softmax_step(q, k, v, m_i, l_i, acc, cmask, qk_scale, MASK, DOT_PRECISION)
    return m_i, l_i, acc, k, v


@triton.jit
def softmax_step(q, k, v, m_i, l_i, acc, cmask, qk_scale, MASK: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """One online-softmax step of the query tile over one key/value tile, base 2 with the scale folded
    into the exponent; ``MASK``: key columns where ``cmask`` is false are left out (also used by the
    TMA forward)."""
    qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
    if MASK:
        qk = tl.where(cmask[None, :], qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, axis=1) * qk_scale)
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(qk * qk_scale - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)
    return m_new, l_i, acc


@triton.jit
def linear_readout(phiq, s_i, z_i, eps, dot_dtype, DOT_PRECISION: tl.constexpr):
    """The linear branch's output rows φ(q)·S / (φ(q)·z + eps), S in the MMA dtype ``dot_dtype``."""
    num = tl.dot(phiq.to(dot_dtype), s_i.to(dot_dtype), input_precision=DOT_PRECISION)
    den = tl.sum(phiq * z_i[None, :], axis=1) + eps
    return num / den[:, None]


@triton.jit
def add_projected(out, o_l, W, dot_dtype, HEAD_DIM: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """out + o_l·Wᵀ: the head_dim × head_dim projection of the linear branch, fused at inference."""
    d = tl.arange(0, HEAD_DIM)
    w_t = tl.load(W + d[None, :] * HEAD_DIM + d[:, None])  # Wᵀ[in, out] = W[out, in]
    return out + tl.dot(o_l.to(dot_dtype), w_t.to(dot_dtype), input_precision=DOT_PRECISION)


@triton.jit
def _pair_cols(j0, j1, BLOCK_N: tl.constexpr):
    """Virtual key columns of blocks j0 and j1 side by side: one [2·BLOCK_N] tile, so the MMAs run
    128 keys deep at 64-token key blocks."""
    c = tl.arange(0, 2 * BLOCK_N)
    return tl.where(c < BLOCK_N, j0 * BLOCK_N + c, j1 * BLOCK_N + c - BLOCK_N)


@triton.jit
def _add_block_state(
    s_sel, z_sel, SBLK, ZBLK, blk, k, v, cmask, FEATURE: tl.constexpr, RECOMPUTE: tl.constexpr,
    HEAD_DIM: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """Add key block j's linear state (S_j = φ(K_j)ᵀV_j, z_j = Σφ(K_j)): read from the prepare pass,
    or recomputed from the K/V tiles already loaded (no state traffic, one more small MMA)."""
    d = tl.arange(0, HEAD_DIM)
    if RECOMPUTE:
        phik = tl.where(cmask[:, None], feature_map(k.to(tl.float32), FEATURE), 0.0)
        s_sel = tl.dot(tl.trans(phik.to(v.dtype)), v, s_sel, input_precision=DOT_PRECISION)
        z_sel += tl.sum(phik, axis=0)
    else:
        s_sel += tl.load(SBLK + (blk * HEAD_DIM + d[:, None]) * HEAD_DIM + d[None, :]).to(tl.float32)
        z_sel += tl.load(ZBLK + blk * HEAD_DIM + d)
    return s_sel, z_sel


@triton.jit
def _attend_block(
    q, k_base, v_base, stride_kn, stride_vn, j, m_i, l_i, acc, s_sel, z_sel, SBLK, ZBLK, sbase,
    N, n_special, frame_len, n_special_total, qk_scale,
    BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, FEATURE: tl.constexpr, LINEAR: tl.constexpr,
    HAS_SPECIAL: tl.constexpr, RECOMPUTE_STATES: tl.constexpr, DOT_PRECISION: tl.constexpr,
    PATCH_MAP: tl.constexpr, MASK: tl.constexpr,
):  # fmt: skip
    """One selected key block j: the online-softmax step and, for the complement branch, its state.
    ``PATCH_MAP``: a patch-only block, mapped once per block; ``MASK``: it may be the trailing partial
    block (key columns ≥ N masked)."""
    cols = j * BLOCK_N + tl.arange(0, BLOCK_N)
    if PATCH_MAP:
        phys = patch_pair_rows(j, j, n_special, frame_len, n_special_total, BLOCK_N, 1)
    else:
        phys = virtual_to_physical(cols, n_special, frame_len, n_special_total, HAS_SPECIAL)
    m_i, l_i, acc, k, v = _attend_cols(
        q, k_base, v_base, stride_kn, stride_vn, cols, phys, m_i, l_i, acc, N, qk_scale, HEAD_DIM, MASK,
        DOT_PRECISION,
    )  # fmt: skip
    if LINEAR == 2:
        if MASK:
            cmask = cols < N
        else:
            cmask = tl.full([BLOCK_N], 1, dtype=tl.int1)
        s_sel, z_sel = _add_block_state(
            s_sel, z_sel, SBLK, ZBLK, sbase + j, k, v, cmask, FEATURE, RECOMPUTE_STATES, HEAD_DIM,
            DOT_PRECISION,
        )  # fmt: skip
    return m_i, l_i, acc, s_sel, z_sel


@triton.jit
def _walk_blocks(
    q, k_base, v_base, stride_kn, stride_vn, lut, t0, n, m_i, l_i, acc, s_sel, z_sel, SBLK, ZBLK, sbase,
    N, n_special, frame_len, n_special_total, qk_scale,
    BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, FEATURE: tl.constexpr, LINEAR: tl.constexpr,
    HAS_SPECIAL: tl.constexpr, RECOMPUTE_STATES: tl.constexpr, DOT_PRECISION: tl.constexpr,
    PAIR: tl.constexpr, PATCH_MAP: tl.constexpr,
):  # fmt: skip
    """Attend to the ``n`` full key blocks listed at LUT entries t0 … t0+n−1: PAIR blocks per step, then
    the odd one. ``PATCH_MAP``: the entries are patch-only blocks, mapped once per block
    (``patch_pair_rows``); otherwise every column takes the general virtual → physical mapping."""
    n_single = n
    if PAIR == 2:
        for t in range(0, n // 2):
            j0 = tl.load(lut + t0 + 2 * t).to(tl.int32)
            j1 = tl.load(lut + t0 + 2 * t + 1).to(tl.int32)
            cols = _pair_cols(j0, j1, BLOCK_N)
            if PATCH_MAP:
                phys = patch_pair_rows(j0, j1, n_special, frame_len, n_special_total, BLOCK_N, 2)
            else:
                phys = virtual_to_physical(cols, n_special, frame_len, n_special_total, HAS_SPECIAL)
            m_i, l_i, acc, k, v = _attend_cols(
                q, k_base, v_base, stride_kn, stride_vn, cols, phys, m_i, l_i, acc, N, qk_scale, HEAD_DIM,
                False, DOT_PRECISION,
            )  # fmt: skip
            if LINEAR == 2:
                full = tl.full([2 * BLOCK_N], 1, dtype=tl.int1)
                if RECOMPUTE_STATES:
                    s_sel, z_sel = _add_block_state(
                        s_sel, z_sel, SBLK, ZBLK, 0, k, v, full, FEATURE, True, HEAD_DIM, DOT_PRECISION
                    )
                else:
                    s_sel, z_sel = _add_block_state(
                        s_sel, z_sel, SBLK, ZBLK, sbase + j0, k, v, full, FEATURE, False, HEAD_DIM,
                        DOT_PRECISION,
                    )  # fmt: skip
                    s_sel, z_sel = _add_block_state(
                        s_sel, z_sel, SBLK, ZBLK, sbase + j1, k, v, full, FEATURE, False, HEAD_DIM,
                        DOT_PRECISION,
                    )  # fmt: skip
        n_single = n % 2
    for t in range(n - n_single, n):
        m_i, l_i, acc, s_sel, z_sel = _attend_block(
            q, k_base, v_base, stride_kn, stride_vn, tl.load(lut + t0 + t).to(tl.int32), m_i, l_i, acc,
            s_sel, z_sel, SBLK, ZBLK, sbase, N, n_special, frame_len, n_special_total, qk_scale, BLOCK_N,
            HEAD_DIM, FEATURE, LINEAR, HAS_SPECIAL, RECOMPUTE_STATES, DOT_PRECISION, PATCH_MAP, False,
        )  # fmt: skip
    return m_i, l_i, acc, s_sel, z_sel


@triton.jit(do_not_specialize=SIZE_ARGS)
def _sla_forward_kernel(
    Q, K, V, O, OL, LSE,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_on,
    stride_lb, stride_lh, stride_ln,
    LUT, SBLK, ZBLK, STOT, ZTOT, W,
    H, N, n_qblocks, n_kblocks, n_srows, topk, state_row, z_row,
    n_special, frame_len, n_special_total, n_forced,
    qk_scale, eps,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
    FEATURE: tl.constexpr, LINEAR: tl.constexpr, FUSE_PROJ: tl.constexpr,
    HAS_SPECIAL: tl.constexpr, STORE_LSE: tl.constexpr, RECOMPUTE_STATES: tl.constexpr,
    DOT_PRECISION: tl.constexpr, PAIR: tl.constexpr, FAST_MAP: tl.constexpr,
):  # fmt: skip
    i = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)  # int64 offsets: 1,000 frames of qkv views exceed 2**31 elements
    b = bh // H
    h = bh % H
    rows = i * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < N
    d = tl.arange(0, HEAD_DIM)

    q = tl.load(
        Q + b * stride_qb + h * stride_qh + rows.to(tl.int64)[:, None] * stride_qn + d[None, :],
        mask=rmask[:, None],
        other=0.0,
    )
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    if LINEAR == 2:
        s_sel = tl.zeros([HEAD_DIM, HEAD_DIM], dtype=tl.float32)
        z_sel = tl.zeros([HEAD_DIM], dtype=tl.float32)
    else:  # unused placeholders
        s_sel = tl.zeros([1, 1], dtype=tl.float32)
        z_sel = tl.zeros([1], dtype=tl.float32)
    lut = LUT + (bh * n_qblocks + i) * topk
    sbase = bh * n_srows
    # LUT rows are ascending and distinct, so only the last entry can be the trailing partial key block:
    # the walks run unmasked and the last block is peeled off with masks. With FAST_MAP the first
    # n_forced entries (the blocks that hold special tokens, always selected) take the general virtual →
    # physical mapping, and every later entry (a patch-only block: its index is at least its position)
    # the per-block mapping of patch_pair_rows. PAIR = 2 (an autotuned choice) walks two blocks at a time
    # as one [2·BLOCK_N] key tile.
    n_lead = 0
    if FAST_MAP:
        n_lead = tl.minimum(n_forced, topk - 1)
        m_i, l_i, acc, s_sel, z_sel = _walk_blocks(
            q, k_base, v_base, stride_kn, stride_vn, lut, 0, n_lead, m_i, l_i, acc, s_sel, z_sel, SBLK, ZBLK,
            sbase, N, n_special, frame_len, n_special_total, qk_scale, BLOCK_N, HEAD_DIM, FEATURE, LINEAR,
            HAS_SPECIAL, RECOMPUTE_STATES, DOT_PRECISION, PAIR, False,
        )  # fmt: skip
    m_i, l_i, acc, s_sel, z_sel = _walk_blocks(
        q, k_base, v_base, stride_kn, stride_vn, lut, n_lead, topk - 1 - n_lead, m_i, l_i, acc, s_sel, z_sel,
        SBLK, ZBLK, sbase, N, n_special, frame_len, n_special_total, qk_scale, BLOCK_N, HEAD_DIM, FEATURE,
        LINEAR, HAS_SPECIAL, RECOMPUTE_STATES, DOT_PRECISION, PAIR, FAST_MAP,
    )  # fmt: skip
    # the last entry: possibly partial, and possibly a special block (when topk ≤ n_forced), so it always
    # takes the general mapping (one block per program)
    m_i, l_i, acc, s_sel, z_sel = _attend_block(
        q, k_base, v_base, stride_kn, stride_vn, tl.load(lut + topk - 1).to(tl.int32), m_i, l_i, acc, s_sel,
        z_sel, SBLK, ZBLK, sbase, N, n_special, frame_len, n_special_total, qk_scale, BLOCK_N, HEAD_DIM,
        FEATURE, LINEAR, HAS_SPECIAL, RECOMPUTE_STATES, DOT_PRECISION, False, True,
    )  # fmt: skip
    out = acc / l_i[:, None]

    o_offs = b * stride_ob + h * stride_oh + rows.to(tl.int64)[:, None] * stride_on + d[None, :]
    if LINEAR != 0:
        # q is read again (volatile: not merged with the first load) instead of being kept in registers
        # across the loop for φ(q): at 8 warps that takes the fused forward from 217 to 182 registers
        # (complement) and from 170 to 138 (all tokens), close enough for the 128-register cap of the
        # autotune configs (≤ 56 bytes spilled) to let two programs share an SM (sm_90a compile report,
        # sla_compile_check).
        q_again = tl.load(
            Q + b * stride_qb + h * stride_qh + rows.to(tl.int64)[:, None] * stride_qn + d[None, :],
            mask=rmask[:, None],
            other=0.0,
            volatile=True,
        )
        phiq = feature_map(q_again.to(tl.float32), FEATURE)
        if LINEAR == 3:  # complement states summed per query block outside (sla_linear_domain)
            # rows of state_row / z_row entries: D² / D, or D² + D for both in the augmented layout
            qb = bh * n_qblocks + i
            s_i = tl.load(STOT + qb * state_row + d[:, None] * HEAD_DIM + d[None, :])
            z_i = tl.load(ZTOT + qb * z_row + d).to(tl.float32)
        else:
            s_i = tl.load(STOT + (bh * HEAD_DIM + d[:, None]) * HEAD_DIM + d[None, :])
            z_i = tl.load(ZTOT + bh * HEAD_DIM + d)
        if LINEAR == 2:
            s_i = s_i - s_sel
            z_i = z_i - z_sel
        o_l = linear_readout(phiq, s_i, z_i, eps, q.dtype, DOT_PRECISION)
        if FUSE_PROJ:
            out = add_projected(out, o_l, W, q.dtype, HEAD_DIM, DOT_PRECISION)
        else:
            tl.store(OL + o_offs, o_l.to(OL.dtype.element_ty), mask=rmask[:, None])
    tl.store(O + o_offs, out.to(O.dtype.element_ty), mask=rmask[:, None])
    if STORE_LSE:
        tl.store(
            LSE + b * stride_lb + h * stride_lh + rows.to(tl.int64) * stride_ln,
            m_i + tl.log2(l_i),
            mask=rmask,
        )


# Per work bucket (selected blocks per query block); configs per head_dim in sla_triton_common.CONFIGS.
_sla_forward_kernel_tuned = bucketed_autotune(
    _sla_forward_kernel,
    "forward",
    key=["HEAD_DIM", "BLOCK_M", "BLOCK_N", "FEATURE", "LINEAR", "FUSE_PROJ", "HAS_SPECIAL", "STORE_LSE",
         "RECOMPUTE_STATES", "FAST_MAP"],
)  # fmt: skip


def autotune_choices() -> dict:
    return tuning_report(_sla_forward_kernel_tuned)


def empty_bnhd(B: int, H: int, N: int, D: int, like: torch.Tensor, dtype=None) -> torch.Tensor:
    """A [B, H, N, D] tensor stored as [B, N, H, D], so merging the heads afterwards is a view."""
    return torch.empty(B, N, H, D, device=like.device, dtype=dtype or like.dtype).transpose(1, 2)


def sla_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lut: torch.Tensor,
    s_blk: torch.Tensor,
    z_blk: torch.Tensor,
    s_tot: torch.Tensor,
    z_tot: torch.Tensor,
    proj_weight: torch.Tensor | None,
    geom: SLAGeometry,
    *,
    feature: str,
    linear: str,
    eps: float,
    scale: float,
    fuse_proj: bool,
    recompute_states: bool = False,
    summed_states: bool = False,
    pair: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the forward kernel.

    Returns (o, o_l, lse). With ``fuse_proj`` (inference) o = o_s + o_l·Wᵀ and o_l, lse are empty; else
    o = o_s, o_l is the unprojected linear branch (empty when linear is "none") and lse [B, H, N] is the
    float32 base-2 log-sum-exp of the sparse branch.

    Complement states: ``s_blk``/``z_blk`` per key block (read per selected block), or empty with
    ``recompute_states`` (recomputed from K/V in the loop), or, with ``summed_states``, ``s_tot``/``z_tot``
    are the complement sums per query block [B, H, Mq, D, D] / [B, H, Mq, D] (or, augmented, s_tot
    [B, H, Mq, D² + D] holds both: ``sla_linear_domain.complement_sums_augmented``) and
    ``s_blk``/``z_blk`` are unused. ``pair``: key blocks per loop step for the plain (interpreted)
    kernel; autotuned on CUDA.
    """
    B, H, N, D = q.shape
    lin = effective_linear_code(linear, geom)
    if summed_states and recompute_states:
        raise ValueError("give the complement states summed per query block or recompute them, not both")
    # Kernel code 3: the complement branch with its states already summed per query block (s_tot, z_tot
    # are then [B, H, Mq, D, D] / [B, H, Mq, D]); the loop carries no state accumulators.
    kernel_lin = 3 if (lin == 2 and summed_states) else lin
    z_view, state_row, z_row = z_tot, D * D, D
    if kernel_lin == 3 and augmented_states(s_tot, D):
        z_view, state_row, z_row = s_tot[..., D * D :], D * D + D, D * D + D
    fuse = bool(fuse_proj and lin)
    o = empty_bnhd(B, H, N, D, q)
    o_l = empty_bnhd(B, H, N, D, q) if (lin and not fuse) else q.new_empty(0)
    store_lse = not fuse_proj
    lse = (
        torch.empty(B, H, N, device=q.device, dtype=torch.float32)
        if store_lse
        else q.new_empty(0, dtype=torch.float32)
    )
    lse_strides = lse.stride() if store_lse else (0, 0, 0)
    w = proj_weight if fuse else q.new_empty(0)
    kernel, meta = _common.forward_launch(_sla_forward_kernel_tuned, _sla_forward_kernel, q, geom.topk, pair)
    kernel[(geom.n_qblocks, B * H)](
        q, k, v, o, o_l, lse,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        o.stride(0), o.stride(1), o.stride(2),
        *lse_strides,
        lut, s_blk, z_blk, s_tot, z_view, w,
        H, N, geom.n_qblocks, geom.n_kblocks, max(s_blk.shape[2] if s_blk.dim() == 5 else 0, 1), geom.topk,
        state_row, z_row,
        max(geom.n_special, 1), geom.frame_len, geom.n_special_total, geom.n_forced,
        scale * LOG2E, eps,
        BLOCK_M=geom.block_q, BLOCK_N=geom.block_k, HEAD_DIM=D,
        FEATURE=FEATURE_CODES[feature], LINEAR=kernel_lin, FUSE_PROJ=fuse,
        HAS_SPECIAL=geom.n_special > 0, STORE_LSE=store_lse, RECOMPUTE_STATES=bool(recompute_states),
        FAST_MAP=fast_patch_map(geom),
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32", **meta,
    )  # fmt: skip
    if lin == 0 and linear != "none" and not fuse_proj:
        o_l = torch.zeros_like(o)  # empty complement: the linear branch is exactly zero
    return o, o_l, lse
