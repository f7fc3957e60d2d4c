"""SLA kernels as torch custom ops, the autograd function, and the entry points the module calls.

The kernels (prepare, block select, complement sums, forward, TMA forward, backward = dQ + dK/dV, and
the fused-qk path's qk-norm/RoPE with pooled q and virtual-order k) are registered as
``torch.library.custom_op`` s with fake (meta) implementations, so models that use them can be
``torch.compile``d without graph breaks; the training path wraps forward/backward in
:class:`SparseLinearAttentionFunction`. Launchers are called through their modules (not imported
names) so tests can re-import the kernels in interpreter mode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from . import qk_norm_rope as _qk_mod
from . import sla_backward_dkdv as _dkdv_mod
from . import sla_backward_dq as _dq_mod
from . import sla_block_select as _select_mod
from . import sla_forward as _forward_mod
from . import sla_forward_tma as _forward_tma_mod
from . import sla_linear_domain as _domain_mod
from . import sla_prepare as _prepare_mod
from .sla_reference import SLAGeometry
from .sla_triton_common import LINEAR_CODES, effective_linear_code

_GEOM_FIELDS = (
    "n_tokens", "block_q", "block_k", "n_qblocks", "n_kblocks", "n_special", "frame_len",
    "n_special_total", "n_forced", "topk",
)  # fmt: skip


# How the sparse forward reads the selected key blocks at inference (see sla_attention).
KEY_LOADS = ("gather", "tma")


def geom_to_list(geom: SLAGeometry) -> list[int]:
    return [int(getattr(geom, f)) for f in _GEOM_FIELDS]


def geom_from_list(values) -> SLAGeometry:
    return SLAGeometry(**dict(zip(_GEOM_FIELDS, (int(x) for x in values))))


def kernels_interpreted() -> bool:
    """True when the kernels were built by the Triton interpreter (TRITON_INTERPRET=1 at import)."""
    return not isinstance(_forward_mod._sla_forward_kernel, _jit_function_type())


def _jit_function_type():
    from triton.runtime.jit import JITFunction

    return JITFunction


def _bnhd(B: int, H: int, N: int, D: int, like: Tensor, dtype=None) -> Tensor:
    return like.new_empty(B, N, H, D, dtype=dtype or like.dtype).transpose(1, 2)


def _unit_last_stride(x: Tensor) -> Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


# ---------------------------------------------------------------------------------------------------
# Custom ops


@torch.library.custom_op("lite3r::sla_prepare", mutates_args=())
def sla_prepare_op(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    geom: list[int],
    feature: str,
    linear: str,
    store_states: bool = True,
    totals: bool = True,
    virtual_kv: bool = False,
    augmented: bool = False,
    pool_q: bool = True,
    k_virtual: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _prepare_mod.sla_prepare(
        q, k, v, geom_from_list(geom), feature, linear, store_states, totals, virtual_kv=virtual_kv,
        augmented=augmented, pool_q=pool_q, k_virtual=k_virtual,
    )  # fmt: skip


@sla_prepare_op.register_fake
def _(
    q, k, v, geom, feature, linear, store_states=True, totals=True, virtual_kv=False, augmented=False,
    pool_q=True, k_virtual=False,
):  # fmt: skip
    g = geom_from_list(geom)
    B, H, _, D = q.shape
    f32 = torch.float32
    empty = q.new_empty(0, dtype=f32)
    pq = q.new_empty(B, H, g.n_qblocks, D, dtype=f32) if pool_q else q.new_empty(0, dtype=f32)
    pk = q.new_empty(B, H, g.n_kblocks, D, dtype=f32)
    kmean = q.new_empty(B, H, D, dtype=f32)
    code = LINEAR_CODES[linear]
    if code == 2 and store_states and augmented:
        rows = _prepare_mod.padded_kblocks(g.n_kblocks)
        s_blk = q.new_empty(B, H, rows, D * D + D, dtype=_prepare_mod.state_dtype_for(q.dtype))
        z_blk = q.new_empty(0, dtype=f32)
    elif code == 2 and store_states:
        rows = _prepare_mod.padded_kblocks(g.n_kblocks)
        s_blk = q.new_empty(B, H, rows, D, D, dtype=_prepare_mod.state_dtype_for(q.dtype))
        z_blk = q.new_empty(B, H, rows, D, dtype=f32)
    else:
        s_blk, z_blk = empty, q.new_empty(0, dtype=f32)
    if code and totals:
        s_tot, z_tot = q.new_empty(B, H, D, D, dtype=f32), q.new_empty(B, H, D, dtype=f32)
    else:
        s_tot, z_tot = q.new_empty(0, dtype=f32), q.new_empty(0, dtype=f32)
    if virtual_kv:
        rows = B * H * g.n_kblocks * g.block_k
        k_virt, v_virt = q.new_empty(0 if k_virtual else rows, D), q.new_empty(rows, D)
    else:
        k_virt, v_virt = q.new_empty(0), q.new_empty(0)
    return pq, pk, kmean, s_blk, z_blk, s_tot, z_tot, k_virt, v_virt


@torch.library.custom_op("lite3r::sla_qk_norm_rope", mutates_args=())
def sla_qk_norm_rope_op(
    q: Tensor,
    k: Tensor,
    q_weight: Tensor | None,
    q_bias: Tensor | None,
    k_weight: Tensor | None,
    k_bias: Tensor | None,
    cos: Tensor | None,
    sin: Tensor | None,
    q_eps: float,
    k_eps: float,
    out_dtype: torch.dtype,
    geom: list[int],
) -> tuple[Tensor, Tensor, Tensor]:
    """qk-norm + RoPE writing what the TMA inference path reads: q, pooled q, k in virtual order."""
    return _qk_mod.qk_norm_rope_sla(
        q, k, q_weight, q_bias, k_weight, k_bias, cos, sin, q_eps, k_eps, out_dtype, geom_from_list(geom)
    )


@sla_qk_norm_rope_op.register_fake
def _(q, k, q_weight, q_bias, k_weight, k_bias, cos, sin, q_eps, k_eps, out_dtype, geom):
    g = geom_from_list(geom)
    B, H, N, D = q.shape
    pq = q.new_empty(B, H, g.n_qblocks, D, dtype=torch.float32)
    return (
        _bnhd(B, H, N, D, q, out_dtype),
        pq,
        q.new_empty(B * H * g.n_kblocks * g.block_k, D, dtype=out_dtype),
    )


SELECT_METHODS = ("gemm", "streamed")


@torch.library.custom_op("lite3r::sla_block_select", mutates_args=())
def sla_block_select_op(
    pq: Tensor, pk: Tensor, kmean: Tensor, geom: list[int], method: str = "gemm"
) -> Tensor:
    """Top-k key blocks per query block: "gemm" (score tiles of bounded size, then a row top-k:
    sla_select_scores + sla_topk_rows, or PyTorch ops beyond 8,192 key blocks) or "streamed" (the
    Triton radix-select kernel, no workspace)."""
    if method == "gemm":
        return _select_mod.sla_block_select_gemm(pq, pk, kmean, geom_from_list(geom))
    if method == "streamed":
        return _select_mod.sla_block_select(pq, pk, kmean, geom_from_list(geom))
    raise ValueError(f"unknown block selection {method!r}; choose one of {SELECT_METHODS}")


@sla_block_select_op.register_fake
def _(pq, pk, kmean, geom, method="gemm"):
    g = geom_from_list(geom)
    B, H, M, _ = pq.shape
    return pq.new_empty(B, H, M, g.topk, dtype=_select_mod.lut_dtype_for(g.n_kblocks))


@torch.library.custom_op("lite3r::sla_complement_sums", mutates_args=())
def sla_complement_sums_op(
    lut: Tensor, s_blk: Tensor, z_blk: Tensor, n_kblocks: int
) -> tuple[Tensor, Tensor]:
    """Per query block, the linear states summed over the key blocks it did not select (one batched GEMM
    against the complement map; sla_linear_domain). Augmented states ``s_blk`` [B, H, Nk', D² + D]
    (``z_blk`` empty) give one augmented tensor [B, H, Mq, D² + D] and an empty second output."""
    if s_blk.dim() == 4:
        return _domain_mod.complement_sums_augmented(lut, s_blk, n_kblocks), z_blk.new_empty(0)
    return _domain_mod.complement_sums(lut, s_blk, z_blk, n_kblocks, transpose=False)


@sla_complement_sums_op.register_fake
def _(lut, s_blk, z_blk, n_kblocks):
    B, H, M, _ = lut.shape
    if s_blk.dim() == 4:
        return s_blk.new_empty(B, H, M, s_blk.shape[-1]), z_blk.new_empty(0)
    D = s_blk.shape[-1]
    return s_blk.new_empty(B, H, M, D, D), z_blk.new_empty(B, H, M, D, dtype=torch.float32)


@torch.library.custom_op("lite3r::sla_forward", mutates_args=())
def sla_forward_op(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lut: Tensor,
    s_blk: Tensor,
    z_blk: Tensor,
    s_tot: Tensor,
    z_tot: Tensor,
    proj_weight: Tensor | None,
    geom: list[int],
    feature: str,
    linear: str,
    eps: float,
    scale: float,
    fuse_proj: bool,
    recompute_states: bool = False,
    summed_states: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    return _forward_mod.sla_forward(
        q, k, v, lut, s_blk, z_blk, s_tot, z_tot, proj_weight, geom_from_list(geom),
        feature=feature, linear=linear, eps=eps, scale=scale, fuse_proj=fuse_proj,
        recompute_states=recompute_states, summed_states=summed_states,
    )  # fmt: skip


@sla_forward_op.register_fake
def _(
    q, k, v, lut, s_blk, z_blk, s_tot, z_tot, proj_weight, geom, feature, linear, eps, scale, fuse_proj,
    recompute_states=False, summed_states=False,
):  # fmt: skip
    B, H, N, D = q.shape
    code = effective_linear_code(linear, geom_from_list(geom))
    o = _bnhd(B, H, N, D, q)
    if fuse_proj and code:
        return o, q.new_empty(0), q.new_empty(0, dtype=torch.float32)
    o_l = _bnhd(B, H, N, D, q) if (code or (LINEAR_CODES[linear] and not fuse_proj)) else q.new_empty(0)
    lse = q.new_empty(0, dtype=torch.float32) if fuse_proj else q.new_empty(B, H, N, dtype=torch.float32)
    return o, o_l, lse


@torch.library.custom_op("lite3r::sla_forward_tma", mutates_args=())
def sla_forward_tma_op(
    q: Tensor,
    k_virtual: Tensor,
    v_virtual: Tensor,
    lut: Tensor,
    s_tot: Tensor,
    z_tot: Tensor,
    proj_weight: Tensor | None,
    geom: list[int],
    feature: str,
    linear: str,
    eps: float,
    scale: float,
) -> Tensor:
    """Inference forward with TMA key loads from the prepare pass's virtual-order K/V copies."""
    return _forward_tma_mod.sla_forward_tma(
        q, k_virtual, v_virtual, lut, s_tot, z_tot, proj_weight, geom_from_list(geom),
        feature=feature, linear=linear, eps=eps, scale=scale,
    )  # fmt: skip


@sla_forward_tma_op.register_fake
def _(q, k_virtual, v_virtual, lut, s_tot, z_tot, proj_weight, geom, feature, linear, eps, scale):
    B, H, N, D = q.shape
    return _bnhd(B, H, N, D, q)


@torch.library.custom_op("lite3r::sla_backward", mutates_args=())
def sla_backward_op(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o_s: Tensor,
    o_l: Tensor,
    lse: Tensor,
    do: Tensor,
    do_l: Tensor | None,
    lut: Tensor,
    s_blk: Tensor,
    z_blk: Tensor,
    s_tot: Tensor,
    z_tot: Tensor,
    geom: list[int],
    feature: str,
    linear: str,
    eps: float,
    scale: float,
) -> tuple[Tensor, Tensor, Tensor]:
    g = geom_from_list(geom)
    B, H, N, D = q.shape
    code = effective_linear_code(linear, g)
    do = _unit_last_stride(do)
    if code:
        do_l = _unit_last_stride(do_l)
    dq, dk, dv = (_bnhd(B, H, N, D, q) for _ in range(3))
    # The linear state of each query block (the totals, or the sum over its complement) comes in summed,
    # so neither kernel gathers per-block states inside its attention loop (sla_linear_domain).
    if code == 2:
        s_q, z_q = _domain_mod.complement_sums(lut, s_blk, z_blk, g.n_kblocks, transpose=False)
        g_dtype = s_blk.dtype  # G_i only feeds the complement GEMM, which rounds to this dtype anyway
    else:
        s_q, z_q, g_dtype = s_tot, z_tot, torch.float32
    delta, g_blk, dz_blk = _dq_mod.sla_backward_dq(
        q, k, v, o_s, o_l, do, do_l, lse, lut, s_q, z_q, g,
        feature=feature, linear_code=code, eps=eps, scale=scale, dq=dq, g_dtype=g_dtype,
    )  # fmt: skip
    del s_q, z_q
    # The query blocks that selected each key block: the dK/dV kernel's lists, and (complement) the
    # rows of the transposed map for the per-key-block sums.
    inverse = _dkdv_mod.inverse_lut(lut, g.n_kblocks)
    if code == 2:
        # G / dz come with zero rows up to a multiple of 8 query blocks (the dQ kernel): the GEMM
        # against the transposed map reduces over an aligned length.
        ds_k, dz_k = _domain_mod.complement_sums(
            lut, g_blk, dz_blk, g.n_kblocks, transpose=True, inverse=inverse
        )
    elif code == 1:
        ds_k, dz_k = g_blk.sum(2), dz_blk.sum(2)
    else:
        ds_k = dz_k = g_blk
    del g_blk, dz_blk
    _dkdv_mod.sla_backward_dkdv(
        q, k, v, do, lse, delta, lut, ds_k, dz_k, g,
        feature=feature, linear_code=code, scale=scale, dk=dk, dv=dv, inverse=inverse,
    )  # fmt: skip
    return dq, dk, dv


@sla_backward_op.register_fake
def _(q, k, v, o_s, o_l, lse, do, do_l, lut, s_blk, z_blk, s_tot, z_tot, geom, feature, linear, eps, scale):
    B, H, N, D = q.shape
    return tuple(_bnhd(B, H, N, D, q) for _ in range(3))


# ---------------------------------------------------------------------------------------------------
# Autograd and entry point


class SparseLinearAttentionFunction(torch.autograd.Function):
    """(q, k, v) → (o_s, o_l) with the Triton backward; the selection (lut) and states are inputs."""

    @staticmethod
    def forward(ctx, q, k, v, lut, s_blk, z_blk, s_tot, z_tot, geom, feature, linear, eps, scale):
        o_s, o_l, lse = sla_forward_op(
            q, k, v, lut, s_blk, z_blk, s_tot, z_tot, None, geom, feature, linear, eps, scale, False
        )
        # o_l is kept alive by the projection's autograd anyway; the dQ kernel reads rowsum(g ⊙ o_l) from it.
        ctx.save_for_backward(q, k, v, o_s, o_l, lse, lut, s_blk, z_blk, s_tot, z_tot)
        ctx.cfg = (geom, feature, linear, eps, scale)
        return o_s, o_l

    @staticmethod
    def backward(ctx, do_s, do_l):
        q, k, v, o_s, o_l, lse, lut, s_blk, z_blk, s_tot, z_tot = ctx.saved_tensors
        geom, feature, linear, eps, scale = ctx.cfg
        if do_l is not None and do_l.numel() == 0:
            do_l = None
        dq, dk, dv = sla_backward_op(
            q, k, v, o_s, o_l, lse, do_s, do_l, lut, s_blk, z_blk, s_tot, z_tot, geom, feature, linear, eps,
            scale,
        )  # fmt: skip
        return dq, dk, dv, *([None] * 10)


def _project_and_add(o_s: Tensor, o_l: Tensor, proj_weight: Tensor) -> Tensor:
    """o_s + o_l·Wᵀ computed in [B, N, H, D] memory order; returns a [B, H, N, D] view."""
    o = o_s.transpose(1, 2) + F.linear(o_l.transpose(1, 2), proj_weight.to(o_l.dtype))
    return o.transpose(1, 2)


def sla_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    proj_weight: Tensor | None,
    geom: SLAGeometry,
    *,
    feature: str,
    linear: str,
    eps: float,
    scale: float,
    complement_states: str = "summed",
    select: str = "gemm",
    key_loads: str = "gather",
) -> Tensor:
    """Block sparse-linear attention with the Triton kernels: [B, H, N, D] → [B, H, N, D].

    Inference (no grad needed) runs prepare, select, and the fused forward that writes o = o_s + o_l·Wᵀ.
    ``complement_states`` (complement branch, inference): "summed" sums the states of each query block's
    non-selected key blocks with one batched GEMM before the kernel (sla_linear_domain), "stored" reads
    the selected blocks' states inside the loop and subtracts them from the totals, "recomputed"
    recomputes them from K/V in the loop (no per-block state memory). ``key_loads`` (inference):
    "gather" reads the selected key blocks from q/k/v's own storage (cp.async gathers, any GPU); "tma"
    has the prepare pass write K and V in virtual key order (one more K- and V-sized buffer while the
    layer runs) and loads each selected block with one TMA copy (Hopper; ``sla_forward_tma``; the
    complement branch needs "summed" states). With gradients it runs the autograd function (stored
    states, gather loads) and projects o_l in PyTorch, so the projection weight gets its gradient from
    autograd.
    """
    if complement_states not in ("stored", "recomputed", "summed"):
        raise ValueError(f"complement_states {complement_states!r} is not stored, recomputed or summed")
    if key_loads not in KEY_LOADS:
        raise ValueError(f"key_loads {key_loads!r} is not one of {KEY_LOADS}")
    q, k, v = _unit_last_stride(q), _unit_last_stride(k), _unit_last_stride(v)
    g = geom_to_list(geom)
    grad = torch.is_grad_enabled()
    qkv_grad = grad and (q.requires_grad or k.requires_grad or v.requires_grad)
    w_grad = grad and proj_weight is not None and proj_weight.requires_grad and linear != "none"
    inference = not (qkv_grad or w_grad)
    recompute = complement_states == "recomputed" and inference
    summed = inference and complement_states == "summed" and effective_linear_code(linear, geom) == 2
    tma = inference and key_loads == "tma"
    if tma and effective_linear_code(linear, geom) == 2 and not summed:
        raise ValueError("TMA key loads need the complement states summed per query block")
    # summed complement states: S_j and z_j in one augmented row per key block, summed by one GEMM
    pq, pk, kmean, s_blk, z_blk, s_tot, z_tot, k_virt, v_virt = sla_prepare_op(
        q.detach(), k.detach(), v.detach(), g, feature, linear, not recompute, not summed, tma, summed
    )
    lut = sla_block_select_op(pq, pk, kmean, g, select)
    if inference:
        if summed:
            s_tot, z_tot = sla_complement_sums_op(lut, s_blk, z_blk, geom.n_kblocks)
            s_blk = z_blk = s_tot.new_empty(0)
        if tma:
            return sla_forward_tma_op(
                q, k_virt, v_virt, lut, s_tot, z_tot, proj_weight, g, feature, linear, eps, scale
            )
        return sla_forward_op(
            q, k, v, lut, s_blk, z_blk, s_tot, z_tot, proj_weight, g, feature, linear, eps, scale, True,
            recompute, summed,
        )[0]  # fmt: skip
    if qkv_grad:
        o_s, o_l = SparseLinearAttentionFunction.apply(
            q, k, v, lut, s_blk, z_blk, s_tot, z_tot, g, feature, linear, eps, scale
        )
    else:
        o_s, o_l, _ = sla_forward_op(
            q, k, v, lut, s_blk, z_blk, s_tot, z_tot, None, g, feature, linear, eps, scale, False
        )
    if linear == "none":
        return o_s
    return _project_and_add(o_s, o_l, proj_weight)


def sla_attention_fused_qk(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    q_norm: tuple | None,
    k_norm: tuple | None,
    tables: tuple[Tensor, Tensor] | None,
    proj_weight: Tensor | None,
    geom: SLAGeometry,
    *,
    feature: str,
    linear: str,
    eps: float,
    scale: float,
    select: str = "gemm",
) -> Tensor:
    """Inference with TMA key loads, from q and k *before* qk-norm and RoPE: [B, H, N, D] → [B, H, N, D].

    Same result as :func:`sla_attention` on ``qk_norm_rope``'s outputs with ``key_loads="tma"`` (and
    "summed" complement states), but the qk-norm/RoPE kernel also writes the pooled queries and k
    directly in virtual key order (``qk_norm_rope_sla``), so the prepare pass reads neither q nor the
    physical k and writes only the V copy. ``q_norm``/``k_norm``: ``(weight, bias, eps)`` or None;
    ``tables``: RoPE ``(cos, sin)`` or None, as :func:`lite3r.kernels.qk_norm_rope.qk_norm_rope` takes.
    """
    if torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, v, proj_weight, *(q_norm or ())[:2])
    ):
        raise ValueError("sla_attention_fused_qk is inference only (no backward): call it under no_grad")
    v = _unit_last_stride(v)
    g = geom_to_list(geom)
    summed = effective_linear_code(linear, geom) == 2
    q, pq, k_virt = sla_qk_norm_rope_op(*_qk_mod.launch_args(q, k, q_norm, k_norm, tables), v.dtype, g)
    _, pk, kmean, s_blk, z_blk, s_tot, z_tot, _, v_virt = sla_prepare_op(
        q, k_virt, v, g, feature, linear, True, not summed, True, summed, False, True
    )
    lut = sla_block_select_op(pq, pk, kmean, g, select)
    if summed:
        s_tot, z_tot = sla_complement_sums_op(lut, s_blk, z_blk, geom.n_kblocks)
    return sla_forward_tma_op(
        q, k_virt, v_virt, lut, s_tot, z_tot, proj_weight, g, feature, linear, eps, scale
    )
