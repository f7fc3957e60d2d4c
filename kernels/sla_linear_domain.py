"""Sums of per-block linear-attention states over the complement linear domain, as batched GEMMs.

With the complement linear branch (SLA-1), query block i attends linearly to the key blocks it did
*not* select, so the backward needs, per query block, S_i = Σ_{j ∉ sel(i)} S_j (and z_i), and per key
block, dS_j = Σ_{i : j ∉ sel(i)} G_i (and dz_j). Gathering the selected blocks' states inside the
attention loops costs a head_dim² load per selected pair (8–16 KB, as much as the K/V or Q/dO tiles)
and an accumulator that lives across the loop; here both sums are one batched GEMM with the 0/1
complement map C [Mq, Nk] (C[i, j] = 1 when j is not in query block i's look-up table):
S_q = C·S_blk and dS_k = Cᵀ·G. At VGGT's 64-frame global attention (16 heads, 687 × 1,374 blocks,
head_dim 64) each is 2·16·687·1,374·4,096 ≈ 0.12 TFLOP on the tensor cores, against ≈ 12 and 25 GB of
per-pair gathers in the kernels. The states are summed over the complement directly (no totals minus
the selected blocks, so no cancellation); on the GPU, per query block, the float32 denominators are
the total minus the gathered selected blocks (``sla_complement_map``), as the stored-state forward did.
Inference uses the per-query-block sums too (``SLAConfig.complement_states="summed"``).

The map is built in bounded tiles (rows of it for a few heads at a time), so the extra memory is
``workspace_bytes`` plus the outputs, whatever the sequence length; the GEMMs themselves grow as
Mq·Nk (≈ 30 TFLOP, tens of ms, at 1,000 frames, where the sparse backward takes seconds).
"""

from __future__ import annotations

import torch

from . import sla_complement_map as _map

# Bytes of complement-map tiles (a dtype copy and a float32 copy) held at once.
WORKSPACE_BYTES = 256 << 20


def _complement_tile(lut: torch.Tensor, lo: int, hi: int, dtype: torch.dtype) -> torch.Tensor:
    """C[:, :, lo:hi] for LUT rows ``lut`` [G, M, T] (key-block indices): 1 where not selected."""
    G, M, _ = lut.shape
    idx = lut.long() - lo
    idx = torch.where((idx >= 0) & (idx < hi - lo), idx, hi - lo)  # out of the tile → a spare column
    tile = torch.ones(G, M, hi - lo + 1, device=lut.device, dtype=dtype)
    tile.scatter_(2, idx, 0.0)
    return tile[:, :, : hi - lo]


def _bmm_aligned_k(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> None:
    """out = a·b for a reduction length K that is not a multiple of 8: the first K − K mod 8 terms in
    one GEMM, the rest added by a second, tiny one. cuBLAS runs a 16-bit GEMM whose K is not a multiple
    of 8 on an sm75/sm80 kernel at ~110-250 TFLOP/s on the H100 (0.28 ms at 32 VGGT frames, where the
    aligned GEMM needs ~0.06 ms); the split costs one more bf16 rounding of the result."""
    k = a.shape[-1]
    main = k - k % 8
    if a.dtype == torch.float32 or main == 0 or main == k:
        torch.bmm(a, b, out=out)
        return
    torch.bmm(a[..., :main], b[:, :main], out=out)
    out.baddbmm_(a[..., main:], b[:, main:])


def _row_chunk(rows: int, cols: int, groups: int, bytes_per_entry: int, budget: int) -> tuple[int, int]:
    """(groups per tile, rows per tile) so a tile of the map stays within ``budget`` bytes."""
    per_group = rows * cols * bytes_per_entry
    if per_group <= budget:
        return max(1, min(groups, budget // max(per_group, 1))), rows
    return 1, max(1, budget // (cols * bytes_per_entry))


def complement_sums(
    lut: torch.Tensor,
    states: torch.Tensor,
    vectors: torch.Tensor,
    n_kblocks: int,
    *,
    transpose: bool,
    workspace_bytes: int = WORKSPACE_BYTES,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums of block states over the complement domain.

    ``lut`` [B, H, Mq, T]: selected key blocks per query block. ``transpose=False``: ``states``
    [B, H, Nk, D, D] and ``vectors`` [B, H, Nk, D] are per key block, and the result is per query
    block, Σ over the key blocks it did not select ([B, H, Mq, D, D], [B, H, Mq, D]). ``transpose=True``:
    per query block in, per key block out (Σ over the query blocks that did not select it).

    The states are summed by a GEMM in their own dtype (float32 accumulation, one rounding of the
    result: bf16 states give a bf16 sum, the precision the attention kernels use them at); the vectors
    (denominators) in float32.
    """
    B, H, Mq, T = lut.shape
    D = states.shape[-1]
    # Per key block in, the states may carry zero padding rows past n_kblocks (sla_prepare.padded_kblocks).
    n_in = Mq if transpose else states.shape[2]
    n_out = n_kblocks if transpose else Mq
    BH = B * H
    lut3 = lut.reshape(BH, Mq, T)
    s_in = states.reshape(BH, n_in, D * D)
    z_in = vectors.reshape(BH, n_in, D).float()
    s_out = states.new_empty(BH, n_out, D * D)
    z_out = torch.empty(BH, n_out, D, device=states.device, dtype=torch.float32)
    # Per query block (not transposed) on the GPU: the map kernel writes the contiguous map in the
    # states' dtype and the vector sums in float32 (sla_complement_map); elsewhere PyTorch builds it.
    use_kernel = not transpose and _map.runs_here(lut)
    if use_kernel:
        entry_bytes = states.element_size()
        z_tot = z_in.sum(1)
    else:
        entry_bytes = 4 + (states.element_size() if states.dtype != torch.float32 else 0)
    # Tiles over the output blocks: whole map rows (query blocks) or, transposed, key-block columns.
    g_step, o_step = _row_chunk(n_out, n_in, BH, entry_bytes, workspace_bytes)
    for g0 in range(0, BH, g_step):
        g1 = min(BH, g0 + g_step)
        for o0 in range(0, n_out, o_step):
            o1 = min(n_out, o0 + o_step)
            if use_kernel:
                c, z_part = _map.complement_map(
                    lut3[g0:g1],
                    n_kblocks,
                    states.dtype,
                    z_in[g0:g1],
                    z_tot[g0:g1],
                    rows=(o0, o1),
                    n_cols=n_in,
                )
                _bmm_aligned_k(c, s_in[g0:g1], s_out[g0:g1, o0:o1])
                z_out[g0:g1, o0:o1] = z_part
                continue
            if transpose:  # C[:, :, o0:o1]ᵀ: [G, Nk-tile, Mq]
                c32 = _complement_tile(lut3[g0:g1], o0, o1, torch.float32).transpose(1, 2)
            else:  # C[:, o0:o1, :]: [G, Mq-tile, Nk]
                c32 = _complement_tile(lut3[g0:g1, o0:o1], 0, n_kblocks, torch.float32)
            c = c32 if states.dtype == torch.float32 else c32.to(states.dtype)
            n_red = c.shape[-1]  # the padding rows of per-key-block states (zero) are left out
            torch.bmm(c, s_in[g0:g1, :n_red], out=s_out[g0:g1, o0:o1])
            torch.bmm(c32, z_in[g0:g1, :n_red], out=z_out[g0:g1, o0:o1])
    return s_out.view(B, H, n_out, D, D), z_out.view(B, H, n_out, D)


def complement_sums_reference(lut, states, vectors, n_kblocks: int, *, transpose: bool):
    """:func:`complement_sums` with a dense float64 map (tests)."""
    B, H, Mq, _ = lut.shape
    sel = torch.zeros(B, H, Mq, n_kblocks, dtype=torch.float64, device=lut.device)
    sel.scatter_(3, lut.long(), 1.0)
    c = 1.0 - sel
    if transpose:
        c = c.transpose(2, 3)
    s = torch.einsum("bhoi,bhixy->bhoxy", c, states.double())
    z = torch.einsum("bhoi,bhix->bhox", c, vectors.double())
    return s, z
