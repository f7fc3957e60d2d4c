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
the total minus the gathered selected blocks (``sla_complement_map``), as the stored-state forward did,
and per key block the total minus the query blocks of the inverse look-up table. Both maps come from
the map kernel, contiguous and in the GEMM's dtype, with rows padded to a multiple of 8 columns, and
the inputs come with as many rows (zero past the real blocks: ``sla_prepare.padded_kblocks`` for the
per-key-block states, the dQ kernel for the per-query-block G): cuBLAS runs a 16-bit GEMM whose
reduction length is not a multiple of 8 on sm75/sm80 kernels, ~4× slower on the H100 (0.29 vs 0.06 ms
at 32 VGGT frames; Mq = 687 at 64 frames). Padding at the producers costs a few zero rows written by
kernels that run anyway; ``_bmm_aligned_k`` (kept for unpadded inputs) costs a second GEMM launch and
one more rounding of the result.
Inference uses the per-query-block sums too (``SLAConfig.complement_states="summed"``).

The map is built in bounded tiles (rows of it for a few heads at a time), so the extra memory is
``workspace_bytes`` plus the outputs, whatever the sequence length; the GEMMs themselves grow as
Mq·Nk (≈ 30 TFLOP, tens of ms, at 1,000 frames, where the sparse backward takes seconds).
"""

from __future__ import annotations

import torch

from . import sla_backward_dkdv as _dkdv
from . import sla_complement_map as _map
from . import sla_sum_rows as _sum_rows

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
    vectors: torch.Tensor | None,
    n_kblocks: int,
    *,
    transpose: bool,
    inverse: tuple[torch.Tensor, torch.Tensor] | None = None,
    workspace_bytes: int = WORKSPACE_BYTES,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums of block states over the complement domain.

    ``lut`` [B, H, Mq, T]: selected key blocks per query block. ``transpose=False``: ``states``
    [B, H, ≥Nk, D, D] and ``vectors`` [B, H, ≥Nk, D] are per key block, and the result is per query
    block, Σ over the key blocks it did not select ([B, H, Mq, D, D], [B, H, Mq, D]). ``transpose=True``:
    per query block in ([B, H, ≥Mq, …]), per key block out (Σ over the query blocks that did not select
    it). Rows past Nk (Mq) must be zero: producers pad them to a multiple of 8 (``sla_prepare``'s
    per-key-block states, the dQ kernel's per-query-block G), the GEMM's reduction length.
    ``inverse``: ``sla_backward_dkdv.inverse_lut(lut, n_kblocks)`` if the caller has it (transposed,
    on the GPU; else built here). ``vectors`` None: ``states`` are flat rows [B, H, ≥n, W] (the
    augmented [S_j | z_j] rows: :func:`complement_sums_augmented`), summed as they are, and the second
    result is None.

    The states are summed by a GEMM in their own dtype (float32 accumulation, one rounding of the
    result: bf16 states give a bf16 sum, the precision the attention kernels use them at); the vectors
    (denominators) in float32.
    """
    B, H, Mq, T = lut.shape
    D = states.shape[-1]
    with_z = vectors is not None
    row_shape = (D, D) if with_z else (D,)  # a D×D state, or a flat row of D entries
    width = D * D if with_z else D
    n_in = states.shape[2]  # the input blocks, with any zero padding rows
    n_valid = Mq if transpose else n_kblocks  # the map's real columns
    n_out = n_kblocks if transpose else Mq
    if n_in < n_valid or (with_z and vectors.shape[2] != n_in):
        vector_rows = f" / {vectors.shape[2]} vector" if with_z else ""
        raise ValueError(f"{n_in} state{vector_rows} rows for {n_valid} blocks")
    BH = B * H
    lut3 = lut.reshape(BH, Mq, T)
    s_in = states.reshape(BH, n_in, width)
    s_out = states.new_empty(BH, n_out, width)
    if with_z:
        z_in = vectors.reshape(BH, n_in, D).float()
        z_out = torch.empty(BH, n_out, D, device=states.device, dtype=torch.float32)
    # On the GPU the map kernel writes the contiguous map (or its transpose, from the inverse look-up
    # table) in the states' dtype and the vector sums in float32 (sla_complement_map); elsewhere
    # PyTorch builds it.
    use_kernel = _map.runs_here(lut)
    if use_kernel:
        # The map's rows as long as the padded inputs (a multiple of 8: one aligned GEMM), or, for
        # unpadded inputs, padded themselves and read through a view (two GEMMs: _bmm_aligned_k).
        n_cols = n_in if n_in % 8 == 0 else _map.padded_columns(n_valid)
        n_red = min(n_in, n_cols)
        entry_bytes = states.element_size()
        if with_z:
            z_tot = _sum_rows.sum_rows(z_in[:, :n_valid])  # torch's sum over this middle axis: ~8× slower
        if transpose and inverse is None:
            inverse = _dkdv.inverse_lut(lut, n_kblocks)
    else:
        n_cols = n_red = n_valid  # the padding rows of the inputs (zero) are left out
        entry_bytes = 4 + (states.element_size() if states.dtype != torch.float32 else 0)
    # Tiles over the output blocks: whole map rows (query blocks) or, transposed, key-block columns.
    g_step, o_step = _row_chunk(n_out, n_cols, BH, entry_bytes, workspace_bytes)
    for g0 in range(0, BH, g_step):
        g1 = min(BH, g0 + g_step)
        for o0 in range(0, n_out, o_step):
            o1 = min(n_out, o0 + o_step)
            if use_kernel:
                z_args = (z_in[g0:g1], z_tot[g0:g1]) if with_z else (None, None)
                if transpose:
                    qlist, offsets = inverse
                    c, z_part = _map.complement_map_transposed(
                        qlist, offsets[g0 * n_kblocks : g1 * n_kblocks + 1], Mq, n_kblocks, states.dtype,
                        *z_args, rows=(o0, o1), n_cols=n_cols,
                    )  # fmt: skip
                    if with_z:
                        z_out[g0:g1, o0:o1] = z_part
                else:
                    # the map writes its vector sums straight into the output tile (contiguous: a
                    # tile is whole groups or rows of one group, _row_chunk)
                    c, _ = _map.complement_map(
                        lut3[g0:g1], n_kblocks, states.dtype, *z_args, rows=(o0, o1), n_cols=n_cols,
                        z_out=z_out[g0:g1, o0:o1] if with_z else None,
                    )  # fmt: skip
                _bmm_aligned_k(c[..., :n_red], s_in[g0:g1, :n_red], s_out[g0:g1, o0:o1])
                continue
            if transpose:  # C[:, :, o0:o1]ᵀ: [G, Nk-tile, Mq]
                c32 = _complement_tile(lut3[g0:g1], o0, o1, torch.float32).transpose(1, 2)
            else:  # C[:, o0:o1, :]: [G, Mq-tile, Nk]
                c32 = _complement_tile(lut3[g0:g1, o0:o1], 0, n_kblocks, torch.float32)
            c = c32 if states.dtype == torch.float32 else c32.to(states.dtype)
            torch.bmm(c, s_in[g0:g1, :n_red], out=s_out[g0:g1, o0:o1])
            if with_z:
                torch.bmm(c32, z_in[g0:g1, :n_red], out=z_out[g0:g1, o0:o1])
    return s_out.view(B, H, n_out, *row_shape), (z_out.view(B, H, n_out, D) if with_z else None)


def complement_sums_augmented(
    lut: torch.Tensor,
    states: torch.Tensor,
    n_kblocks: int,
    *,
    workspace_bytes: int = WORKSPACE_BYTES,
) -> torch.Tensor:
    """Per query block, the augmented state rows [S_j | z_j] summed over the key blocks it did not select:
    ``states`` [B, H, ≥Nk, D² + D] (``sla_prepare(..., augmented=True)``, rows past Nk zero) →
    [B, H, Mq, D² + D] in the states' dtype.

    The inference path ("summed" complement states). With the denominators z_j as D more columns of the
    state rows, one GEMM sums both (64 columns more than the D² of the states: ~1.5 % more GEMM) and the
    map kernel only writes the map; gathering each selected block's float32 z_j took longer than the
    GEMM's extra columns (benchmarks/results/sla/sla_select_tail_probe*). The price is precision: z_j and
    its sums are in the state dtype (bf16 for bf16 inputs, relative error ≤ 2⁻⁸ on a sum of positive
    terms, the precision of the summed states themselves), not float32.
    """
    if states.dim() != 4:
        raise ValueError(f"augmented states are [B, H, rows, D² + D], got {tuple(states.shape)}")
    return complement_sums(lut, states, None, n_kblocks, transpose=False, workspace_bytes=workspace_bytes)[0]


def complement_sums_reference(lut, states, vectors, n_kblocks: int, *, transpose: bool):
    """:func:`complement_sums` with a dense float64 map (tests); inputs without padding rows, or with
    them (left out)."""
    B, H, Mq, _ = lut.shape
    n_valid = Mq if transpose else n_kblocks
    states, vectors = states[:, :, :n_valid], vectors[:, :, :n_valid]
    sel = torch.zeros(B, H, Mq, n_kblocks, dtype=torch.float64, device=lut.device)
    sel.scatter_(3, lut.long(), 1.0)
    c = 1.0 - sel
    if transpose:
        c = c.transpose(2, 3)
    s = torch.einsum("bhoi,bhixy->bhoxy", c, states.double())
    z = torch.einsum("bhoi,bhix->bhox", c, vectors.double())
    return s, z
