"""SLA preparation kernel: block pooling for the selection and the linear-branch block states.

One pass over q, k, v (strided [B, H, N, D] views, no copies) produces everything the selection and
the sparse-linear forward need:

* pooled q per query block and pooled k per key block (float32, partial blocks over their true length);
* per key block S_j = φ(K_j)ᵀV_j and z_j = Σφ(K_j) (only for the complement linear branch, which
  subtracts the selected blocks' states from the totals);
* per-program partial sums of S, z and k, reduced to the totals S_tot, z_tot and the sequence mean of
  k by a small fixed-order sum (``sla_sum_rows``; no atomics, so results are deterministic);
* optionally (``augmented``, the "summed" inference path), the states as one row per key block,
  S_j's D² entries followed by z_j's D entries in the state dtype, so the complement sums of both are
  one GEMM (``sla_linear_domain.complement_sums_augmented``) and no kernel gathers the z_j;
* optionally, copies of K and V in virtual key order, zero-padded to whole key blocks
  ([B·H·n_kblocks·block_k, D], contiguous), for the forward kernel that loads key blocks with TMA
  (``sla_forward_tma``): this pass reads every key and value anyway, so the copy costs only its writes;
* on the fused-qk path (``sla_ops.sla_attention_fused_qk``) the qk-norm/RoPE kernel has already pooled
  the queries and written k in virtual order: then q is not read and only the V copy is written.

Each program handles a contiguous run of key blocks and of query blocks of one (batch, head). The
reference is :func:`prepare_reference` below.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import sla_sum_rows as _sum_rows
from .sla_reference import SLAGeometry, block_states_reference, pool_blocks, virtual_key_order
from .sla_triton_common import FEATURE_CODES, LINEAR_CODES, SIZE_ARGS, feature_map, virtual_to_physical

# At most this many programs per (batch, head): bounds the partial-sum buffers at long sequences.
_MAX_CHUNKS = 128
_MIN_KBLOCKS_PER_PROGRAM = 4


@triton.jit(do_not_specialize=SIZE_ARGS)
def _sla_prepare_kernel(
    Q, K, V,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    PQ, PK, SBLK, ZBLK, SPART, ZPART, KPART, KVIRT, VVIRT,
    H, N, n_qblocks, n_kblocks, n_srows, n_chunks, qb_per_prog, kb_per_prog,
    n_special, frame_len, n_special_total,
    BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, HEAD_DIM: tl.constexpr,
    FEATURE: tl.constexpr, LINEAR: tl.constexpr, STORE_STATES: tl.constexpr, HAS_SPECIAL: tl.constexpr,
    DOT_PRECISION: tl.constexpr, TOTALS: tl.constexpr, WRITE_VIRTUAL: tl.constexpr,
    AUGMENTED: tl.constexpr, POOL_Q: tl.constexpr, K_VIRTUAL: tl.constexpr,
):  # fmt: skip
    c = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)  # int64 offsets: 1,000 frames of qkv views exceed 2**31 elements
    b = bh // H
    h = bh % H
    d = tl.arange(0, HEAD_DIM)

    # Mean-pooled queries of this program's query blocks.
    q_base = Q + b * stride_qb + h * stride_qh
    if POOL_Q:  # else the queries were pooled where they were written (qk_norm_rope_sla)
        q_lo = c * qb_per_prog
        for i in range(q_lo, tl.minimum(q_lo + qb_per_prog, n_qblocks)):
            rows = i * BLOCK_Q + tl.arange(0, BLOCK_Q)
            x = tl.load(
                q_base + rows.to(tl.int64)[:, None] * stride_qn + d[None, :],
                mask=(rows < N)[:, None],
                other=0.0,
            )
            count = tl.minimum(N - i * BLOCK_Q, BLOCK_Q).to(tl.float32)
            tl.store(
                PQ + (bh * n_qblocks + i) * HEAD_DIM + d,
                tl.sum(x.to(tl.float32), axis=0) / count,
            )

    # Key blocks: pooled k, and the linear-branch states.
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    k_lo = c * kb_per_prog
    k_acc = tl.zeros([HEAD_DIM], dtype=tl.float32)
    s_acc = tl.zeros([HEAD_DIM, HEAD_DIM], dtype=tl.float32)
    z_acc = tl.zeros([HEAD_DIM], dtype=tl.float32)
    for j in range(k_lo, tl.minimum(k_lo + kb_per_prog, n_kblocks)):
        cols = j * BLOCK_K + tl.arange(0, BLOCK_K)
        cmask = cols < N
        phys = virtual_to_physical(cols, n_special, frame_len, n_special_total, HAS_SPECIAL)
        krows = cols if K_VIRTUAL else phys  # K_VIRTUAL: k is already in virtual order
        kx = tl.load(
            k_base + krows.to(tl.int64)[:, None] * stride_kn + d[None, :], mask=cmask[:, None], other=0.0
        )
        kf = kx.to(tl.float32)
        ksum = tl.sum(kf, axis=0)
        count = tl.minimum(N - j * BLOCK_K, BLOCK_K).to(tl.float32)
        tl.store(PK + (bh * n_kblocks + j) * HEAD_DIM + d, ksum / count)
        k_acc += ksum
        if LINEAR != 0 or WRITE_VIRTUAL:
            vx = tl.load(
                v_base + phys.to(tl.int64)[:, None] * stride_vn + d[None, :], mask=cmask[:, None], other=0.0
            )
        if WRITE_VIRTUAL:  # rows past N are written as zeros (the loads' fill value)
            vrows = (bh * n_kblocks + j) * BLOCK_K + tl.arange(0, BLOCK_K)
            if not K_VIRTUAL:
                tl.store(KVIRT + vrows[:, None] * HEAD_DIM + d[None, :], kx)
            tl.store(VVIRT + vrows[:, None] * HEAD_DIM + d[None, :], vx)
        if LINEAR != 0:
            phi = tl.where(cmask[:, None], feature_map(kf, FEATURE), 0.0)
            s_j = tl.dot(tl.trans(phi.to(vx.dtype)), vx, input_precision=DOT_PRECISION)
            z_j = tl.sum(phi, axis=0)
            if STORE_STATES:
                blk = bh * n_srows + j
                if AUGMENTED:  # [S_j | z_j] in one row of D² + D entries
                    row = SBLK + blk * (HEAD_DIM * HEAD_DIM + HEAD_DIM)
                    tl.store(row + d[:, None] * HEAD_DIM + d[None, :], s_j.to(SBLK.dtype.element_ty))
                    tl.store(row + HEAD_DIM * HEAD_DIM + d, z_j.to(SBLK.dtype.element_ty))
                else:
                    tl.store(
                        SBLK + (blk * HEAD_DIM + d[:, None]) * HEAD_DIM + d[None, :],
                        s_j.to(SBLK.dtype.element_ty),
                    )
                    tl.store(ZBLK + blk * HEAD_DIM + d, z_j)
            if TOTALS:
                s_acc += s_j
                z_acc += z_j

    if (LINEAR != 0 and STORE_STATES) and c == n_chunks - 1:  # zero the padding rows past the last block
        for j in range(n_kblocks, n_srows):
            blk = bh * n_srows + j
            zeros_s = tl.zeros([HEAD_DIM, HEAD_DIM], dtype=tl.float32).to(SBLK.dtype.element_ty)
            if AUGMENTED:
                row = SBLK + blk * (HEAD_DIM * HEAD_DIM + HEAD_DIM)
                tl.store(row + d[:, None] * HEAD_DIM + d[None, :], zeros_s)
                tl.store(
                    row + HEAD_DIM * HEAD_DIM + d,
                    tl.zeros([HEAD_DIM], dtype=tl.float32).to(SBLK.dtype.element_ty),
                )
            else:
                tl.store(SBLK + (blk * HEAD_DIM + d[:, None]) * HEAD_DIM + d[None, :], zeros_s)
                tl.store(ZBLK + blk * HEAD_DIM + d, tl.zeros([HEAD_DIM], dtype=tl.float32))

    part = bh * n_chunks + c
    tl.store(KPART + part * HEAD_DIM + d, k_acc)
    if LINEAR != 0 and TOTALS:
        tl.store(SPART + (part * HEAD_DIM + d[:, None]) * HEAD_DIM + d[None, :], s_acc)
        tl.store(ZPART + part * HEAD_DIM + d, z_acc)


def state_dtype_for(dtype: torch.dtype) -> torch.dtype:
    """Storage dtype of the per-block states S_j: BF16 for BF16 inputs (they are only subtracted from
    FP32 totals, so the rounding stays relative to one block), FP32 otherwise (FP16 could overflow)."""
    return torch.bfloat16 if dtype == torch.bfloat16 else torch.float32


def padded_kblocks(n_kblocks: int) -> int:
    """Rows of the per-block state tensors: the key-block count rounded up to a multiple of 8. cuBLAS
    runs a 16-bit GEMM whose reduction length is not a multiple of 8 on sm75/sm80 kernels, 3-5× slower
    on the H100 (benchmarks/probes/bmm_k_alignment.py: 0.29 vs 0.06 ms at 32 VGGT frames)."""
    return -(-n_kblocks // 8) * 8


def dot_precision_for(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


def prepare_chunking(geom: SLAGeometry) -> tuple[int, int, int]:
    """(n_chunks, query blocks per program, key blocks per program)."""
    n_chunks = max(1, min(_MAX_CHUNKS, -(-geom.n_kblocks // _MIN_KBLOCKS_PER_PROGRAM)))
    kb = -(-geom.n_kblocks // n_chunks)
    n_chunks = -(-geom.n_kblocks // kb)
    qb = -(-geom.n_qblocks // n_chunks)
    return n_chunks, qb, kb


def sla_prepare(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    geom: SLAGeometry,
    feature: str,
    linear: str,
    store_states: bool = True,
    totals: bool = True,
    launch: dict | None = None,
    virtual_kv: bool = False,
    augmented: bool = False,
    pool_q: bool = True,
    k_virtual: bool = False,
) -> tuple[torch.Tensor, ...]:
    """Launch the preparation kernel (``launch``: num_warps / num_stages other than the defaults, for
    the prepare probe).

    Returns (pq [B,H,Mq,D] f32, pk [B,H,Nk,D] f32, kmean [B,H,D] f32, s_blk [B,H,Nk',D,D] (state
    dtype), z_blk [B,H,Nk',D] f32 — Nk' = Nk rounded up to a multiple of 8, the rows past Nk zero, so
    the complement-sums GEMM reduces over a 16-byte aligned length (``padded_kblocks``); both empty unless linear is "complement" and ``store_states`` (the
    forward can recompute the selected blocks' states from K/V instead) —, s_tot [B,H,D,D] f32,
    z_tot [B,H,D] f32 (both empty when linear is "none", or without ``totals``: the complement sums
    per query block need only the per-block states, and dropping the running D×D sum frees registers)),
    and with ``virtual_kv`` the virtual-order copies k_virtual, v_virtual [B·H·n_kblocks·block_k, D]
    (empty otherwise). ``augmented`` (with stored complement states): s_blk is [B, H, Nk', D² + D] in
    the state dtype, each row S_j's entries then z_j's, and z_blk is empty.

    ``pool_q=False``: q is not read (only its shape is used) and pq is empty — the queries were pooled
    where they were written (``qk_norm_rope_sla``). ``k_virtual``: k is already the virtual-order copy
    [B·H·n_kblocks·block_k, D] (``qk_norm_rope_sla`` writes it), read contiguously; with ``virtual_kv``
    only the V copy is written and k_virtual comes back empty.
    """
    if launch and not set(launch) <= {"num_warps", "num_stages"}:
        raise ValueError(f"launch takes num_warps and num_stages, got {sorted(launch)}")
    B, H, N, D = q.shape
    dev = q.device
    n_chunks, qb, kb = prepare_chunking(geom)
    lin = LINEAR_CODES[linear]
    f32 = torch.float32
    pq = torch.empty(B, H, geom.n_qblocks, D, device=dev, dtype=f32) if pool_q else q.new_empty(0, dtype=f32)
    n_vrows = geom.n_kblocks * geom.block_k
    if k_virtual:
        if k.shape != (B * H * n_vrows, D) or not k.is_contiguous():
            raise ValueError(
                f"a virtual-order k must be contiguous [{B * H * n_vrows}, {D}] (B·H·n_kblocks·block_k rows), "
                f"got {tuple(k.shape)}"
            )
        k_strides = (H * n_vrows * D, n_vrows * D, D)
    else:
        k_strides = (k.stride(0), k.stride(1), k.stride(2))
    pk = torch.empty(B, H, geom.n_kblocks, D, device=dev, dtype=f32)
    kpart = torch.empty(B, H, n_chunks, D, device=dev, dtype=f32)
    store = lin == 2 and store_states
    n_srows = padded_kblocks(geom.n_kblocks)
    augmented = bool(augmented and store)
    if augmented:
        s_blk = torch.empty(B, H, n_srows, D * D + D, device=dev, dtype=state_dtype_for(q.dtype))
        z_blk = torch.empty(0, device=dev, dtype=f32)
    elif store:
        s_blk = torch.empty(B, H, n_srows, D, D, device=dev, dtype=state_dtype_for(q.dtype))
        z_blk = torch.empty(B, H, n_srows, D, device=dev, dtype=f32)
    else:
        s_blk = torch.empty(0, device=dev, dtype=f32)
        z_blk = torch.empty(0, device=dev, dtype=f32)
    totals = bool(totals and lin)
    if totals:
        spart = torch.empty(B, H, n_chunks, D, D, device=dev, dtype=f32)
        zpart = torch.empty(B, H, n_chunks, D, device=dev, dtype=f32)
    else:
        spart = zpart = torch.empty(0, device=dev, dtype=f32)
    if virtual_kv:
        rows = B * H * n_vrows
        k_virt = torch.empty(0 if k_virtual else rows, D, device=dev, dtype=q.dtype)  # k is the copy
        v_virt = torch.empty(rows, D, device=dev, dtype=q.dtype)
    else:
        k_virt, v_virt = (torch.empty(0, device=dev, dtype=q.dtype) for _ in range(2))  # distinct: op outputs
    _sla_prepare_kernel[(n_chunks, B * H)](
        q, k, v,
        q.stride(0), q.stride(1), q.stride(2),
        *k_strides,
        v.stride(0), v.stride(1), v.stride(2),
        pq, pk, s_blk, z_blk, spart, zpart, kpart, k_virt, v_virt,
        H, N, geom.n_qblocks, geom.n_kblocks, n_srows, n_chunks, qb, kb,
        max(geom.n_special, 1), geom.frame_len, geom.n_special_total,
        BLOCK_Q=geom.block_q, BLOCK_K=geom.block_k, HEAD_DIM=D,
        FEATURE=FEATURE_CODES[feature], LINEAR=lin, STORE_STATES=store, HAS_SPECIAL=geom.n_special > 0,
        DOT_PRECISION=dot_precision_for(q.dtype), TOTALS=totals, WRITE_VIRTUAL=bool(virtual_kv),
        AUGMENTED=augmented, POOL_Q=bool(pool_q), K_VIRTUAL=bool(k_virtual),
        **({"num_warps": 4 if D <= 64 else 8, **(launch or {})} if q.is_cuda else {}),
    )  # fmt: skip
    BH = B * H
    kmean = _sum_rows.sum_rows(kpart.view(BH, n_chunks, D), 1.0 / N).view(B, H, D)
    if totals:
        s_tot = _sum_rows.sum_rows(spart.view(BH, n_chunks, D * D)).view(B, H, D, D)
        z_tot = _sum_rows.sum_rows(zpart.view(BH, n_chunks, D)).view(B, H, D)
    else:
        s_tot, z_tot = (torch.empty(0, device=dev, dtype=f32) for _ in range(2))
    return pq, pk, kmean, s_blk, z_blk, s_tot, z_tot, k_virt, v_virt


def prepare_reference(q, k, v, geom: SLAGeometry, feature: str, linear: str):
    """What :func:`sla_prepare` computes, in plain PyTorch (float32 states)."""
    order = virtual_key_order(geom, q.device)
    kv_, vv_ = (k, v) if order is None else (k[:, :, order], v[:, :, order])
    pq = pool_blocks(q, geom.block_q)
    pk = pool_blocks(kv_, geom.block_k)
    kmean = k.float().mean(2)
    s_blk, z_blk = block_states_reference(kv_, vv_, geom.block_k, feature)
    return pq, pk, kmean, s_blk, z_blk, s_blk.sum(2), z_blk.sum(2)
