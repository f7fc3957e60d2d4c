"""Pure-PyTorch reference of block sparse-linear attention (SLA), and the token top-k compat path.

This file never imports Triton: it is the ``"torch"`` backend of
:class:`lite3r.attention.sla.SparseLinearAttention` (CPU, or any device) and the reference every
Triton kernel in this folder is tested against. All functions are differentiable in q, k, v and the
projection weight (block selection itself is discrete and carries no gradient).

Conventions shared with the kernels (keep them in sync):

* q, k, v are [B, H, N, D]; softmax scale ``scale`` (1/sqrt(D) by default).
* **Key order.** With special tokens (camera/register/cls, ``n_special`` at the start of every frame of
  ``frame_len`` tokens) the keys are read in a *virtual* order: all frames' special tokens first, then
  all patch tokens, frame by frame. Attention is permutation-equivariant in the keys, so this is exact;
  it lets the special tokens form the first ``n_forced`` key blocks, which are always selected. Queries
  keep their physical order, so the output needs no un-permutation.
* **Blocks.** Query block i = tokens [i*block_q, (i+1)*block_q) in physical order; key block j = virtual
  keys [j*block_k, (j+1)*block_k). The last block of each may be partial.
* **Selection.** Mean-pool q per query block and k per key block (over the true length of a partial
  block), smooth k by its sequence mean, score = pooled q · (pooled k − mean k) (no scale, no softmax),
  forced blocks score +inf, keep the ``topk`` best key blocks per query block. The look-up table (LUT)
  lists them in ascending block order.
* **Linear branch** over the non-selected key blocks (``"complement"``, SLA-1) or over all keys
  (``"all"``) or none: o_l = φ(q)·S / (φ(q)·z + eps) with S = Σ φ(k)ᵀv and z = Σ φ(k) over that domain.
  Padded keys never enter S or z (φ(0) = 1 would).
* Output o = o_s + o_l · Wᵀ, W the head_dim × head_dim ``proj_lin`` weight shared by all heads.

**Precision.** Everything here computes in float32 (float64 for float64 inputs) *whatever the autocast
state*: autocast would otherwise run the matmuls and einsums in BF16/FP16, and BF16 block scores pick
different blocks than the kernels' float32 scores (measured: 3.6 % of the (head, query block) rows of
a 4-frame VGGT global layer, 8 % output difference). The pooled block scores are float32-rounded
float64 dot products, so TF32 settings do not change the selection either, and ties go to the first
block in order, as in the Triton selection kernel.
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

FEATURE_MAPS = ("elu", "softmax")
LINEAR_MODES = ("complement", "all", "none")

# Work per chunk of the chunked reference paths (elements of a [B, H, rows, N] score tile).
_CHUNK_ELEMENTS = 1 << 25


@dataclass(frozen=True)
class SLAGeometry:
    """Block layout of one attention call; a pure function of the sequence length and the config."""

    n_tokens: int
    block_q: int
    block_k: int
    n_qblocks: int
    n_kblocks: int
    n_special: int  # special tokens per frame that are kept attended (0: no reordering)
    frame_len: int
    n_special_total: int  # n_frames * n_special
    n_forced: int  # leading key blocks that hold special tokens and are always selected
    topk: int  # key blocks per query block (forced ones included)

    @property
    def kept_fraction(self) -> float:
        return self.topk / self.n_kblocks


def sla_geometry(
    n_tokens: int,
    *,
    block_q: int,
    block_k: int,
    keep_ratio: float | None,
    top_k_blocks: int | None,
    special_tokens_per_frame: int = 0,
    frame_len: int | None = None,
) -> SLAGeometry:
    """Block counts, forced special blocks and the clamped top-k for a sequence of ``n_tokens``.

    top-k = ``top_k_blocks`` or ⌊keep_ratio · n_kblocks⌋, clamped to ≥ 1 block (⌊0.3·1⌋ = 0 would
    divide 0 by 0), to ≥ n_forced + 1 (the special blocks never use up the whole budget) and to
    ≤ n_kblocks.
    """
    if n_tokens < 1:
        raise ValueError("empty sequence")
    frame_len = n_tokens if frame_len is None else int(frame_len)
    if frame_len < 1 or n_tokens % frame_len:
        raise ValueError(f"sequence of {n_tokens} tokens is not a whole number of frames of {frame_len}")
    n_special = int(special_tokens_per_frame)
    if n_special < 0 or (n_special and n_special >= frame_len):
        raise ValueError(f"{n_special} special tokens per frame do not fit frames of {frame_len} tokens")
    n_qblocks = -(-n_tokens // block_q)
    n_kblocks = -(-n_tokens // block_k)
    n_special_total = (n_tokens // frame_len) * n_special
    n_forced = -(-n_special_total // block_k)
    if top_k_blocks is not None:
        base = int(top_k_blocks)
    else:
        # ⌊keep·n + 1e-6⌋ in integers (keep in millionths): exact, and traceable when n is a symbolic
        # size under torch.compile(dynamic=True) (math.floor of a symbolic float is not)
        base = (round(keep_ratio * 1_000_000) * n_kblocks + 1) // 1_000_000
    topk = max(base, 1, n_forced + 1 if n_forced else 1)
    topk = min(topk, n_kblocks)
    return SLAGeometry(
        n_tokens=n_tokens,
        block_q=block_q,
        block_k=block_k,
        n_qblocks=n_qblocks,
        n_kblocks=n_kblocks,
        n_special=n_special,
        frame_len=frame_len,
        n_special_total=n_special_total,
        n_forced=min(n_forced, n_kblocks),
        topk=topk,
    )


def virtual_key_order(geom: SLAGeometry, device=None) -> torch.Tensor | None:
    """Physical token index of every virtual key position, or None when the order is the identity."""
    if geom.n_special == 0:
        return None
    n_frames = geom.n_tokens // geom.frame_len
    frame = torch.arange(n_frames, device=device)[:, None] * geom.frame_len
    special = (frame + torch.arange(geom.n_special, device=device)).reshape(-1)
    patches = (frame + torch.arange(geom.n_special, geom.frame_len, device=device)).reshape(-1)
    return torch.cat([special, patches])


def feature_map(x: torch.Tensor, kind: str) -> torch.Tensor:
    """φ of linear attention: ELU+1, or softmax over the head dimension."""
    if kind == "elu":
        return F.elu(x) + 1.0
    if kind == "softmax":
        return torch.softmax(x, dim=-1)
    raise ValueError(f"unknown feature map {kind!r}; choose one of {FEATURE_MAPS}")


def _without_autocast(fn):
    """Run ``fn`` with autocast off on the device of its first tensor argument (see *Precision*)."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        x = next((a for a in args if isinstance(a, torch.Tensor)), None)
        device = None if x is None else x.device.type
        ctx = torch.autocast(device, enabled=False) if device in ("cpu", "cuda") else contextlib.nullcontext()
        with ctx:
            return fn(*args, **kwargs)

    return wrapped


def _acc(x: torch.Tensor) -> torch.Tensor:
    """The reference computes in float32, or float64 for float64 inputs (gradient checks)."""
    return x if x.dtype == torch.float64 else x.float()


def _block_view(x: torch.Tensor, block: int) -> torch.Tensor:
    """[B, H, N, D] → zero-padded [B, H, nb, block, D]."""
    B, H, N, D = x.shape
    nb = -(-N // block)
    return F.pad(x, (0, 0, 0, nb * block - N)).view(B, H, nb, block, D)


def block_lengths(n_tokens: int, block: int, device=None) -> torch.Tensor:
    nb = -(-n_tokens // block)
    return (n_tokens - torch.arange(nb, device=device) * block).clamp(max=block)


def pool_blocks(x: torch.Tensor, block: int) -> torch.Tensor:
    """Mean over each block of tokens (a partial last block over its true length), in float32."""
    xa = _acc(x)
    lengths = block_lengths(x.shape[2], block, x.device).to(xa.dtype)
    return _block_view(xa, block).sum(3) / lengths[:, None]


@_without_autocast
def block_scores_reference(q: torch.Tensor, k_virtual: torch.Tensor, geom: SLAGeometry) -> torch.Tensor:
    """Pooled-q · (pooled-k − mean-k) scores [B, H, n_qblocks, n_kblocks] (float32; forced = +inf).

    The dot products run in float64 and are rounded once to float32: the same value the selection
    kernel's (tf32x3 / IEEE) float32 dot approximates to a few ulps, independent of TF32 settings.
    """
    pq = pool_blocks(q, geom.block_q)
    pk = pool_blocks(k_virtual, geom.block_k)
    kmean = _acc(k_virtual).mean(2, keepdim=True)
    scores = (pq.double() @ (pk - kmean).double().transpose(-1, -2)).to(pq.dtype)
    if geom.n_forced:
        scores[..., : geom.n_forced] = math.inf
    return scores


def select_blocks_reference(scores: torch.Tensor, topk: int) -> torch.Tensor:
    """Top-k key blocks per query block, ascending block order, int64 [B, H, n_qblocks, topk].

    Equal scores go to the lower block index (a stable sort), as in the selection kernel.
    """
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    return order[..., :topk].sort(-1).values


def block_mask_from_lut(lut: torch.Tensor, n_kblocks: int) -> torch.Tensor:
    B, H, M, _ = lut.shape
    mask = torch.zeros(B, H, M, n_kblocks, dtype=torch.bool, device=lut.device)
    return mask.scatter_(-1, lut.long(), True)


def _rows_per_chunk(B: int, H: int, n_keys: int, block_q: int) -> int:
    """Query blocks per chunk so a [B, H, rows, n_keys] float32 tile stays near _CHUNK_ELEMENTS."""
    return max(1, _CHUNK_ELEMENTS // max(1, B * H * n_keys * block_q))


@_without_autocast
def sparse_attention_reference(
    q: torch.Tensor,
    k_virtual: torch.Tensor,
    v_virtual: torch.Tensor,
    block_mask: torch.Tensor,
    geom: SLAGeometry,
    scale: float,
) -> torch.Tensor:
    """Exact softmax attention restricted to the selected key blocks (float32, [B, H, N, D])."""
    B, H, N, _ = q.shape
    qf, kf, vf = _acc(q), _acc(k_virtual), _acc(v_virtual)
    step = _rows_per_chunk(B, H, N, geom.block_q)
    out = []
    for i0 in range(0, geom.n_qblocks, step):
        i1 = min(i0 + step, geom.n_qblocks)
        r0, r1 = i0 * geom.block_q, min(i1 * geom.block_q, N)
        allowed = block_mask[:, :, i0:i1].repeat_interleave(geom.block_q, dim=2)[:, :, : r1 - r0]
        allowed = allowed.repeat_interleave(geom.block_k, dim=3)[..., :N]
        s = (qf[:, :, r0:r1] @ kf.transpose(-1, -2)) * scale
        p = torch.softmax(s.masked_fill(~allowed, -math.inf), dim=-1)
        out.append(p @ vf)
    return torch.cat(out, dim=2)


@_without_autocast
def block_states_reference(
    k_virtual: torch.Tensor, v_virtual: torch.Tensor, block_k: int, kind: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per key block S_j = φ(K_j)ᵀV_j [B, H, Nk, D, D] and z_j = Σ φ(K_j) [B, H, Nk, D], float32.

    Padding is added *after* φ, so padded keys contribute exactly zero.
    """
    phik = _block_view(feature_map(_acc(k_virtual), kind), block_k)
    vb = _block_view(_acc(v_virtual), block_k)
    return torch.einsum("bhjnd,bhjne->bhjde", phik, vb), phik.sum(3)


@_without_autocast
def linear_attention_reference(
    q: torch.Tensor,
    k_virtual: torch.Tensor,
    v_virtual: torch.Tensor,
    block_mask: torch.Tensor | None,
    geom: SLAGeometry,
    kind: str,
    linear: str,
    eps: float,
) -> torch.Tensor:
    """o_l [B, H, N, D] (float32) over the complement of the selected blocks or over all keys."""
    B, H, N, D = q.shape
    s_blk, z_blk = block_states_reference(k_virtual, v_virtual, geom.block_k, kind)
    if linear == "all":
        s_i = s_blk.sum(2, keepdim=True).expand(B, H, geom.n_qblocks, D, D)
        z_i = z_blk.sum(2, keepdim=True).expand(B, H, geom.n_qblocks, D)
    elif linear == "complement":
        w = (~block_mask).to(s_blk.dtype)
        s_i = torch.einsum("bhij,bhjde->bhide", w, s_blk)
        z_i = torch.einsum("bhij,bhjd->bhid", w, z_blk)
    else:
        raise ValueError(f"no linear branch for mode {linear!r}")
    phiq = _block_view(feature_map(_acc(q), kind), geom.block_q)
    num = torch.einsum("bhind,bhide->bhine", phiq, s_i)
    den = torch.einsum("bhind,bhid->bhin", phiq, z_i) + eps
    return (num / den[..., None]).reshape(B, H, -1, D)[:, :, :N]


@_without_autocast
def add_projected_linear(o: torch.Tensor, o_l: torch.Tensor, proj_weight: torch.Tensor) -> torch.Tensor:
    """o + o_l · Wᵀ in o_l's (float32/float64) precision."""
    return _acc(o).to(o_l.dtype) + o_l @ _acc(proj_weight).to(o_l.dtype).t()


@_without_autocast
def sla_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    proj_weight: torch.Tensor | None,
    geom: SLAGeometry,
    *,
    feature: str = "elu",
    linear: str = "complement",
    eps: float = 1e-6,
    scale: float | None = None,
    lut: torch.Tensor | None = None,
    return_parts: bool = False,
):
    """Block sparse-linear attention, [B, H, N, D] in → [B, H, N, D] out (in q's dtype).

    ``lut`` overrides the selection (to test kernels on exactly the same blocks). With
    ``return_parts`` returns (o, o_s, o_l, lut) with o_s / o_l in float32.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    order = virtual_key_order(geom, q.device)
    kv_, vv_ = (k, v) if order is None else (k[:, :, order], v[:, :, order])
    if lut is None:
        with torch.no_grad():
            lut = select_blocks_reference(block_scores_reference(q, kv_, geom), geom.topk)
    mask = block_mask_from_lut(lut, geom.n_kblocks)
    o_s = sparse_attention_reference(q, kv_, vv_, mask, geom, scale)
    o = o_s
    o_l = None
    if linear != "none":
        o_l = linear_attention_reference(q, kv_, vv_, mask, geom, feature, linear, eps)
        o = add_projected_linear(o_s, o_l, proj_weight)
    o = o.to(q.dtype)
    if return_parts:
        return o, o_s, o_l, lut
    return o


@_without_autocast
def token_topk_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    proj_weight: torch.Tensor,
    keep_ratio: float = 0.3,
    eps: float = 1e-6,
    scale: float | None = None,
) -> torch.Tensor:
    """The published Lite3R attention (method.md A2.4), for loading and running the authors' checkpoints.

    Token-level top-k: full N² scaled scores, the top max(1, ⌊keep·N⌋) keys per query row, softmax over
    them; plus proj_lin(ELU+1 linear attention over all tokens, eps 1e-6). Computed in float32 in chunks
    of query rows (the reference used BF16 autocast and activation checkpointing; the maths is the same).
    """
    B, H, N, D = q.shape
    scale = D**-0.5 if scale is None else scale
    kk = max(1, int(keep_ratio * N))
    qf, kf, vf = _acc(q), _acc(k), _acc(v)
    rows = max(1, _CHUNK_ELEMENTS // max(1, B * H * N))
    out = []
    for r0 in range(0, N, rows):
        s = (qf[:, :, r0 : r0 + rows] @ kf.transpose(-1, -2)) * scale
        idx = s.topk(kk, dim=-1).indices
        kept = torch.full_like(s, -math.inf).scatter(-1, idx, s.gather(-1, idx))
        out.append(torch.softmax(kept, dim=-1) @ vf)
    o_topk = torch.cat(out, dim=2)
    phiq, phik = feature_map(qf, "elu"), feature_map(kf, "elu")
    kv = phik.transpose(-1, -2) @ vf
    a_lin = (phiq @ kv) / (phiq @ phik.sum(2)[..., None] + eps)
    return (o_topk + a_lin @ proj_weight.to(a_lin.dtype).t()).to(q.dtype)
