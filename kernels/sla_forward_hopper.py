"""SLA forward kernel for Hopper (sm_90), written in Gluon: the MMAs overlap the softmax.

Same maths, inputs and outputs as ``sla_forward.py`` (reference: ``sla_reference.py``), for the
inference and training launches that matter most: bf16/fp16, 128-row query blocks, 64-token key
blocks, head_dim 64 or 128, linear branch "none", "all" or the complement with its states summed per
query block outside. Everything else runs the portable Triton kernel (``sla_forward.sla_forward``).

Why a second kernel: the Triton kernel issues its two MMAs and the softmax one after the other, and
its instruction count per key tile explains its speed (``benchmarks/probes/sla_sass_mix.py``). Here
the wgmmas are asynchronous and explicitly ordered, FlashAttention-3 style within a warpgroup: step t
issues S_t = Q·K_tᵀ and O += P_{t−1}·V_{t−1} back to back, waits only for S_t, and runs the softmax of
S_t while the tensor cores finish P_{t−1}·V_{t−1}. Key tiles are two selected blocks side by side
(128 keys), gathered row by row with cp.async into a four-stage shared-memory ring (the virtual →
physical key mapping puts every frame's special tokens first, so rows are not contiguous), two tiles
ahead of the MMAs.
"""

from __future__ import annotations

import functools

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy as cp
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    warpgroup_mma,
    warpgroup_mma_wait,
)

from .sla_reference import SLAGeometry
from .sla_triton_common import FEATURE_CODES, LINEAR_CODES

LOG2E = 1.4426950408889634
NUM_WARPS = 8  # two warpgroups, 64 query rows each
STAGES = 4  # K/V ring: tile t+2 is loaded while the MMAs of t and t−1 may still read their buffers
BLOCK_M = 128
BLOCK_N = 64


def unsupported_reason(
    q: torch.Tensor, geom: SLAGeometry, linear_code: int, summed_states: bool
) -> str | None:
    """Why this kernel cannot run a launch (None when it can); the caller then runs the Triton kernel."""
    if q.device.type != "cuda":
        return "not a CUDA tensor"
    if torch.cuda.get_device_capability(q.device)[0] != 9:
        return f"wgmma needs an sm_90 GPU (this one is sm_{''.join(map(str, torch.cuda.get_device_capability(q.device)))})"
    if q.dtype not in (torch.bfloat16, torch.float16):
        return f"dtype {q.dtype} (bf16/fp16 only)"
    if q.shape[-1] != 64:  # a 128-wide ring of four K/V stages would not fit in shared memory
        return f"head_dim {q.shape[-1]} (64 only)"
    if (geom.block_q, geom.block_k) != (BLOCK_M, BLOCK_N):
        return f"blocks {geom.block_q}×{geom.block_k} (128×64 only)"
    if linear_code == 2 and not summed_states:
        return "complement states stored or recomputed per block (summed only)"
    return None


@gluon.jit
def _virtual_to_physical(v, n_special, frame_len, n_special_total, HAS_SPECIAL: gl.constexpr):
    """Physical token row of virtual key positions ``v`` (every frame's special tokens first)."""
    if HAS_SPECIAL:
        is_special = v < n_special_total
        vs = gl.where(is_special, v, 0)
        f_s = vs // n_special
        phys_s = f_s * frame_len + (vs - f_s * n_special)
        p = gl.where(is_special, 0, v - n_special_total)
        patches = frame_len - n_special
        f_p = p // patches
        phys_p = f_p * frame_len + n_special + (p - f_p * patches)
        return gl.where(is_special, phys_s, phys_p)
    else:
        return v


@gluon.jit
def _tile_cols(lut, t, topk, N, BLOCK_N: gl.constexpr, layout: gl.constexpr):
    """Virtual key columns of tile t (LUT entries 2t and 2t+1 side by side) and which of them exist: an
    odd last entry leaves the second half empty, and the last key block may be partial."""
    c = gl.arange(0, 2 * BLOCK_N, layout=layout)
    e1 = 2 * t + 1
    j0 = gl.load(lut + 2 * t).to(gl.int32)
    j1 = gl.load(lut + gl.minimum(e1, topk - 1)).to(gl.int32)
    second = c >= BLOCK_N
    cols = gl.where(second, j1 * BLOCK_N + c - BLOCK_N, j0 * BLOCK_N + c)
    valid = (cols < N) & ((c < BLOCK_N) | (e1 < topk))
    return cols, valid


@gluon.jit
def _issue_tile(
    k_buf, v_buf, k_base, v_base, stride_kn, stride_vn, lut, t, topk, N, n_special, frame_len,
    n_special_total, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr, HAS_SPECIAL: gl.constexpr,
    LOAD: gl.constexpr,
):  # fmt: skip
    """Gather tile t's K and V rows into one ring stage with cp.async (missing rows are zero-filled)."""
    cols, valid = _tile_cols(lut, t, topk, N, BLOCK_N, gl.SliceLayout(1, LOAD))
    phys = _virtual_to_physical(cols, n_special, frame_len, n_special_total, HAS_SPECIAL).to(gl.int64)
    d = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, LOAD))
    mask = valid[:, None] & (d[None, :] < HEAD_DIM)
    cp.async_copy_global_to_shared(k_buf, k_base + phys[:, None] * stride_kn + d[None, :], mask=mask)
    cp.async_copy_global_to_shared(v_buf, v_base + phys[:, None] * stride_vn + d[None, :], mask=mask)


@gluon.jit
def _feature_map(x, FEATURE: gl.constexpr):
    """φ(x) in float32 over the head dimension: ELU+1 or softmax."""
    if FEATURE == 0:
        return gl.where(x > 0, x + 1.0, gl.exp(x))
    else:
        e = gl.exp(x - gl.max(x, axis=1)[:, None])
        return e / gl.sum(e, axis=1)[:, None]


@gluon.jit
def _softmax_step(s, m_i, l_i, qk_scale):
    """One online-softmax step, base 2 with the scale folded in: P, the rescale factor, new max and sum."""
    m_new = gl.maximum(m_i, gl.max(s, axis=1) * qk_scale)
    alpha = gl.exp2(m_i - m_new)
    p = gl.exp2(s * qk_scale - m_new[:, None])
    return p, alpha, m_new, l_i * alpha + gl.sum(p, axis=1)


@gluon.jit
def _lse_rows(m_i, l_i, O_L: gl.constexpr):
    """The base-2 log-sum-exp per query row, in the output's row layout."""
    return gl.convert_layout(m_i + gl.log2(l_i), gl.SliceLayout(1, O_L))


@gluon.jit(do_not_specialize=["H", "N", "n_qblocks", "topk", "n_special", "frame_len", "n_special_total"])
def _sla_forward_wgmma_kernel(
    Q, K, V, O, OL, LSE, STOT, ZTOT, W,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_on,
    stride_lb, stride_lh, stride_ln,
    LUT, H, N, n_qblocks, topk, n_special, frame_len, n_special_total,
    qk_scale, eps,
    HEAD_DIM: gl.constexpr, FEATURE: gl.constexpr, LINEAR: gl.constexpr, FUSE_PROJ: gl.constexpr,
    HAS_SPECIAL: gl.constexpr, STORE_LSE: gl.constexpr, FENCE_SOFTMAX: gl.constexpr,
    PREFETCH: gl.constexpr,
):  # fmt: skip
    BLOCK_M: gl.constexpr = 128
    BLOCK_N: gl.constexpr = 64
    TILE: gl.constexpr = 2 * BLOCK_N
    # K/V ring: tile t+PREFETCH is gathered while the MMAs of tiles t and t−1 may still read theirs
    STAGES: gl.constexpr = PREFETCH + 2
    dtype: gl.constexpr = Q.dtype.element_ty

    # register layouts: S = Q·Kᵀ [128, 128] and O [128, D] are wgmma accumulators, 8 warps along M
    S_L: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[8, 1], instr_shape=[16, TILE, 16]
    )
    O_L: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[8, 1], instr_shape=[16, HEAD_DIM, 16]
    )
    P_L: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=O_L, k_width=2)
    # loads: 16-byte vectors, a row of HEAD_DIM elements over HEAD_DIM / 8 threads
    TPR: gl.constexpr = HEAD_DIM // 8
    LOAD: gl.constexpr = gl.BlockedLayout([1, 8], [32 // TPR, TPR], [8, 1], [1, 0])
    SMEM: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)

    i = gl.program_id(0)
    bh = gl.program_id(1).to(gl.int64)  # int64 offsets: 1,000 frames of qkv views exceed 2**31 elements
    b = bh // H
    h = bh % H
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    lut = LUT + (bh * n_qblocks + i) * topk

    q_smem = gl.allocate_shared_memory(dtype, [BLOCK_M, HEAD_DIM], SMEM)
    k_smem = gl.allocate_shared_memory(dtype, [STAGES, TILE, HEAD_DIM], SMEM)
    v_smem = gl.allocate_shared_memory(dtype, [STAGES, TILE, HEAD_DIM], SMEM)

    rows_ld = i * BLOCK_M + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, LOAD))
    d_ld = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, LOAD))
    q_mask = (rows_ld < N)[:, None] & (d_ld[None, :] < HEAD_DIM)
    q_ptrs = Q + b * stride_qb + h * stride_qh + rows_ld.to(gl.int64)[:, None] * stride_qn + d_ld[None, :]
    cp.async_copy_global_to_shared(q_smem, q_ptrs, mask=q_mask)

    n_tiles = (topk + 1) // 2
    _issue_tile(
        k_smem.index(0), v_smem.index(0), k_base, v_base, stride_kn, stride_vn, lut, 0, topk, N, n_special,
        frame_len, n_special_total, BLOCK_N, HEAD_DIM, HAS_SPECIAL, LOAD,
    )  # fmt: skip
    cp.commit_group()  # group 0: Q and tile 0; group j: tile j (empty when there is none)
    for j in gl.static_range(1, PREFETCH):
        if j < n_tiles:
            _issue_tile(
                k_smem.index(j), v_smem.index(j), k_base, v_base, stride_kn, stride_vn, lut, j, topk, N,
                n_special, frame_len, n_special_total, BLOCK_N, HEAD_DIM, HAS_SPECIAL, LOAD,
            )  # fmt: skip
        cp.commit_group()

    # first tile: S_0, its softmax (masked: it may also be the last tile)
    cp.wait_group(PREFETCH - 1)
    gl.thread_barrier()
    fence_async_shared()
    if n_tiles > PREFETCH:
        _issue_tile(
            k_smem.index(PREFETCH), v_smem.index(PREFETCH), k_base, v_base, stride_kn, stride_vn, lut, PREFETCH,
            topk, N, n_special, frame_len, n_special_total, BLOCK_N, HEAD_DIM, HAS_SPECIAL, LOAD,
        )  # fmt: skip
    cp.commit_group()
    s_zero = gl.zeros([BLOCK_M, TILE], gl.float32, S_L)
    s = warpgroup_mma(q_smem, k_smem.index(0).permute((1, 0)), s_zero, use_acc=False, is_async=True)
    s = warpgroup_mma_wait(num_outstanding=0, deps=[s])
    _, valid = _tile_cols(lut, 0, topk, N, BLOCK_N, gl.SliceLayout(0, S_L))
    s = gl.where(valid[None, :], s * qk_scale, float("-inf"))
    m_i = gl.max(s, axis=1)
    p = gl.exp2(s - m_i[:, None])
    l_i = gl.sum(p, axis=1)
    acc = gl.zeros([BLOCK_M, HEAD_DIM], gl.float32, O_L)
    p_op = gl.convert_layout(p.to(dtype), P_L)

    # steady state: tile t's scores and tile t−1's P·V in flight together; the softmax of S_t runs while
    # P_{t−1}·V_{t−1} finishes. The last tile is peeled off (masked).
    for t in range(1, n_tiles - 1):
        cp.wait_group(PREFETCH - 1)  # tile t has landed (later ones may still be in flight)
        gl.thread_barrier()  # … for every thread, and every warpgroup is done with tile t−2's buffers
        fence_async_shared()
        st = t % STAGES
        s_t = warpgroup_mma(q_smem, k_smem.index(st).permute((1, 0)), s_zero, use_acc=False, is_async=True)
        if FENCE_SOFTMAX:
            # P_{t−1} carried in float32 and converted only here: the bf16 registers a wgmma reads stay
            # locked until it completes, and a loop-carried bf16 P would make ptxas wait for P·V before
            # the softmax (32 more registers)
            p_op = gl.convert_layout(p.to(dtype), P_L)
        acc = warpgroup_mma(p_op, v_smem.index((t - 1) % STAGES), acc, is_async=True)
        # the next loads after the MMAs are issued: their addressing runs while the tensor cores work
        if t + PREFETCH < n_tiles:
            st2 = (t + PREFETCH) % STAGES
            _issue_tile(
                k_smem.index(st2), v_smem.index(st2), k_base, v_base, stride_kn, stride_vn, lut, t + PREFETCH,
                topk,
                N, n_special, frame_len, n_special_total, BLOCK_N, HEAD_DIM, HAS_SPECIAL, LOAD,
            )  # fmt: skip
        cp.commit_group()
        s_t = warpgroup_mma_wait(num_outstanding=1, deps=[s_t])
        if FENCE_SOFTMAX:
            # the softmax in its own basic block (the condition always holds): ptxas cannot hoist the
            # wait for P·V below into it, which it otherwise does after a few dozen instructions
            alpha = l_i
            p = s_t
            if qk_scale > 0.0:
                p, alpha, m_i, l_i = _softmax_step(s_t, m_i, l_i, qk_scale)
        else:
            p, alpha, m_i, l_i = _softmax_step(s_t, m_i, l_i, qk_scale)
        acc = warpgroup_mma_wait(num_outstanding=0, deps=[acc])
        acc = acc * gl.convert_layout(alpha, gl.SliceLayout(1, O_L))[:, None]
        if not FENCE_SOFTMAX:
            p_op = gl.convert_layout(p.to(dtype), P_L)

    if n_tiles > 1:
        t_last = n_tiles - 1
        cp.wait_group(0)
        gl.thread_barrier()
        fence_async_shared()
        st = t_last % STAGES
        s = warpgroup_mma(q_smem, k_smem.index(st).permute((1, 0)), s_zero, use_acc=False, is_async=True)
        p_op = gl.convert_layout(p.to(dtype), P_L)
        acc = warpgroup_mma(p_op, v_smem.index((t_last - 1) % STAGES), acc, is_async=True)
        s = warpgroup_mma_wait(num_outstanding=1, deps=[s])
        _, valid = _tile_cols(lut, t_last, topk, N, BLOCK_N, gl.SliceLayout(0, S_L))
        s = gl.where(valid[None, :], s * qk_scale, float("-inf"))
        m_new = gl.maximum(m_i, gl.max(s, axis=1))
        alpha = gl.exp2(m_i - m_new)
        p = gl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + gl.sum(p, axis=1)
        m_i = m_new
        acc = warpgroup_mma_wait(num_outstanding=0, deps=[acc])
        acc = acc * gl.convert_layout(alpha, gl.SliceLayout(1, O_L))[:, None]
    p_op = gl.convert_layout(p.to(dtype), P_L)
    acc = warpgroup_mma(p_op, v_smem.index((n_tiles - 1) % STAGES), acc, is_async=True)
    acc = warpgroup_mma_wait(num_outstanding=0, deps=[acc])
    out = acc / gl.convert_layout(l_i, gl.SliceLayout(1, O_L))[:, None]

    rows_o = i * BLOCK_M + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, O_L))
    d_o = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, O_L))
    o_mask = (rows_o < N)[:, None] & (d_o[None, :] < HEAD_DIM)
    o_offs = b * stride_ob + h * stride_oh + rows_o.to(gl.int64)[:, None] * stride_on + d_o[None, :]
    if LINEAR != 0:
        # linear branch: o_l = φ(q)·S / (φ(q)·z + eps), S and z the state totals (LINEAR 1) or the
        # complement sums of this query block (LINEAR 3), then o_l·Wᵀ added (inference)
        phiq = _feature_map(q_smem.load(O_L).to(gl.float32), FEATURE)
        if LINEAR == 3:
            sidx = bh * n_qblocks + i
        else:
            sidx = bh
        d_r = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(1, LOAD))
        s_i = gl.load(STOT + (sidx * HEAD_DIM + d_r[:, None]) * HEAD_DIM + d_ld[None, :])
        z_i = gl.load(ZTOT + sidx * HEAD_DIM + d_o)
        gl.thread_barrier()  # both warpgroups are done with the ring: its first stages hold S and W now
        s_state = k_smem.index(0).slice(0, HEAD_DIM)
        s_state.store(s_i.to(dtype))
        fence_async_shared()
        o_zero = gl.zeros([BLOCK_M, HEAD_DIM], gl.float32, O_L)
        num = warpgroup_mma(gl.convert_layout(phiq.to(dtype), P_L), s_state, o_zero, use_acc=False)
        den = gl.sum(phiq * z_i[None, :], axis=1) + eps
        o_l = num / den[:, None]
        if FUSE_PROJ:
            w = gl.load(W + d_r[:, None] * HEAD_DIM + d_ld[None, :])  # W[out, in]
            w_smem = v_smem.index(0).slice(0, HEAD_DIM)
            w_smem.store(w.to(dtype))
            fence_async_shared()
            out = warpgroup_mma(gl.convert_layout(o_l.to(dtype), P_L), w_smem.permute((1, 0)), out)
        else:
            gl.store(OL + o_offs, o_l.to(OL.dtype.element_ty), mask=o_mask)
    gl.store(O + o_offs, out.to(O.dtype.element_ty), mask=o_mask)
    if STORE_LSE:
        gl.store(
            LSE + b * stride_lb + h * stride_lh + rows_o.to(gl.int64) * stride_ln,
            _lse_rows(m_i, l_i, O_L),
            mask=rows_o < N,
        )


def sla_forward_wgmma(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lut: torch.Tensor,
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
    summed_states: bool = False,
    fence_softmax: bool = True,
    prefetch: int = 2,
    maxnreg: int | None = None,
    warp_specialized: bool = True,
    consumers: int = 2,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the Hopper kernel; same contract as ``sla_forward.sla_forward`` (states summed per query
    block for the complement branch). Raises ``ValueError`` for a launch it does not cover
    (``unsupported_reason``). ``fence_softmax``: keep ptxas from hoisting the P·V wait into the softmax
    (off only to measure what it buys). ``warp_specialized``: the producer/consumer kernel (default);
    else one partition gathers and computes (``prefetch`` tiles ahead, ``maxnreg`` registers).
    ``consumers``: the warp-specialised kernel's consumer partitions (2: one warpgroup each)."""
    from .sla_forward import empty_bnhd

    B, H, N, D = q.shape
    lin = LINEAR_CODES[linear]
    if lin == 2 and geom.topk >= geom.n_kblocks:
        lin = 0  # every block is selected: the complement is empty and o_l is exactly 0
    reason = unsupported_reason(q, geom, lin, summed_states)
    if reason:
        raise ValueError(f"the Hopper SLA forward kernel does not cover this launch: {reason}")
    kernel_lin = 3 if lin == 2 else lin
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
    none = q.new_empty(0, dtype=torch.float32)
    w = proj_weight if fuse else none
    if lin == 0:
        s_tot = z_tot = none
    strides = (
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *o.stride()[:3], *lse_strides,
    )  # fmt: skip
    sizes = (H, N, geom.n_qblocks, geom.topk, max(geom.n_special, 1), geom.frame_len, geom.n_special_total)
    if warp_specialized:
        kernel = _ws_kernel(
            FEATURE_CODES[feature], kernel_lin, fuse, store_lse, bool(fence_softmax), prefetch + 2, consumers
        )
        kernel[(geom.n_qblocks, B * H)](
            q, k, v, o, o_l, lse, s_tot, z_tot, w, *strides, lut, *sizes, scale * LOG2E, eps, HEAD_DIM=D,
            num_warps=NUM_WARPS // consumers,
        )  # fmt: skip
    else:
        _sla_forward_wgmma_kernel[(geom.n_qblocks, B * H)](
            q, k, v, o, o_l, lse, s_tot, z_tot, w, *strides, lut, *sizes, scale * LOG2E, eps,
            HEAD_DIM=D, FEATURE=FEATURE_CODES[feature], LINEAR=kernel_lin, FUSE_PROJ=fuse,
            HAS_SPECIAL=geom.n_special > 0, STORE_LSE=store_lse, FENCE_SOFTMAX=bool(fence_softmax),
            PREFETCH=prefetch, num_warps=NUM_WARPS, **({"maxnreg": maxnreg} if maxnreg else {}),
        )  # fmt: skip
    if lin == 0 and linear != "none" and not fuse_proj:
        o_l = torch.zeros_like(o)  # empty complement: the linear branch is exactly zero
    return o, o_l, lse


# Pointer dtypes at VGGT shapes, for the sm_90a compile report.
_POINTERS = dict(
    Q="*bf16", K="*bf16", V="*bf16", O="*bf16", OL="*bf16", LSE="*fp32", LUT="*i16", STOT="*fp32",
    ZTOT="*fp32", W="*fp32",
)  # fmt: skip


def compile_report(
    fence_softmax: bool = True,
    linear: int = 3,
    fuse_proj: bool = True,
    prefetch: int = 2,
    maxnreg: int | None = None,
    warp_specialized: bool = True,
    consumers: int = 2,
) -> dict:
    """Compile for sm_90a without a GPU (run without TRITON_INTERPRET) and report registers, spills,
    shared memory and, per key tile, how many exponentials run between the wait for S and the wait for
    P·V: with the fenced softmax all of them (the MMAs overlap the softmax); ptxas otherwise hoists the
    second wait into the softmax."""
    from .sla_compile_check import compile_for_hopper, ptxas_resources, sass

    consts = dict(
        HEAD_DIM=64, FEATURE=0, LINEAR=linear, FUSE_PROJ=fuse_proj, HAS_SPECIAL=True,
        STORE_LSE=not fuse_proj, FENCE_SOFTMAX=fence_softmax, PREFETCH=prefetch,
    )  # fmt: skip
    if warp_specialized:
        kernel = _ws_kernel(0, linear, fuse_proj, not fuse_proj, fence_softmax, prefetch + 2, consumers)
        k = compile_for_hopper(kernel, _POINTERS, {"HEAD_DIM": 64}, NUM_WARPS // consumers, 1)
    else:
        k = compile_for_hopper(_sla_forward_wgmma_kernel, _POINTERS, consts, NUM_WARPS, 1, maxnreg)
    code = sass(k)
    between, counting, n = [], False, 0
    for line in code.splitlines():
        if "WARPGROUP.DEPBAR.LE gsb0, 0x1" in line:
            counting, n = True, 0
        elif "WARPGROUP.DEPBAR.LE gsb0, 0x0" in line and counting:
            between.append(n)
            counting = False
        elif counting and "MUFU.EX2" in line:
            n += 1
    regs, spill = ptxas_resources(k)
    return {
        "warp_specialized": warp_specialized,
        "consumers": consumers if warp_specialized else None,
        "fence_softmax": fence_softmax,
        "prefetch": prefetch,
        "maxnreg": maxnreg,
        "regs": regs,
        "spill_bytes": spill,
        "shared": k.metadata.shared,
        "exp_between_waits": min(between) if between else 0,
    }


# ------------------------------------------------------------------------------------------------------
# Warp-specialised variant: a producer partition (4 warps, 40 registers) gathers Q and the K/V tiles into
# the ring; the consumer partition (two warpgroups, 64 query rows each) runs the MMAs and the softmax
# with no address arithmetic and no CTA-wide barrier; mbarriers hand the stages over (FlashAttention-3's
# producer/consumer split). Triton 3.6 passes no constexpr to a worker partition, so the producer takes
# its sizes from the shared-memory shapes and tests for special tokens at run time.

WS_PRODUCER_REGS = gl.constexpr(40)
WS_CONSUMER_REGS = gl.constexpr(232)  # a consumer warpgroup in a worker partition


@gluon.constexpr_function
def _row_layout(head_dim, warps):
    """Rows of head_dim elements in 16-byte vectors, head_dim / 8 threads per row."""
    tpr = head_dim // 8
    return gl.BlockedLayout([1, 8], [32 // tpr, tpr], [warps, 1], [1, 0])


@gluon.jit
def _ws_producer(
    q_smem, k_smem, v_smem, q_ready, ready, empty, Qb, k_base, v_base, stride_qn, stride_kn, stride_vn, lut,
    row0, topk, N, n_special, frame_len, n_special_total,
):  # fmt: skip
    """Gather Q, then every tile's K and V rows (cp.async); each thread's copies arrive on the stage's
    ``ready`` barrier when they land. A stage is refilled once the consumers released it (``empty``)."""
    BLOCK_M: gl.constexpr = q_smem.shape[0]
    HEAD_DIM: gl.constexpr = q_smem.shape[1]
    STAGES: gl.constexpr = k_smem.shape[0]
    BLOCK_N: gl.constexpr = k_smem.shape[1] // 2
    LOAD: gl.constexpr = _row_layout(HEAD_DIM, 4)
    rows = row0 + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, LOAD))
    d = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, LOAD))
    mask = (rows < N)[:, None] & (d[None, :] < HEAD_DIM)
    cp.async_copy_global_to_shared(
        q_smem, Qb + rows.to(gl.int64)[:, None] * stride_qn + d[None, :], mask=mask
    )
    cp.mbarrier_arrive(q_ready, increment_count=False)
    n_tiles = (topk + 1) // 2
    for t in range(n_tiles):
        st = t % STAGES
        mbarrier.wait(empty.index(st), ((t // STAGES) & 1) ^ 1)
        if n_special_total > 0:
            _issue_tile(
                k_smem.index(st), v_smem.index(st), k_base, v_base, stride_kn, stride_vn, lut, t, topk, N,
                n_special, frame_len, n_special_total, BLOCK_N, HEAD_DIM, True, LOAD,
            )  # fmt: skip
        else:
            _issue_tile(
                k_smem.index(st), v_smem.index(st), k_base, v_base, stride_kn, stride_vn, lut, t, topk, N,
                n_special, frame_len, n_special_total, BLOCK_N, HEAD_DIM, False, LOAD,
            )  # fmt: skip
        cp.mbarrier_arrive(ready.index(st), increment_count=False)


def _ws_consumer_fn(row_offset, FEATURE, LINEAR, FUSE_PROJ, STORE_LSE, FENCE_SOFTMAX, WARPS, ROWS):
    """The consumer partition for query rows row_offset … row_offset + ROWS of a block (the variant's
    switches as closure constants: see ``_ws_kernel``)."""
    ROW0 = gl.constexpr(row_offset)

    @gluon.jit
    def _ws_consumer(
        q_smem, k_smem, v_smem, q_ready, ready, empty, state_smem, w_smem, O, OL, LSE, STOT, ZTOT, W, o_base,
        lse_base, stride_on, stride_ln, lut, sidx, row0, topk, N, qk_scale, eps,
    ):  # fmt: skip
        """S_t = Q·K_tᵀ and O += P_{t−1}·V_{t−1} in flight together, the softmax of S_t while P·V
        finishes, then the linear branch and the stores; releases each stage once done with it."""
        BLOCK_M: gl.constexpr = ROWS
        HEAD_DIM: gl.constexpr = q_smem.shape[1]
        STAGES: gl.constexpr = k_smem.shape[0]
        TILE: gl.constexpr = k_smem.shape[1]
        BLOCK_N: gl.constexpr = TILE // 2
        dtype: gl.constexpr = q_smem.dtype
        S_L: gl.constexpr = gl.NVMMADistributedLayout(
            version=[3, 0], warps_per_cta=[WARPS, 1], instr_shape=[16, TILE, 16]
        )
        O_L: gl.constexpr = gl.NVMMADistributedLayout(
            version=[3, 0], warps_per_cta=[WARPS, 1], instr_shape=[16, HEAD_DIM, 16]
        )
        P_L: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=O_L, k_width=2)
        q = q_smem.slice(ROW0, ROWS)
        n_tiles = (topk + 1) // 2
        s_zero = gl.zeros([BLOCK_M, TILE], gl.float32, S_L)

        mbarrier.wait(q_ready, 0)
        mbarrier.wait(ready.index(0), 0)
        fence_async_shared()
        s = warpgroup_mma(q, k_smem.index(0).permute((1, 0)), s_zero, use_acc=False)
        _, valid = _tile_cols(lut, 0, topk, N, BLOCK_N, gl.SliceLayout(0, S_L))
        s = gl.where(valid[None, :], s * qk_scale, float("-inf"))
        m_i = gl.max(s, axis=1)
        p = gl.exp2(s - m_i[:, None])
        l_i = gl.sum(p, axis=1)
        acc = gl.zeros([BLOCK_M, HEAD_DIM], gl.float32, O_L)

        for t in range(1, n_tiles - 1):
            st = t % STAGES
            mbarrier.wait(ready.index(st), (t // STAGES) & 1)
            fence_async_shared()
            s_t = warpgroup_mma(q, k_smem.index(st).permute((1, 0)), s_zero, use_acc=False, is_async=True)
            p_op = gl.convert_layout(p.to(dtype), P_L)
            acc = warpgroup_mma(p_op, v_smem.index((t - 1) % STAGES), acc, is_async=True)
            s_t = warpgroup_mma_wait(num_outstanding=1, deps=[s_t])
            if FENCE_SOFTMAX:
                alpha = l_i
                p = s_t
                if qk_scale > 0.0:  # always: keeps ptxas from hoisting the P·V wait into the softmax
                    p, alpha, m_i, l_i = _softmax_step(s_t, m_i, l_i, qk_scale)
            else:
                p, alpha, m_i, l_i = _softmax_step(s_t, m_i, l_i, qk_scale)
            acc = warpgroup_mma_wait(num_outstanding=0, deps=[acc])
            mbarrier.arrive(empty.index((t - 1) % STAGES), count=1)  # tile t−1's K and V are done with
            acc = acc * gl.convert_layout(alpha, gl.SliceLayout(1, O_L))[:, None]

        if n_tiles > 1:
            t_last = n_tiles - 1
            st = t_last % STAGES
            mbarrier.wait(ready.index(st), (t_last // STAGES) & 1)
            fence_async_shared()
            s = warpgroup_mma(q, k_smem.index(st).permute((1, 0)), s_zero, use_acc=False, is_async=True)
            p_op = gl.convert_layout(p.to(dtype), P_L)
            acc = warpgroup_mma(p_op, v_smem.index((t_last - 1) % STAGES), acc, is_async=True)
            s = warpgroup_mma_wait(num_outstanding=1, deps=[s])
            _, valid = _tile_cols(lut, t_last, topk, N, BLOCK_N, gl.SliceLayout(0, S_L))
            s = gl.where(valid[None, :], s * qk_scale, float("-inf"))
            m_new = gl.maximum(m_i, gl.max(s, axis=1))
            alpha = gl.exp2(m_i - m_new)
            p = gl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + gl.sum(p, axis=1)
            m_i = m_new
            acc = warpgroup_mma_wait(num_outstanding=0, deps=[acc])
            acc = acc * gl.convert_layout(alpha, gl.SliceLayout(1, O_L))[:, None]
        p_op = gl.convert_layout(p.to(dtype), P_L)
        acc = warpgroup_mma(p_op, v_smem.index((n_tiles - 1) % STAGES), acc)
        out = acc / gl.convert_layout(l_i, gl.SliceLayout(1, O_L))[:, None]

        rows = row0 + ROW0 + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, O_L))
        d_o = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, O_L))
        o_mask = (rows < N)[:, None] & (d_o[None, :] < HEAD_DIM)
        o_offs = o_base + rows.to(gl.int64)[:, None] * stride_on + d_o[None, :]
        if LINEAR != 0:
            LOAD: gl.constexpr = _row_layout(HEAD_DIM, WARPS)
            d_r = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(1, LOAD))
            d_c = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, LOAD))
            phiq = _feature_map(q.load(O_L).to(gl.float32), FEATURE)
            s_i = gl.load(STOT + (sidx * HEAD_DIM + d_r[:, None]) * HEAD_DIM + d_c[None, :])
            state_smem.store(s_i.to(dtype))
            if FUSE_PROJ:
                w_smem.store(gl.load(W + d_r[:, None] * HEAD_DIM + d_c[None, :]).to(dtype))  # W[out, in]
            gl.thread_barrier()
            fence_async_shared()
            z_i = gl.load(ZTOT + sidx * HEAD_DIM + d_o)
            o_zero = gl.zeros([BLOCK_M, HEAD_DIM], gl.float32, O_L)
            num = warpgroup_mma(gl.convert_layout(phiq.to(dtype), P_L), state_smem, o_zero, use_acc=False)
            den = gl.sum(phiq * z_i[None, :], axis=1) + eps
            o_l = num / den[:, None]
            if FUSE_PROJ:
                out = warpgroup_mma(gl.convert_layout(o_l.to(dtype), P_L), w_smem.permute((1, 0)), out)
            else:
                gl.store(OL + o_offs, o_l.to(OL.dtype.element_ty), mask=o_mask)
        gl.store(O + o_offs, out.to(O.dtype.element_ty), mask=o_mask)
        if STORE_LSE:
            gl.store(LSE + lse_base + rows.to(gl.int64) * stride_ln, _lse_rows(m_i, l_i, O_L), mask=rows < N)

    return _ws_consumer


@functools.cache
def _ws_kernel(
    feature: int,
    linear: int,
    fuse_proj: bool,
    store_lse: bool,
    fence_softmax: bool,
    stages: int,
    consumers: int,
):
    """The warp-specialised kernel for one variant: ``consumers`` = 1 (one partition of two warpgroups,
    128 query rows) or 2 (two independent one-warpgroup partitions of 64 rows, no barrier in common).
    Triton 3.6 hands no constexpr to a partition (they arrive as int32 values), so the variant's
    switches are closure constants of the partition code."""
    if consumers not in (1, 2):
        raise ValueError(f"consumers must be 1 or 2, got {consumers}")
    FEATURE = gl.constexpr(feature)
    LINEAR = gl.constexpr(linear)
    FUSE_PROJ = gl.constexpr(fuse_proj)
    STORE_LSE = gl.constexpr(store_lse)
    FENCE_SOFTMAX = gl.constexpr(fence_softmax)
    STAGES = gl.constexpr(stages)

    CONSUMERS = gl.constexpr(consumers)
    WARPS = gl.constexpr(8 // consumers)  # per consumer partition
    ROWS = gl.constexpr(128 // consumers)
    fns = [
        _ws_consumer_fn(
            c * (128 // consumers), FEATURE, LINEAR, FUSE_PROJ, STORE_LSE, FENCE_SOFTMAX, WARPS, ROWS
        )
        for c in range(consumers)
    ]
    CONSUMER_A = fns[0]
    CONSUMER_B = fns[-1]

    @gluon.jit(do_not_specialize=["H", "N", "n_qblocks", "topk", "n_special", "frame_len", "n_special_total"])
    def _sla_forward_ws_kernel(
        Q, K, V, O, OL, LSE, STOT, ZTOT, W,
        stride_qb, stride_qh, stride_qn,
        stride_kb, stride_kh, stride_kn,
        stride_vb, stride_vh, stride_vn,
        stride_ob, stride_oh, stride_on,
        stride_lb, stride_lh, stride_ln,
        LUT, H, N, n_qblocks, topk, n_special, frame_len, n_special_total,
        qk_scale, eps,
        HEAD_DIM: gl.constexpr,
    ):  # fmt: skip
        BLOCK_M: gl.constexpr = 128
        TILE: gl.constexpr = 128  # two 64-token key blocks
        dtype: gl.constexpr = Q.dtype.element_ty
        SMEM: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
        BAR: gl.constexpr = mbarrier.MBarrierLayout()

        i = gl.program_id(0)
        bh = gl.program_id(1).to(gl.int64)  # int64 offsets: 1,000 frames of qkv views exceed 2**31 elements
        b = bh // H
        h = bh % H
        lut = LUT + (bh * n_qblocks + i) * topk
        if LINEAR == 3:
            sidx = bh * n_qblocks + i
        else:
            sidx = bh

        q_smem = gl.allocate_shared_memory(dtype, [BLOCK_M, HEAD_DIM], SMEM)
        k_smem = gl.allocate_shared_memory(dtype, [STAGES, TILE, HEAD_DIM], SMEM)
        v_smem = gl.allocate_shared_memory(dtype, [STAGES, TILE, HEAD_DIM], SMEM)
        q_ready = gl.allocate_shared_memory(gl.int64, [1], BAR)
        ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], BAR)
        empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], BAR)
        state_smem = gl.allocate_shared_memory(dtype, [CONSUMERS, HEAD_DIM, HEAD_DIM], SMEM)
        w_smem = gl.allocate_shared_memory(dtype, [CONSUMERS, HEAD_DIM, HEAD_DIM], SMEM)
        mbarrier.init(q_ready, count=128)  # one cp.async arrival per producer thread
        for st in gl.static_range(STAGES):
            mbarrier.init(ready.index(st), count=128)
            mbarrier.init(empty.index(st), count=CONSUMERS)  # each consumer partition arrives once

        row0 = i * BLOCK_M
        consumer_a = (
            q_smem, k_smem, v_smem, q_ready, ready, empty, state_smem.index(0), w_smem.index(0), O, OL, LSE,
            STOT, ZTOT, W, b * stride_ob + h * stride_oh,
            b * stride_lb + h * stride_lh, stride_on, stride_ln, lut, sidx, row0, topk, N, qk_scale, eps,
        )  # fmt: skip
        producer = (
            q_smem, k_smem, v_smem, q_ready, ready, empty, Q + b * stride_qb + h * stride_qh,
            K + b * stride_kb + h * stride_kh, V + b * stride_vb + h * stride_vh, stride_qn, stride_kn, stride_vn,
            lut, row0, topk, N, n_special, frame_len, n_special_total,
        )  # fmt: skip
        if CONSUMERS == 1:
            gl.warp_specialize([(CONSUMER_A, consumer_a), (_ws_producer, producer)], [4], [WS_PRODUCER_REGS])
        else:
            consumer_b = (
                q_smem, k_smem, v_smem, q_ready, ready, empty, state_smem.index(1), w_smem.index(1), O, OL, LSE,
                STOT, ZTOT, W, b * stride_ob + h * stride_oh, b * stride_lb + h * stride_lh, stride_on,
                stride_ln, lut, sidx, row0, topk, N, qk_scale, eps,
            )  # fmt: skip
            gl.warp_specialize(
                [(CONSUMER_A, consumer_a), (CONSUMER_B, consumer_b), (_ws_producer, producer)],
                [4, 4],
                [WS_CONSUMER_REGS, WS_PRODUCER_REGS],
            )

    return _sla_forward_ws_kernel
