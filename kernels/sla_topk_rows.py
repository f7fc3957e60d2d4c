"""Top-k of score rows in one pass: the k largest entries of each row, listed in ascending column order.

The block selection computes its scores per chunk of query blocks (float64 dot products rounded to
float32: ``sla_select_scores``, or a float64 GEMM on the PyTorch path); what follows used to be ~11 PyTorch kernels over the score tile (rounding to float32, ``torch.topk`` for the k-th
largest value, comparisons, two prefix sums, a scatter, a copy), each a full pass over
rows × key blocks: ~1 ms at 32 VGGT frames, a quarter of the whole SLA layer. Here one program owns
``ROWS`` rows, keeps them in registers and

1. rounds float64 scores to float32 once (the reference's rounding; float32 scores load as they are)
   and maps them to
   order-preserving uint32 keys (-0.0 ties with +0.0, as in ``torch.topk``; forced columns, the special
   tokens' key blocks, score +inf);
2. builds, bit by bit from the top of the unsigned key, a threshold with exactly k keys at or above it
   (a row-wise count per bit: exact, no sorting; it stops as soon as every row of the program has one,
   typically after ~20 bits, and falls back to the k-th largest key itself when ties straddle it);
3. selects every entry above it plus the first ties in column order (so ties go to the lower block,
   as in the reference) and writes their column indices at their prefix-sum positions.

Rows must fit in registers: up to ``MAX_COLS`` columns (VGGT: ~380 frames of 1,374 tokens at 64-token key
blocks); the caller (``sla_block_select_gemm``) uses the PyTorch path beyond that, which computes the
same table.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .sla_triton_common import kernel_runs_on

MAX_COLS = 8192


@triton.jit
def _order_keys(s):
    """float32 → uint32 keys with the same order (unsigned compare); -0.0 and +0.0 get the same key."""
    bits = s.to(tl.int32, bitcast=True)
    bits = tl.where(s == 0.0, 0, bits)
    flipped = tl.where(
        bits >= 0, bits | -2147483648, ~bits
    )  # sign bit set for x ≥ 0, order reversed for x < 0
    return flipped.to(tl.uint32, bitcast=True)


@triton.jit(do_not_specialize=("n_rows", "n_cols", "topk", "n_forced"))
def _topk_rows_kernel(
    S, LUT, n_rows, n_cols, topk, n_forced,
    stride_sr, stride_lr,
    ROWS: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    r = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    c = tl.arange(0, BLOCK_C)
    rmask = r < n_rows
    cmask = c < n_cols
    mask = rmask[:, None] & cmask[None, :]
    s = tl.load(S + r.to(tl.int64)[:, None] * stride_sr + c[None, :], mask=mask, other=0.0).to(tl.float32)
    s = tl.where((c < n_forced)[None, :], float("inf"), s)
    # padding columns get key 0, below every candidate threshold (each has a bit set), so the count
    # loop needs no column mask (one instruction less per element and pass)
    key = tl.where(cmask[None, :], _order_keys(s), 0)
    # Threshold t built bit by bit from the top: keep bit b when count(key ≥ t | b) ≥ k. Invariant:
    # count(key ≥ t) ≥ k. A row is finished once count(key ≥ t) = k exactly (t then separates its top k
    # from the rest; typically after ~20 of the 32 bits), so the loop stops when every row is; with ties
    # at the boundary it runs all 32 bits and t is the k-th largest key. Padding columns never count.
    t = tl.zeros([ROWS], dtype=tl.uint32)
    cnt_t = tl.where(rmask, tl.minimum(n_cols, BLOCK_C), topk)  # count(key ≥ 0): every valid column
    bit = tl.full([], 31, dtype=tl.int32)
    n_open = tl.sum((cnt_t != topk).to(tl.int32), axis=0)
    while (bit >= 0) & (n_open > 0):
        cand = t | (tl.full([ROWS], 1, dtype=tl.uint32) << bit.to(tl.uint32))
        cnt = tl.sum((key >= cand[:, None]).to(tl.int32), axis=1)
        ok = cnt >= topk
        t = tl.where(ok, cand, t)
        cnt_t = tl.where(ok, cnt, cnt_t)
        n_open = tl.sum((rmask & (cnt_t != topk)).to(tl.int32), axis=0)
        bit -= 1
    # Every key above t, plus the first ties in column order (all of them when count(key ≥ t) = k).
    above = (key > t[:, None]) & cmask[None, :]
    tied = (key == t[:, None]) & cmask[None, :]
    room = topk - tl.sum(above.to(tl.int32), axis=1)
    sel = above | (tied & (tl.cumsum(tied.to(tl.int32), axis=1) <= room[:, None]))
    pos = tl.cumsum(sel.to(tl.int32), axis=1) - 1
    out = LUT + r.to(tl.int64)[:, None] * stride_lr + pos
    tl.store(out, (c[None, :] + tl.zeros([ROWS, BLOCK_C], dtype=tl.int32)).to(LUT.dtype.element_ty),
             mask=sel & rmask[:, None])  # fmt: skip


def _launch_shape(block_c: int) -> tuple[int, int]:
    """(rows per program, warps). From 1,024 columns on, one row per program on 2 warps per 1,024
    columns (at least 2, at most 8): the per-bit counts then reduce over fewer threads, and more,
    smaller programs fill the SMs. On the H100 (CUDA graphs, benchmarks/results/sla/
    sla_select_tail_probe_4fd384b): 52 against 59 µs (2 rows on 4 warps, the launch before) at 32 VGGT
    frames, 196 against 237 µs at 64 and 781 against 1,035 µs at 128. Shorter rows: several per program."""
    if block_c >= 1024:
        return 1, max(2, min(8, block_c // 1024))
    return max(1, min(16, 4096 // block_c)), 4


def topk_rows(
    scores: torch.Tensor,
    topk: int,
    out: torch.Tensor,
    n_forced: int = 0,
    *,
    rows: int | None = None,
    num_warps: int | None = None,
) -> torch.Tensor:
    """Write the ``topk`` largest entries of each row of ``scores`` [R, C] (float64 or float32; rounded
    to float32 first) as ascending column indices into ``out`` [R, topk] (int16/int32). Columns below
    ``n_forced`` count as +inf. Needs C ≤ ``MAX_COLS`` and 1 ≤ topk ≤ C. ``rows`` (rows per program)
    and ``num_warps`` override the launch (probes)."""
    R, C = scores.shape
    if C > MAX_COLS:
        raise ValueError(f"topk_rows keeps a row in registers: {C} columns > {MAX_COLS}")
    if not 1 <= topk <= C:
        raise ValueError(f"topk must be in [1, {C}], got {topk}")
    if out.shape != (R, topk) or out.stride(-1) != 1 or scores.stride(-1) != 1:
        raise ValueError("topk_rows needs row-major scores [R, C] and out [R, topk]")
    if R == 0:
        return out
    block_c = triton.next_power_of_2(C)
    default_rows, default_warps = _launch_shape(block_c)
    rows = rows or default_rows
    num_warps = num_warps or default_warps
    _topk_rows_kernel[(triton.cdiv(R, rows),)](
        scores, out, R, C, topk, n_forced, scores.stride(0), out.stride(0),
        ROWS=rows, BLOCK_C=block_c, num_warps=num_warps,
    )  # fmt: skip
    return out


def topk_rows_reference(scores: torch.Tensor, topk: int, n_forced: int = 0) -> torch.Tensor:
    """The same table in PyTorch: stable descending sort of the float32 scores (ties → lower column),
    first ``topk`` columns, ascending."""
    s = scores.float().clone()
    s[:, :n_forced] = float("inf")
    s = torch.where(s == 0, torch.zeros_like(s), s)  # -0.0 ties with +0.0
    idx = torch.sort(s, dim=-1, descending=True, stable=True).indices[:, :topk]
    return idx.sort(dim=-1).values


def runs_here(x: torch.Tensor) -> bool:
    """Whether the kernel can run on ``x``'s device: CUDA, or CPU under the Triton interpreter."""
    return kernel_runs_on(_topk_rows_kernel, x)
