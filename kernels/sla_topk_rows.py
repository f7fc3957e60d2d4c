"""Top-k of score rows in one pass: the k largest entries of each row, listed in ascending column order.

The block selection computes its scores with one float64 GEMM per chunk of query blocks; what follows
used to be ~11 PyTorch kernels over the score tile (rounding to float32, ``torch.topk`` for the k-th
largest value, comparisons, two prefix sums, a scatter, a copy), each a full pass over
rows × key blocks: ~1 ms at 32 VGGT frames, a quarter of the whole SLA layer. Here one program owns
``ROWS`` rows, keeps them in registers and

1. rounds the float64 scores to float32 once (the reference's rounding) and maps them to
   order-preserving uint32 keys (-0.0 ties with +0.0, as in ``torch.topk``; forced columns, the special
   tokens' key blocks, score +inf);
2. searches a threshold with exactly k keys at or above it (a row-wise count per probe: exact, no
   sorting), starting from the row's Gaussian quantile and closing the bracket by the secant on the
   scores, with a midpoint of the keys every fourth probe; it stops as soon as every row of the program
   has one, typically after ~6 probes (a bit-by-bit search took ~18), and ends on the k-th largest key
   itself when ties straddle it;
3. selects every entry above it plus the first ties in column order (so ties go to the lower block,
   as in the reference) and writes their column indices at their prefix-sum positions.

Rows must fit in registers: up to ``MAX_COLS`` columns (VGGT: ~380 frames of 1,374 tokens at 64-token key
blocks); the caller (``sla_block_select_gemm``) uses the PyTorch path beyond that, which computes the
same table.
"""

from __future__ import annotations

import statistics

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


@triton.jit
def _key_value(key):
    """The float32 whose order key ``key`` is (inverse of :func:`_order_keys`; -0.0 comes back as +0.0)."""
    bits = key.to(tl.int32, bitcast=True)
    return tl.where(bits < 0, bits & 2147483647, ~bits).to(tl.float32, bitcast=True)


@triton.jit(do_not_specialize=("n_rows", "n_cols", "topk", "n_forced"))
def _topk_rows_kernel(
    S, LUT, n_rows, n_cols, topk, n_forced, z_guess,
    stride_sr, stride_lr,
    ROWS: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    r = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    c = tl.arange(0, BLOCK_C)
    rmask = r < n_rows
    cmask = c < n_cols
    mask = rmask[:, None] & cmask[None, :]
    s = tl.load(S + r.to(tl.int64)[:, None] * stride_sr + c[None, :], mask=mask, other=0.0).to(tl.float32)
    forced = (c < n_forced)[None, :]
    s = tl.where(forced, float("inf"), s)
    key = _order_keys(s)
    # The threshold is a key t with count(key ≥ t) = k, or, with ties at the boundary, the k-th largest
    # key itself. Search it on a bracket lo < hi with count(key ≥ lo) = f_lo ≥ k > f_hi = count(key ≥
    # hi), each step one counting pass: the first probe is the row's Gaussian quantile
    # mean + z·std (z for the kept fraction of the competing columns, from the host), then the secant
    # between the bracket's values and counts (regula falsi on the scores), every fourth step the
    # midpoint of the keys (bounds the steps: ≤ 4·32). A row is finished when f_lo = k (t = lo) or
    # when no key lies strictly between lo and hi (t = lo, the k-th largest). On VGGT-like rows this
    # takes ~6 passes against ~18 for a bit-by-bit search.
    free = mask & ~forced  # the competing columns
    n_free = tl.maximum(n_cols - n_forced, 1).to(tl.float32)
    sf = tl.where(free, s, 0.0)
    mean = tl.sum(sf, axis=1) / n_free
    std = tl.sqrt(tl.maximum(tl.sum(sf * sf, axis=1) / n_free - mean * mean, 0.0))
    lo = _order_keys(tl.min(tl.where(free, s, float("inf")), axis=1))
    hi = _order_keys(tl.max(tl.where(free, s, float("-inf")), axis=1)) + 1
    f_lo = tl.zeros([ROWS], dtype=tl.int32) + n_cols  # count(key ≥ lo): every valid column
    f_hi = tl.zeros([ROWS], dtype=tl.int32) + n_forced  # only the forced columns lie above the free max
    # k forced columns or fewer kept than forced: the threshold is the forced columns' key
    inf_key = _order_keys(tl.full([ROWS], float("inf"), dtype=tl.float32))
    take_forced = f_hi >= topk
    lo = tl.where(take_forced, inf_key, lo)
    hi = tl.where(take_forced, inf_key + 1, hi)
    f_lo = tl.where(take_forced, f_hi, f_lo)
    open_rows = rmask & (f_lo != topk) & (hi - lo > 1)
    n_open = tl.sum(open_rows.to(tl.int32), axis=0)
    step = 0
    while n_open > 0:
        lo_v, hi_v = _key_value(lo), _key_value(hi)
        if step == 0:
            guess = mean + z_guess * std
        else:
            guess = lo_v + (hi_v - lo_v) * ((f_lo - topk).to(tl.float32) / (f_lo - f_hi).to(tl.float32))
        mid = lo + ((hi - lo) >> 1)
        # the secant's probe when it lies strictly inside the bracket (a NaN or ±inf one does not)
        use_guess = (guess > lo_v) & (guess < hi_v) & (step % 4 != 3)
        probe = tl.where(use_guess, _order_keys(guess), mid)
        probe = tl.minimum(tl.maximum(probe, lo + 1), hi - 1)
        cnt = tl.sum(((key >= probe[:, None]) & cmask[None, :]).to(tl.int32), axis=1)
        up = open_rows & (cnt >= topk)
        down = open_rows & (cnt < topk)
        lo = tl.where(up, probe, lo)
        f_lo = tl.where(up, cnt, f_lo)
        hi = tl.where(down, probe, hi)
        f_hi = tl.where(down, cnt, f_hi)
        open_rows = rmask & (f_lo != topk) & (hi - lo > 1)
        n_open = tl.sum(open_rows.to(tl.int32), axis=0)
        step += 1
    t = lo
    # Every key above t, plus the first ties in column order (all of them when count(key ≥ t) = k).
    above = (key > t[:, None]) & cmask[None, :]
    tied = (key == t[:, None]) & cmask[None, :]
    room = topk - tl.sum(above.to(tl.int32), axis=1)
    sel = above | (tied & (tl.cumsum(tied.to(tl.int32), axis=1) <= room[:, None]))
    pos = tl.cumsum(sel.to(tl.int32), axis=1) - 1
    out = LUT + r.to(tl.int64)[:, None] * stride_lr + pos
    tl.store(out, (c[None, :] + tl.zeros([ROWS, BLOCK_C], dtype=tl.int32)).to(LUT.dtype.element_ty),
             mask=sel & rmask[:, None])  # fmt: skip


def _rows_per_program(block_c: int) -> int:
    return max(1, min(16, 4096 // block_c))


def _gaussian_quantile(kept: int, competing: int) -> float:
    """z with P(X > z) = kept / competing for a standard normal X: the search's first probe."""
    if kept <= 0 or kept >= competing:
        return 0.0
    return statistics.NormalDist().inv_cdf(1.0 - kept / competing)


def topk_rows(scores: torch.Tensor, topk: int, out: torch.Tensor, n_forced: int = 0) -> torch.Tensor:
    """Write the ``topk`` largest entries of each row of ``scores`` [R, C] (float64 or float32; rounded
    to float32 first) as ascending column indices into ``out`` [R, topk] (int16/int32). Columns below
    ``n_forced`` count as +inf. Needs C ≤ ``MAX_COLS`` and 1 ≤ topk ≤ C."""
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
    rows = _rows_per_program(block_c)
    _topk_rows_kernel[(triton.cdiv(R, rows),)](
        scores, out, R, C, topk, n_forced, _gaussian_quantile(topk - n_forced, C - n_forced),
        scores.stride(0), out.stride(0),
        ROWS=rows, BLOCK_C=block_c, num_warps=4 if block_c * rows <= 4096 else 8,
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
