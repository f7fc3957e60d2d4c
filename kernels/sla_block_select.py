"""SLA block selection: the top-k key blocks of every query block, streamed, exact.

Scores are pooled q · (pooled k − mean k) (see ``sla_reference.py``). The N_q × N_k block score map is
never stored: each program owns ``ROWS`` query blocks of one (batch, head) and streams over the key
blocks in chunks, recomputing the (cheap) scores on every pass. The k-th largest score of each row is
found by an exact radix select on the order-preserving integer image of the float32 score (8 passes of
4 bits, each counting per-row digit histograms among the keys that still match the prefix found so
far); a final pass writes the keys above that threshold plus the first ties in block order. The look-up
table therefore lists the selected blocks in ascending order, which also keeps the sparse kernel's
K/V reads in address order. Forced blocks (the special tokens' blocks) score +inf.

Extra device memory is the pooled q/k (float32, N/block_q + N/block_k rows of head_dim per head) and
the look-up table itself (int16 when there are fewer than 2¹⁵ key blocks, else int32). At 1,000 VGGT
frames (1.374 M tokens, 16 heads, blocks 128/64, 10 % kept) that is 0.13 GB + 0.74 GB.

``sla_block_select_gemm`` computes the same table from bounded score tiles (chunks of query blocks,
never the whole map): a float64-MMA score kernel and a row top-k kernel, or cuBLAS and ``torch.topk``
past 8,192 key blocks. On the H100 it is the faster of the two (measured at
VGGT shapes, 10 % kept: 1.9 → 0.6 ms at 32 frames, 23.6 → 5.2 ms at 128 frames: the radix passes re-stream
the keys 9 times), so it is the default (``SLAConfig.select = "gemm"``); the streamed kernel stays as the
zero-workspace option (``"streamed"``). With float64 score GEMMs (autocast-proof) it was re-measured:
0.66 ms at 32 frames, 5.7 ms at 128, and 346 ms with 1.5 GB extra at 1,000 frames
(benchmarks/results/sla/bench_sla_attention_regcap); with the row top-k kernel after the GEMM
(``sla_topk_rows``, up to 8,192 key blocks): 0.38 ms at 32 frames, 0.65 at 64, 1.9 at 128
(benchmarks/results/sla/bench_sla_attention_topk_rows).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import sla_select_scores as _scores
from . import sla_topk_rows as _topk_rows
from .sla_reference import SLAGeometry, block_scores_reference, select_blocks_reference
from .sla_triton_common import SIZE_ARGS

ROWS = 16  # query blocks per program
_RADIX_BITS = 4
_PASSES = 32 // _RADIX_BITS


@triton.jit
def _score_keys(
    pq,
    PK,
    KMEAN,
    bh,
    c0,
    n_kblocks,
    n_forced,
    CHUNK: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """Order-preserving int64 keys of the scores of key blocks [c0, c0 + CHUNK) (-1 where invalid)."""
    d = tl.arange(0, HEAD_DIM)
    j = c0 + tl.arange(0, CHUNK)
    jvalid = j < n_kblocks
    pk = tl.load(PK + (bh * n_kblocks + j)[:, None] * HEAD_DIM + d[None, :], mask=jvalid[:, None], other=0.0)
    km = tl.load(KMEAN + bh * HEAD_DIM + d)
    s = tl.dot(pq, tl.trans(pk - km[None, :]), input_precision=DOT_PRECISION)
    s = tl.where((j < n_forced)[None, :], float("inf"), s)
    bits = s.to(tl.int32, bitcast=True)
    bits = tl.where(s == 0.0, 0, bits)  # -0.0 ties with +0.0, as in torch.topk / sort
    key = tl.where(bits >= 0, bits.to(tl.int64) + 2147483648, (~bits).to(tl.int64))
    return tl.where(jvalid[None, :], key, -1), j


@triton.jit(do_not_specialize=SIZE_ARGS)
def _sla_block_select_kernel(
    PQ, PK, KMEAN, LUT,
    n_qblocks, n_kblocks, topk, n_forced,
    ROWS: tl.constexpr, CHUNK: tl.constexpr, HEAD_DIM: tl.constexpr,
    RADIX_BITS: tl.constexpr, PASSES: tl.constexpr, NB: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    g = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    r = g * ROWS + tl.arange(0, ROWS)
    rvalid = r < n_qblocks
    d = tl.arange(0, HEAD_DIM)
    pq = tl.load(PQ + (bh * n_qblocks + r)[:, None] * HEAD_DIM + d[None, :], mask=rvalid[:, None], other=0.0)

    digits = tl.arange(0, NB)
    prefix = tl.zeros([ROWS], dtype=tl.int64)
    remaining = tl.zeros([ROWS], dtype=tl.int32) + topk
    # Radix passes from the most significant digit; stop early once, in every row, the bucket holding the
    # k-th largest key is needed whole (then the keys are separated at this resolution already).
    p = tl.full([], 0, dtype=tl.int32)
    n_open = tl.full([], ROWS, dtype=tl.int32)
    while (p < PASSES) & (n_open > 0):
        shift = 32 - RADIX_BITS * (p + 1)
        counts = tl.zeros([ROWS, NB], dtype=tl.int32)
        for c0 in range(0, n_kblocks, CHUNK):
            key, _ = _score_keys(pq, PK, KMEAN, bh, c0, n_kblocks, n_forced, CHUNK, HEAD_DIM, DOT_PRECISION)
            match = (key >= 0) & ((key >> (shift + RADIX_BITS)) == (prefix[:, None] >> (shift + RADIX_BITS)))
            digit = ((key >> shift) & (NB - 1)).to(tl.int32)
            hit = (digit[:, :, None] == digits[None, None, :]) & match[:, :, None]
            counts += tl.sum(hit.to(tl.int32), axis=1)
        # The digit of the k-th largest: the largest d with #(digit ≥ d) ≥ remaining.
        at_or_above = tl.sum(counts, axis=1)[:, None] - tl.cumsum(counts, axis=1) + counts
        best = tl.max(tl.where(at_or_above >= remaining[:, None], digits[None, :], -1), axis=1)
        above = tl.sum(tl.where(digits[None, :] > best[:, None], counts, 0), axis=1)
        in_best = tl.sum(tl.where(digits[None, :] == best[:, None], counts, 0), axis=1)
        remaining -= above
        prefix = prefix | (best.to(tl.int64) << shift)
        n_open = tl.sum((rvalid & (in_best != remaining)).to(tl.int32), axis=0)
        p += 1
    resolution = 32 - RADIX_BITS * p  # keys are compared on their bits above this one

    # Emit: every key above the threshold, and the first `remaining` keys equal to it.
    ties_seen = tl.zeros([ROWS], dtype=tl.int32)
    written = tl.zeros([ROWS], dtype=tl.int32)
    out = LUT + (bh * n_qblocks + r) * topk
    for c0 in range(0, n_kblocks, CHUNK):
        key, j = _score_keys(pq, PK, KMEAN, bh, c0, n_kblocks, n_forced, CHUNK, HEAD_DIM, DOT_PRECISION)
        valid = key >= 0
        high = key >> resolution
        threshold = prefix[:, None] >> resolution
        above = valid & (high > threshold)
        tie = valid & (high == threshold)
        tie_rank = ties_seen[:, None] + tl.cumsum(tie.to(tl.int32), axis=1)
        take = above | (tie & (tie_rank <= remaining[:, None]))
        pos = written[:, None] + tl.cumsum(take.to(tl.int32), axis=1) - 1
        jj = j[None, :] + tl.zeros([ROWS, CHUNK], dtype=tl.int32)
        tl.store(out[:, None] + pos, jj.to(LUT.dtype.element_ty), mask=take & rvalid[:, None])
        ties_seen += tl.sum(tie.to(tl.int32), axis=1)
        written += tl.sum(take.to(tl.int32), axis=1)


def lut_dtype_for(n_kblocks: int) -> torch.dtype:
    return torch.int16 if n_kblocks < 2**15 else torch.int32


def sla_block_select(
    pq: torch.Tensor, pk: torch.Tensor, kmean: torch.Tensor, geom: SLAGeometry
) -> torch.Tensor:
    """Look-up table [B, H, n_qblocks, topk] of selected key blocks, ascending (int16/int32)."""
    B, H, M, D = pq.shape
    n_k = geom.n_kblocks
    dtype = lut_dtype_for(n_k)
    if geom.topk >= n_k:  # everything is selected
        return torch.arange(n_k, device=pq.device, dtype=dtype).expand(B, H, M, n_k).contiguous()
    lut = torch.empty(B, H, M, geom.topk, device=pq.device, dtype=dtype)
    chunk = max(16, min(32, triton.next_power_of_2(n_k)))
    kwargs = {"num_warps": 8} if pq.is_cuda else {}
    _sla_block_select_kernel[(triton.cdiv(M, ROWS), B * H)](
        pq, pk, kmean, lut,
        M, n_k, geom.topk, geom.n_forced,
        ROWS=ROWS, CHUNK=chunk, HEAD_DIM=D, RADIX_BITS=_RADIX_BITS, PASSES=_PASSES, NB=1 << _RADIX_BITS,
        DOT_PRECISION="tf32x3" if pq.is_cuda else "ieee",
        **kwargs,
    )  # fmt: skip
    return lut


# Per chunk of the GEMM + top-k selection (scores and their masks). 128 MiB: at 128 VGGT frames the
# float64 score tile of one chunk was 0.46 GiB of the Lite3R forward's peak with 512 MiB (one chunk);
# now four chunks of about 0.12 GiB (memory_peak.py).
SELECT_WORKSPACE_BYTES = 1 << 27
SELECT_BYTES_PER_SCORE = 32  # float64 product, float32 score, masks, int32 prefix sums, int64 slots
ROW_KERNEL_BYTES_PER_SCORE = 4  # the float32 score only: the row kernel does the rest in registers


def sla_block_select_gemm(
    pq: torch.Tensor,
    pk: torch.Tensor,
    kmean: torch.Tensor,
    geom: SLAGeometry,
    workspace_bytes: int = SELECT_WORKSPACE_BYTES,
) -> torch.Tensor:
    """The look-up table of :func:`sla_block_select` (same ordering and tie rule: equal scores go to
    the lower block) from score tiles of at most ``workspace_bytes`` (≈ 32 bytes per score).

    Per chunk: scores = pq · (pk − k̄)ᵀ, the k-th largest score t per row (torch.topk), every block
    above t plus the first blocks equal to t in block order, written in ascending order by a scatter
    (no host synchronisation, so it can be captured in a CUDA graph).

    When a row of scores fits in registers (≤ ``sla_topk_rows.MAX_COLS`` key blocks) on a GPU or under
    the interpreter, two Triton kernels do it: the float32 scores (``sla_select_scores``: float64 MMA,
    rounded once) and the row top-k (``sla_topk_rows``); otherwise (longer sequences, or plain CPU) a
    float64 matmul and the same rule as PyTorch ops. Both give the same table."""
    B, H, M, _ = pq.shape
    n_k, k = geom.n_kblocks, geom.topk
    dtype = lut_dtype_for(n_k)
    if k >= n_k:
        return torch.arange(n_k, device=pq.device, dtype=dtype).expand(B, H, M, n_k).contiguous()
    # Scores as in block_scores_reference: float64 dot products rounded once to float32, whatever the
    # autocast / TF32 state of the caller (under bf16 autocast a float32 matmul would run in bf16 and
    # flip the selection of ~4 % of the rows: measured on the H100).
    lut = torch.empty(B, H, M, k, device=pq.device, dtype=dtype)
    if n_k <= _topk_rows.MAX_COLS and _topk_rows.runs_here(pq) and _scores.runs_here(pq):
        rows = max(1, workspace_bytes // (ROW_KERNEL_BYTES_PER_SCORE * B * H * n_k))
        for r0 in range(0, M, rows):
            # float64 dot products rounded to float32, one Triton kernel (sla_select_scores)
            s = _scores.select_scores(pq, pk, kmean, rows=(r0, min(M, r0 + rows)))  # [B, H, r, n_k]
            r = s.shape[2]
            out = lut if r == M else torch.empty(B, H, r, k, device=pq.device, dtype=dtype)
            _topk_rows.topk_rows(s.view(-1, n_k), k, out.view(-1, k), geom.n_forced)
            if r != M:
                lut[:, :, r0 : r0 + r] = out
            del s, out  # free this tile before the next score kernel allocates its own (one tile live)
        return lut
    keys_t = (pk.float() - kmean.float()[:, :, None]).double().transpose(-1, -2)  # [B, H, D, n_k]
    rows = max(1, workspace_bytes // (SELECT_BYTES_PER_SCORE * B * H * n_k))
    block_ids = torch.arange(n_k, device=pq.device, dtype=torch.int32)
    for r0 in range(0, M, rows):
        with torch.autocast(pq.device.type, enabled=False):
            s = torch.matmul(pq[:, :, r0 : r0 + rows].double(), keys_t).float()  # [B, H, r, n_k]
        if geom.n_forced:
            s[..., : geom.n_forced] = float("inf")
        t = s.topk(k, dim=-1, sorted=False).values.amin(-1, keepdim=True)
        above = s > t
        tied = s == t
        room = k - above.sum(-1, keepdim=True, dtype=torch.int32)
        sel = above | (tied & (tied.cumsum(-1, dtype=torch.int32) <= room))
        slot = torch.where(sel, sel.cumsum(-1, dtype=torch.int32) - 1, k).long()  # k: a discard slot
        out = torch.empty(*s.shape[:-1], k + 1, device=pq.device, dtype=torch.int32)
        out.scatter_(-1, slot, block_ids.expand_as(slot))
        lut[:, :, r0 : r0 + rows] = out[..., :k].to(dtype)
    return lut


def block_select_reference(q, k_virtual, geom: SLAGeometry) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores, lut) in plain PyTorch: the dense score map and torch.topk (small sizes only)."""
    scores = block_scores_reference(q, k_virtual, geom)
    return scores, select_blocks_reference(scores, geom.topk)
