"""qk-norm and 2-D RoPE in one pass: a strided q or k view [B, H, N, D] → bf16/fp16 [B, H, N, D].

Why: in PyTorch the per-head LayerNorm and the rotation are separate ops with float32 intermediates.
Under ``torch.compile`` Inductor cannot fuse the rotation into the norm's reduction (the rotation reads
the normalised value of another column), so it materialises the normalised q and k; in eager mode the
float32 copies of RoPE pile up. Measured at 128 VGGT frames (``benchmarks/probes/memory_peak.py``,
H100): those intermediates are 1.34 GiB of the compiled forward's peak and 2.7 GiB of the eager one.
This kernel reads each row of q (or k) once from the qkv projection's output, normalises it in float32
registers, rotates it and writes the attention dtype: the only new tensor is its output.

The rotation partner of column i is read again from memory (same cache lines, L1/L2 hits) and
normalised with the row's mean and rstd, because Triton has no register shuffle by index. Layout of the
rotation (``lite3r.models.layers.rope``): the first half of head_dim turns with the row y, the second
with the column x; within a half of F columns, (a, b) → (a·cos − b·sin, b·cos + a·sin) for the pairs
(j, j + F/2). cos/sin come from the model's precomputed float32 tables [B, 1, N, D].

For sparse-linear attention's TMA inference path, :func:`qk_norm_rope_sla` runs the same kernel with
two extra outputs: the q launch also stores each query block's mean (the block selection's pooled
queries), and the k launch writes its rows straight into the virtual key order the TMA forward loads,
so the SLA prepare pass reads neither q nor k again (``sla_ops.sla_attention_fused_qk``). The kernel can
also pool two tiles per query block, adding into a zeroed mean with atomics: only the launch probe
uses that (it was slower, see :func:`qk_norm_rope_sla`).

Registered as the custom op ``lite3r::qk_norm_rope`` so compiled models call it as one opaque kernel.
Inference only: it has no backward (``MultiHeadAttention`` runs the PyTorch ops when autograd records).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import sla_triton_common as _common
from .fp8_common import device_guard, register_custom_op

_BLOCK_ROWS = (
    64  # tokens per program: 64 × head_dim 64 = 4k elements, 16 per thread at 8 warps (76 registers, sm_90a)
)


@triton.jit
def _qk_norm_rope_kernel(
    X, OUT, W, BIAS, COS, SIN, POOLED,
    stride_xb, stride_xh, stride_xn,
    stride_ob, stride_oh, stride_on,
    stride_cb, stride_cn,
    H, N, eps, n_vrows, n_special, frame_len, n_special_total,
    BLOCK_ROWS: tl.constexpr, HEAD_DIM: tl.constexpr, HAS_NORM: tl.constexpr, HAS_ROPE: tl.constexpr,
    POOL: tl.constexpr, POOL_ROWS: tl.constexpr, VIRTUAL: tl.constexpr, HAS_SPECIAL: tl.constexpr,
):  # fmt: skip
    # heads fastest: the programs running together share one row block's cos/sin rows in L2 (with the
    # row block fastest every head re-read the float32 tables: q + k took 267 instead of 230 µs at 32
    # VGGT frames, bench_sla_attention qk_plain_us at d3805c5 / daffe67)
    bh = tl.program_id(0).to(tl.int64)
    pid = tl.program_id(1)
    b = bh // H
    h = bh % H
    rows = pid * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    rmask = rows < N
    rows64 = rows.to(tl.int64)
    d = tl.arange(0, HEAD_DIM)
    x_rows = X + b * stride_xb + h * stride_xh + rows64[:, None] * stride_xn
    x = tl.load(x_rows + d[None, :], mask=rmask[:, None], other=0.0).to(tl.float32)
    if HAS_NORM:
        mean = tl.sum(x, axis=1) / HEAD_DIM
        xc = x - mean[:, None]
        rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / HEAD_DIM + eps)
        w = tl.load(W + d).to(tl.float32)
        bias = tl.load(BIAS + d).to(tl.float32)
        y = xc * rstd[:, None] * w[None, :] + bias[None, :]
    else:
        y = x
    if HAS_ROPE:
        QUARTER: tl.constexpr = HEAD_DIM // 4
        first = (d % (2 * QUARTER)) < QUARTER
        partner = tl.where(first, d + QUARTER, d - QUARTER)
        sign = tl.where(first, -1.0, 1.0)
        xp = tl.load(x_rows + partner[None, :], mask=rmask[:, None], other=0.0).to(tl.float32)
        if HAS_NORM:
            wp = tl.load(W + partner).to(tl.float32)
            bp = tl.load(BIAS + partner).to(tl.float32)
            yp = (xp - mean[:, None]) * rstd[:, None] * wp[None, :] + bp[None, :]
        else:
            yp = xp
        c_rows = b * stride_cb + rows64[:, None] * stride_cn + d[None, :]
        cos = tl.load(COS + c_rows, mask=rmask[:, None], other=1.0)
        sin = tl.load(SIN + c_rows, mask=rmask[:, None], other=0.0)
        y = y * cos + sign[None, :] * yp * sin
    y = y.to(OUT.dtype.element_ty)
    if VIRTUAL:  # SLA keys: rows of [B·H·n_vrows, D] in virtual key order, zero rows past N
        vrows = _common.physical_to_virtual(rows, n_special, frame_len, n_special_total, HAS_SPECIAL)
        o_rows = OUT + (bh * n_vrows + vrows.to(tl.int64))[:, None] * HEAD_DIM
        tl.store(o_rows + d[None, :], y, mask=rmask[:, None])
        if pid == tl.num_programs(1) - 1:
            for r0 in range(N, n_vrows, BLOCK_ROWS):
                pad = r0 + tl.arange(0, BLOCK_ROWS)
                tl.store(
                    OUT + (bh * n_vrows + pad.to(tl.int64))[:, None] * HEAD_DIM + d[None, :],
                    tl.zeros([BLOCK_ROWS, HEAD_DIM], dtype=OUT.dtype.element_ty),
                    mask=(pad < n_vrows)[:, None],
                )
    else:
        o_rows = OUT + b * stride_ob + h * stride_oh + rows64[:, None] * stride_on
        tl.store(o_rows + d[None, :], y, mask=rmask[:, None])
    if POOL:  # SLA queries: this tile's share of its query block's mean (of the values as stored)
        total = tl.sum(tl.where(rmask[:, None], y.to(tl.float32), 0.0), axis=0)
        qb = (pid * BLOCK_ROWS) // POOL_ROWS
        count = tl.minimum(N - qb * POOL_ROWS, POOL_ROWS).to(tl.float32)
        dst = POOLED + (bh * tl.cdiv(N, POOL_ROWS) + qb) * HEAD_DIM + d
        if POOL_ROWS == BLOCK_ROWS:
            tl.store(dst, total / count)
        else:  # two tiles per query block (only the probe launches this): 0 + a + b in either order
            tl.atomic_add(dst, total / count, sem="relaxed")


def empty_bnhd_like(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, H, N, D] stored as [B, N, H, D] (the layout the attention output and SDPA use)."""
    B, H, N, D = x.shape
    return torch.empty(B, N, H, D, device=x.device, dtype=dtype).transpose(1, 2)


def _launch(
    x,
    out,
    weight,
    bias,
    cos,
    sin,
    eps: float,
    *,
    pooled=None,
    pool_rows=0,
    block_rows=_BLOCK_ROWS,
    virtual=None,
    num_warps=8,
):
    """One tensor's launch. ``pooled`` [B, H, ⌈N/pool_rows⌉, D] float32: also write the mean of every
    ``pool_rows`` rows there (``pool_rows`` = ``block_rows``, or twice it into a zeroed ``pooled``).
    ``virtual`` (the SLA geometry): write ``out`` [B·H·n_kblocks·block_k, D] in virtual key order
    instead of [B, H, N, D]. ``num_warps``: other than 8 only for benchmarks/probes/qk_fused_probe.py."""
    B, H, N, D = x.shape
    has_norm = weight is not None
    has_rope = cos is not None
    w = weight if has_norm else x.new_empty(0)
    bi = bias if has_norm else x.new_empty(0)
    c = cos if has_rope else x.new_empty(0, dtype=torch.float32)
    s = sin if has_rope else x.new_empty(0, dtype=torch.float32)
    # Tables of batch 1 are shared by every sequence (frame attention: all frames, one position grid).
    cstrides = ((cos.stride(0) if cos.shape[0] > 1 else 0), cos.stride(2)) if has_rope else (0, 0)
    n_blocks = triton.cdiv(N, block_rows)
    if n_blocks > 65535:  # the grid's second dimension
        raise ValueError(
            f"qk_norm_rope: {N} tokens exceed the kernel's {65535 * block_rows} per sequence; "
            "use qk_kernel='torch' (PyTorch qk-norm/RoPE) for sequences this long"
        )
    ostrides = (0, 0, 0) if virtual is not None else (out.stride(0), out.stride(1), out.stride(2))
    g = virtual
    vargs = (
        (g.n_kblocks * g.block_k, max(g.n_special, 1), g.frame_len, g.n_special_total)
        if g is not None
        else (N, 1, N, 0)
    )
    with device_guard(x):
        _qk_norm_rope_kernel[(B * H, n_blocks)](
            x, out, w, bi, c, s, pooled if pooled is not None else x.new_empty(0, dtype=torch.float32),
            x.stride(0), x.stride(1), x.stride(2),
            *ostrides,
            *cstrides,
            H, N, eps, *vargs,
            BLOCK_ROWS=block_rows, HEAD_DIM=D, HAS_NORM=has_norm, HAS_ROPE=has_rope,
            POOL=pooled is not None, POOL_ROWS=pool_rows, VIRTUAL=g is not None, HAS_SPECIAL=g is not None and g.n_special > 0,
            **({"num_warps": num_warps} if x.is_cuda else {}),
        )  # fmt: skip


def qk_norm_rope_sla(
    q, k, q_weight, q_bias, k_weight, k_bias, cos, sin, q_eps: float, k_eps: float, out_dtype, geom
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """qk-norm + RoPE for sparse-linear attention's TMA inference path (``geom``: its SLAGeometry).

    Returns q as :func:`qk_norm_rope` writes it, the mean of every query block [B, H, n_qblocks, D]
    float32 (the selection's pooled queries, from the values stored), and k written directly in virtual
    key order, zero-padded to whole key blocks, [B·H·n_kblocks·block_k, D] (the copies the TMA forward
    loads). The SLA prepare pass then reads neither q nor k's physical layout, and writes no K copy:
    ~180 MB less traffic per call at 32 VGGT frames, for two extra register-level outputs here.
    """
    B, H, _, D = q.shape
    qo = empty_bnhd_like(q, out_dtype)
    pq = torch.empty(B, H, geom.n_qblocks, D, device=q.device, dtype=torch.float32)
    k_virt = torch.empty(B * H * geom.n_kblocks * geom.block_k, D, device=q.device, dtype=out_dtype)
    # one tile per query block, which stores its mean (qk_fused_probe at 22c8a41: 123 µs at 32 VGGT
    # frames against 154 µs for 64-row tiles adding into a zeroed mean)
    _launch(
        q, qo, q_weight, q_bias, cos, sin, q_eps, pooled=pq, pool_rows=geom.block_q, block_rows=geom.block_q
    )
    _launch(k, k_virt, k_weight, k_bias, cos, sin, k_eps, virtual=geom)
    return qo, pq, k_virt


def _qk_norm_rope(
    q: torch.Tensor,
    k: torch.Tensor,
    q_weight: torch.Tensor | None,
    q_bias: torch.Tensor | None,
    k_weight: torch.Tensor | None,
    k_bias: torch.Tensor | None,
    cos: torch.Tensor | None,
    sin: torch.Tensor | None,
    q_eps: float,
    k_eps: float,
    out_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    qo, ko = empty_bnhd_like(q, out_dtype), empty_bnhd_like(k, out_dtype)
    if q.numel():
        _launch(q, qo, q_weight, q_bias, cos, sin, q_eps)
        _launch(k, ko, k_weight, k_bias, cos, sin, k_eps)
    return qo, ko


def _qk_norm_rope_fake(q, k, q_weight, q_bias, k_weight, k_bias, cos, sin, q_eps, k_eps, out_dtype):
    return empty_bnhd_like(q, out_dtype), empty_bnhd_like(k, out_dtype)


qk_norm_rope_op = register_custom_op("lite3r::qk_norm_rope", _qk_norm_rope, _qk_norm_rope_fake)


def _check(x: torch.Tensor, what: str) -> None:
    if x.dim() != 4:
        raise ValueError(f"{what}: expected [B, H, N, D], got shape {tuple(x.shape)}")
    D = x.shape[-1]
    if D < 4 or D & (D - 1):
        raise ValueError(f"{what}: head_dim {D} is not a power of two ≥ 4 (the kernel's register tile)")
    if x.stride(-1) != 1:
        raise ValueError(f"{what}: the head dimension must have unit stride")


def qk_norm_rope(
    q: torch.Tensor,
    k: torch.Tensor,
    q_norm: tuple[torch.Tensor, torch.Tensor, float] | None,
    k_norm: tuple[torch.Tensor, torch.Tensor, float] | None,
    tables: tuple[torch.Tensor, torch.Tensor] | None,
    out_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """LayerNorm over head_dim (``(weight, bias, eps)`` or None for none) then 2-D RoPE (``(cos, sin)``
    float32 [B or 1, 1, N, D] or None) of q and k [B, H, N, D] (strided views are fine), in one kernel each."""
    return torch.ops.lite3r.qk_norm_rope(*launch_args(q, k, q_norm, k_norm, tables), out_dtype)


def launch_args(q, k, q_norm, k_norm, tables) -> tuple:
    """Checked (q, k, q_weight, q_bias, k_weight, k_bias, cos, sin, q_eps, k_eps) for the ops."""
    _check(q, "qk_norm_rope q")
    _check(k, "qk_norm_rope k")
    if (q_norm is None) != (k_norm is None):
        raise ValueError("qk_norm_rope: give a norm for both q and k or for neither")
    qw, qb, qe = q_norm if q_norm is not None else (None, None, 0.0)
    kw, kb, ke = k_norm if k_norm is not None else (None, None, 0.0)
    cos, sin = tables if tables is not None else (None, None)
    if cos is not None:
        B, _, N, D = q.shape
        ok = cos.dim() == 4 and cos.shape[0] in (1, B) and tuple(cos.shape[1:]) == (1, N, D)
        if not ok or sin.shape != cos.shape or cos.stride(-1) != 1 or sin.stride() != cos.stride():
            raise ValueError(
                f"qk_norm_rope: RoPE tables must be [B or 1, 1, N, D] = [{B} or 1, 1, {N}, {D}] with unit last "
                f"stride, got {tuple(cos.shape)} / {tuple(sin.shape)}"
            )
        cos, sin = cos.float(), sin.float()
    return q, k, qw, qb, kw, kb, cos, sin, float(qe), float(ke)


def qk_norm_rope_reference(
    x: torch.Tensor,
    norm: tuple[torch.Tensor, torch.Tensor, float] | None,
    tables: tuple[torch.Tensor, torch.Tensor] | None,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """The same maths in float32 PyTorch: layer_norm over head_dim, then x·cos + rotate_half(x)·sin."""
    from lite3r.models.layers.rope import RotaryPositionEmbedding2D

    y = x.float()
    if norm is not None:
        w, b, eps = norm
        y = torch.nn.functional.layer_norm(y, (y.shape[-1],), w.float(), b.float(), eps)
    if tables is not None:
        cos, sin = tables
        y = y * cos + RotaryPositionEmbedding2D._rotate_half_per_axis(y) * sin
    return y.to(out_dtype)


def qk_norm_rope_sla_reference(q, k, q_norm, k_norm, tables, out_dtype, geom):
    """What :func:`qk_norm_rope_sla` computes, from :func:`qk_norm_rope_reference` in PyTorch."""
    from .sla_forward_tma import virtual_kv
    from .sla_reference import pool_blocks

    qo = qk_norm_rope_reference(q, q_norm, tables, out_dtype)
    ko = qk_norm_rope_reference(k, k_norm, tables, out_dtype)
    return qo, pool_blocks(qo, geom.block_q), virtual_kv(ko, geom)
