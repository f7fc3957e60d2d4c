"""SLA forward kernel for Hopper inference: the selected key blocks arrive by TMA.

The Nsight Compute profile of the gather kernel (``sla_forward``) shows its exponentials waiting on the
MIO queue that its cp.async gathers share. A TMA copy moves a whole key tile with one instruction and no
per-thread addressing, but it needs each key block contiguous in memory. So this kernel reads keys and
values from copies in *virtual* key order (every frame's special tokens first, then the patch tokens:
the order the look-up table indexes), [B·H·n_kblocks·block_k, D], zero-padded to whole blocks, which the
prepare pass writes while it reads K and V anyway (``sla_prepare(..., virtual_kv=True)``). Selected
block j of head bh is then one 2-D TMA box at row (bh·n_kblocks + j)·block_k, and the loop does no
address mapping at all (``benchmarks/probes/sla_tma_probe.py``: autotuned, 425 against 390–397 TFLOP/s
for the gather kernel at 64 VGGT frames, in one process).

Inference only: o = o_s + o_l·Wᵀ with the linear branch over all keys (totals [B, H, D, D]), over the
complement (states summed per query block outside, ``sla_linear_domain``: [B, H, Mq, D, D]), or none.
Training keeps the gather kernel, which also writes the log-sum-exp and o_l for the backward.
:func:`virtual_kv` is the PyTorch reference of the copies.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import sla_triton_common as _common
from .sla_forward import LOG2E, add_projected, empty_bnhd, linear_readout, softmax_step
from .sla_reference import SLAGeometry, virtual_key_order
from .sla_triton_common import (
    FEATURE_CODES,
    SIZE_ARGS,
    augmented_states,
    bucketed_autotune,
    effective_linear_code,
    feature_map,
)


def virtual_kv(x: torch.Tensor, geom: SLAGeometry) -> torch.Tensor:
    """x [B, H, N, D] → [B·H·n_kblocks·block_k, D] contiguous: keys in virtual order, zero-padded."""
    B, H, N, D = x.shape
    order = virtual_key_order(geom, x.device)
    out = x.new_zeros(B, H, geom.n_kblocks * geom.block_k, D)
    out[:, :, :N] = x if order is None else x.index_select(2, order)
    return out.view(-1, D)


@triton.jit
def _pair_step(q, k0, v0, k1, v1, m_i, l_i, acc, qk_scale, DOT_PRECISION: tl.constexpr):
    """Two key blocks per step: two QKᵀ MMAs, one max and rescale, two P·V MMAs into one accumulator."""
    s0 = tl.dot(q, tl.trans(k0), input_precision=DOT_PRECISION)
    s1 = tl.dot(q, tl.trans(k1), input_precision=DOT_PRECISION)
    m_new = tl.maximum(m_i, tl.maximum(tl.max(s0, axis=1), tl.max(s1, axis=1)) * qk_scale)
    alpha = tl.exp2(m_i - m_new)
    p0 = tl.exp2(s0 * qk_scale - m_new[:, None])
    p1 = tl.exp2(s1 * qk_scale - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p0, axis=1) + tl.sum(p1, axis=1)
    acc = tl.dot(p0.to(v0.dtype), v0, acc * alpha[:, None], input_precision=DOT_PRECISION)
    acc = tl.dot(p1.to(v1.dtype), v1, acc, input_precision=DOT_PRECISION)
    return m_new, l_i, acc


@triton.jit(do_not_specialize=SIZE_ARGS)
def _sla_forward_tma_kernel(
    Q, k_desc, v_desc, O, LUT, STOT, ZTOT, W,
    stride_qb, stride_qh, stride_qn,
    stride_ob, stride_oh, stride_on,
    H, N, n_qblocks, n_kblocks, topk, state_row, z_row,
    qk_scale, eps,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
    FEATURE: tl.constexpr, LINEAR: tl.constexpr, DOT_PRECISION: tl.constexpr, PAIR: tl.constexpr,
):  # fmt: skip
    i = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)  # int64 offsets: 1,000 frames of qkv views exceed 2**31 elements
    b = bh // H
    h = bh % H
    rows = i * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < N
    d = tl.arange(0, HEAD_DIM)
    q_ptrs = Q + b * stride_qb + h * stride_qh + rows.to(tl.int64)[:, None] * stride_qn + d[None, :]
    q = tl.load(q_ptrs, mask=rmask[:, None], other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    lut = LUT + (bh * n_qblocks + i) * topk
    # TMA coordinates are 32-bit: the launcher checks that every row of the copies fits
    base = (bh * n_kblocks).to(tl.int32)
    # LUT rows are ascending and distinct, so only the last entry can be the trailing partial key block:
    # the walk runs unmasked and the last block is peeled off with a mask.
    n = topk - 1
    n_single = n
    if PAIR == 2:
        for t in range(0, n // 2):
            r0 = (base + tl.load(lut + 2 * t).to(tl.int32)) * BLOCK_N
            r1 = (base + tl.load(lut + 2 * t + 1).to(tl.int32)) * BLOCK_N
            k0 = k_desc.load([r0, 0])
            v0 = v_desc.load([r0, 0])
            k1 = k_desc.load([r1, 0])
            v1 = v_desc.load([r1, 0])
            m_i, l_i, acc = _pair_step(q, k0, v0, k1, v1, m_i, l_i, acc, qk_scale, DOT_PRECISION)
        n_single = n % 2
    cols = tl.arange(0, BLOCK_N)
    for t in range(n - n_single, n):
        r = (base + tl.load(lut + t).to(tl.int32)) * BLOCK_N
        k, v = k_desc.load([r, 0]), v_desc.load([r, 0])
        m_i, l_i, acc = softmax_step(q, k, v, m_i, l_i, acc, cols < N, qk_scale, False, DOT_PRECISION)
    j = tl.load(lut + n).to(tl.int32)
    r = (base + j) * BLOCK_N
    m_i, l_i, acc = softmax_step(
        q, k_desc.load([r, 0]), v_desc.load([r, 0]), m_i, l_i, acc, j * BLOCK_N + cols < N, qk_scale, True,
        DOT_PRECISION,
    )  # fmt: skip
    out = acc / l_i[:, None]

    if LINEAR != 0:
        # q read again rather than kept live across the loop (registers: see sla_forward)
        q_again = tl.load(q_ptrs, mask=rmask[:, None], other=0.0, volatile=True)
        phiq = feature_map(q_again.to(tl.float32), FEATURE)
        if LINEAR == 3:  # complement states summed per query block
            s_row = bh * n_qblocks + i
        else:  # all keys: one total per head
            s_row = bh
        # rows of state_row / z_row entries: D² / D, or D² + D for both in the augmented layout
        # (z in the state dtype, a view into the same rows)
        s_i = tl.load(STOT + s_row * state_row + d[:, None] * HEAD_DIM + d[None, :])
        z_i = tl.load(ZTOT + s_row * z_row + d).to(tl.float32)
        o_l = linear_readout(phiq, s_i, z_i, eps, q.dtype, DOT_PRECISION)
        out = add_projected(out, o_l, W, q.dtype, HEAD_DIM, DOT_PRECISION)
    o_offs = b * stride_ob + h * stride_oh + rows.to(tl.int64)[:, None] * stride_on + d[None, :]
    tl.store(O + o_offs, out.to(O.dtype.element_ty), mask=rmask[:, None])


_sla_forward_tma_kernel_tuned = bucketed_autotune(
    _sla_forward_tma_kernel,
    "forward_tma",
    key=["HEAD_DIM", "BLOCK_M", "BLOCK_N", "FEATURE", "LINEAR"],
)


def autotune_choices() -> dict:
    return _common.tuning_report(_sla_forward_tma_kernel_tuned)


def sla_forward_tma(
    q: torch.Tensor,
    k_virtual: torch.Tensor,
    v_virtual: torch.Tensor,
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
    pair: int | None = None,
    launch: dict | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """o = o_s + o_l·Wᵀ [B, H, N, D] (a view of a [B, N, H, D] tensor, like ``sla_forward``).

    ``k_virtual``/``v_virtual``: the prepare pass's virtual-order copies. ``s_tot``/``z_tot``: the
    totals [B, H, D, D] / [B, H, D] for linear "all", the complement sums per query block
    [B, H, Mq, D, D] / [B, H, Mq, D] for "complement" — or, augmented, s_tot [B, H, Mq, D² + D] holding
    both (``sla_linear_domain.complement_sums_augmented``; z_tot unused) —, unused for "none".
    ``pair``: key blocks per loop step for the plain (interpreted) kernel; autotuned on CUDA.
    ``launch`` (probes): run the plain kernel with these num_warps / num_stages / maxnreg and ``pair``
    instead of the autotuner. ``out``: write o there (a [B, H, N, D] view with unit last stride, e.g. a
    head slice of a larger output).
    """
    from triton.tools.tensor_descriptor import TensorDescriptor

    B, H, N, D = q.shape
    rows = B * H * geom.n_kblocks * geom.block_k
    if k_virtual.shape != (rows, D) or v_virtual.shape != (rows, D):
        raise ValueError(
            f"the virtual K/V copies must be [{rows}, {D}] (B·H·n_kblocks·block_k rows), got "
            f"{tuple(k_virtual.shape)} and {tuple(v_virtual.shape)}"
        )
    if rows >= 1 << 31:
        raise ValueError(
            f"{rows} key rows exceed the 32-bit TMA coordinates; use SLAConfig(key_loads='gather')"
        )
    lin = effective_linear_code(linear, geom)
    z_view, state_row, z_row = z_tot, D * D, D
    if lin == 2:
        lin = 3
        if augmented_states(s_tot, D):
            z_view, state_row, z_row = s_tot[..., D * D :], D * D + D, D * D + D
        elif s_tot.dim() != 5:
            raise ValueError("the TMA forward takes the complement states summed per query block")
    if lin and proj_weight is None:
        raise ValueError("a linear branch needs the projection weight (the TMA forward always fuses it)")
    if out is None:
        o = empty_bnhd(B, H, N, D, q)
    elif out.shape != q.shape or out.dtype != q.dtype or out.stride(-1) != 1:
        raise ValueError(f"out must be a {tuple(q.shape)} {q.dtype} tensor with unit last stride")
    else:
        o = out
    k_desc = TensorDescriptor.from_tensor(k_virtual, [geom.block_k, D])
    v_desc = TensorDescriptor.from_tensor(v_virtual, [geom.block_k, D])
    none = q.new_empty(0)
    if launch is not None:
        if not set(launch) <= {"num_warps", "num_stages", "maxnreg"}:
            raise ValueError(f"launch takes num_warps, num_stages and maxnreg, got {sorted(launch)}")
        kernel, meta = _sla_forward_tma_kernel, {"PAIR": pair or 1, **launch}
    else:
        kernel, meta = _common.forward_launch(
            _sla_forward_tma_kernel_tuned, _sla_forward_tma_kernel, q, geom.topk, pair
        )
    kernel[(geom.n_qblocks, B * H)](
        q, k_desc, v_desc, o, lut,
        s_tot if lin else none, z_view if lin else none, proj_weight if lin else none,
        q.stride(0), q.stride(1), q.stride(2),
        o.stride(0), o.stride(1), o.stride(2),
        H, N, geom.n_qblocks, geom.n_kblocks, geom.topk, state_row, z_row,
        scale * LOG2E, eps,
        BLOCK_M=geom.block_q, BLOCK_N=geom.block_k, HEAD_DIM=D, FEATURE=FEATURE_CODES[feature],
        LINEAR=lin, DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32", **meta,
    )  # fmt: skip
    return o
