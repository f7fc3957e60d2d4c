"""The 0/1 complement map of a block selection, and the complement sums of the key-block denominators.

``sla_linear_domain.complement_sums`` turns the per-key-block linear states into per-query-block sums
over the blocks each query block did *not* select, with one batched GEMM against the map
C[i, j] = 1 when key block j is not in query block i's look-up table. Built in PyTorch (fill, scatter
into a spare column, slice, dtype copy: ~5 kernels), with N_k (odd at VGGT shapes) as the GEMM's
reduction length, the sums cost 0.67 ms at 32 VGGT frames, more than the selection: cuBLAS runs 16-bit
GEMMs whose reduction length is not a multiple of 8 on sm75/sm80 kernels, 3-5× slower on the H100
(benchmarks/probes/bmm_k_alignment.py). This kernel writes C row by row, contiguous, directly in the
GEMM's dtype, with zero columns up to a multiple of 8 (the per-block states come with as many rows,
zero past N_k: ``sla_prepare.padded_kblocks``), and, in the same pass, the denominator sums
z_i = Σ_j z_j − Σ_{j ∈ sel(i)} z_j (float32; the selected blocks' vectors are gathered, 256 bytes each).

The backward needs the transpose, Cᵀ[j, i] = 1 when query block i did not select key block j, to sum
the per-query-block state gradients per key block (dS_j = Σ_i Cᵀ[j, i]·G_i). The same kernel writes it
row by row (a row per key block) from the inverse look-up table, the CSR list of the query blocks that
selected each key block (``sla_backward_dkdv.inverse_lut``, which the dK/dV kernel walks anyway), with
zero columns up to a multiple of 8 query blocks (the dQ kernel writes as many zero rows of G:
Mq = 687 at 64 VGGT frames would otherwise be the GEMM's reduction length), and the denominator-gradient
sums dz_j = Σ_i dz_i − Σ_{i selected j} dz_i in float32.

One program per (map row, batch·head) of a tile: it writes ones over the row, synchronises its
threads, then zeros at the row's listed columns (its look-up-table row, or its inverse-table slice).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .sla_triton_common import kernel_runs_on

_BLOCK_C = 1024  # columns written per step
_BLOCK_T = 64  # look-up table entries per step


@triton.jit(
    do_not_specialize=("n_kblocks", "topk", "row0", "rows_out", "row_stride", "z_rows", "n_list_rows")
)
def _complement_map_kernel(
    LUT, LOFF, ZBLK, ZTOT, C, ZQ,
    n_kblocks, topk, row0, rows_out, row_stride, z_rows, n_list_rows,
    stride_lg, stride_lr,
    BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr, HEAD_DIM: tl.constexpr, WITH_Z: tl.constexpr,
    CSR: tl.constexpr,
):  # fmt: skip
    r = tl.program_id(0)  # row of the tile (map row row0 + r)
    g = tl.program_id(1).to(tl.int64)  # batch·head
    c_row = C + (g * rows_out + r) * row_stride
    for c0 in range(0, row_stride, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        # ones over the n_kblocks real columns, zeros over the padding columns (float32 first: the
        # Triton interpreter has no bf16 constants)
        val = tl.where(cols < n_kblocks, 1.0, 0.0).to(C.dtype.element_ty)
        tl.store(c_row + cols, val, mask=cols < row_stride)
    tl.debug_barrier()  # every thread's ones are written before any zero goes over them
    if CSR:  # the row's column list is a slice of LUT given by the offsets LOFF (inverse look-up table)
        slot = g * n_list_rows + row0 + r
        start = tl.load(LOFF + slot)
        count = (tl.load(LOFF + slot + 1) - start).to(tl.int32)
        lut_row = LUT + start
    else:  # a look-up-table row of topk entries
        count = topk
        lut_row = LUT + g * stride_lg + (row0 + r) * stride_lr
    d = tl.arange(0, HEAD_DIM)
    z_sel = tl.zeros([HEAD_DIM], dtype=tl.float32)
    for t0 in range(0, count, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        tmask = t < count
        j = tl.load(lut_row + t, mask=tmask, other=0).to(tl.int64)
        tl.store(c_row + j, tl.zeros([BLOCK_T], dtype=tl.float32).to(C.dtype.element_ty), mask=tmask)
        if WITH_Z:
            zj = tl.load(
                ZBLK + (g * z_rows + j)[:, None] * HEAD_DIM + d[None, :], mask=tmask[:, None], other=0.0
            )
            z_sel += tl.sum(zj, axis=0)
    if WITH_Z:
        z_tot = tl.load(ZTOT + g * HEAD_DIM + d)
        tl.store(ZQ + (g * rows_out + r) * HEAD_DIM + d, z_tot - z_sel)


def runs_here(x: torch.Tensor) -> bool:
    """CUDA, or CPU under the Triton interpreter."""
    return kernel_runs_on(_complement_map_kernel, x)


def padded_columns(n: int) -> int:
    """``n`` rounded up to a multiple of 8: the map's row length and the GEMM's reduction length."""
    return -(-n // 8) * 8


def _launch(
    lut, offsets, n_list_rows, n_valid, topk, G, dtype, z_blk, z_tot, rows, n_rows, n_cols, z_out=None
):
    r0, r1 = rows or (0, n_rows)
    R = r1 - r0
    # Rows padded to a multiple of 8 elements (16 bytes): the GEMM reads the map through a view whose
    # row stride the Hopper tensor-core kernels can use (an odd N_k stride made cuBLAS fall back to an
    # sm75 kernel at ~110 TFLOP/s: 0.28 ms at 32 VGGT frames).
    row_stride = n_cols if n_cols is not None else padded_columns(n_valid)
    if row_stride < n_valid:
        raise ValueError(f"n_cols {row_stride} < {n_valid} map columns")
    c = torch.empty(G, R, row_stride, device=lut.device, dtype=dtype)
    with_z = z_blk is not None
    if with_z:
        D = z_blk.shape[-1]
        z_blk, z_tot = z_blk.float().contiguous(), z_tot.float().contiguous()
        if z_out is None:
            zq = torch.empty(G, R, D, device=lut.device, dtype=torch.float32)
        elif z_out.shape != (G, R, D) or z_out.dtype != torch.float32 or not z_out.is_contiguous():
            raise ValueError(
                f"z_out must be a contiguous float32 {(G, R, D)} tensor, got {z_out.dtype} {z_out.shape}"
            )
        else:
            zq = z_out
    else:
        D = 16
        z_blk = z_tot = zq = torch.empty(0, device=lut.device, dtype=torch.float32)
    if R == 0 or G == 0:
        return c, (zq if with_z else None)
    csr = offsets is not None
    if lut.stride(-1) != 1:
        lut = lut.contiguous()
    if not csr:
        offsets = lut  # unused
    _complement_map_kernel[(R, G)](
        lut, offsets, z_blk, z_tot, c, zq,
        n_valid, topk, r0, R, row_stride, z_blk.shape[1] if with_z else 0, n_list_rows,
        0 if csr else lut.stride(0), 0 if csr else lut.stride(1),
        BLOCK_C=_BLOCK_C, BLOCK_T=_BLOCK_T, HEAD_DIM=D, WITH_Z=with_z, CSR=csr,
        **({"num_warps": 4} if lut.is_cuda else {}),
    )  # fmt: skip
    return c, (zq if with_z else None)


def complement_map(
    lut: torch.Tensor,
    n_kblocks: int,
    dtype: torch.dtype,
    z_blk: torch.Tensor | None = None,
    z_tot: torch.Tensor | None = None,
    rows: tuple[int, int] | None = None,
    n_cols: int | None = None,
    z_out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """C [G, R, n_cols] (``dtype``, contiguous; zero in the ``n_cols`` − N_k padding columns, default
    N_k rounded up to a multiple of 8) for look-up-table rows ``lut`` [G, M, T] (rows ``rows`` =
    (start, stop) of M, default all), and with ``z_blk`` [G, ≥N_k, D] / ``z_tot`` [G, D] (float32) the
    complement sums of the vectors, [G, R, D] float32 (else None), written into ``z_out`` if given."""
    G, M, T = lut.shape
    return _launch(lut, None, 0, n_kblocks, T, G, dtype, z_blk, z_tot, rows, M, n_cols, z_out)


def complement_map_transposed(
    qlist: torch.Tensor,
    offsets: torch.Tensor,
    n_qblocks: int,
    n_kblocks: int,
    dtype: torch.dtype,
    z_blk: torch.Tensor | None = None,
    z_tot: torch.Tensor | None = None,
    rows: tuple[int, int] | None = None,
    n_cols: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Cᵀ [G, R, n_cols] (``dtype``, contiguous; zero in the ``n_cols`` − Mq padding columns, default
    Mq rounded up to a multiple of 8): row j is 1 at the query blocks that did not select key block j.

    ``qlist``/``offsets``: the inverse look-up table of ``sla_backward_dkdv.inverse_lut`` for G
    batch·heads (``offsets`` [G·N_k + 1], absolute positions in ``qlist``; a slice of a longer one is
    fine); ``rows`` = (start, stop) of the N_k key blocks, default all. With ``z_blk`` [G, ≥Mq, D] /
    ``z_tot`` [G, D] (float32): the vectors summed over each row's ones, [G, R, D] float32."""
    G = (offsets.numel() - 1) // n_kblocks
    if offsets.numel() != G * n_kblocks + 1:
        raise ValueError(f"{offsets.numel()} offsets is not G·{n_kblocks} + 1")
    return _launch(qlist, offsets, n_kblocks, n_qblocks, 0, G, dtype, z_blk, z_tot, rows, n_kblocks, n_cols)


def complement_map_reference(lut, n_kblocks: int, dtype, z_blk=None, n_cols: int | None = None):
    """The same in PyTorch (tests): the map by a scatter, the sums with a float64 map."""
    G, M, _ = lut.shape
    n_cols = n_cols if n_cols is not None else padded_columns(n_kblocks)
    c = torch.zeros(G, M, n_cols, dtype=torch.float64, device=lut.device)
    c[:, :, :n_kblocks] = 1.0
    c.scatter_(2, lut.long(), 0.0)
    zq = None if z_blk is None else torch.bmm(c[:, :, :n_kblocks], z_blk[:, :n_kblocks].double()).float()
    return c.to(dtype), zq


def complement_map_transposed_reference(lut, n_kblocks: int, dtype, z_blk=None, n_cols: int | None = None):
    """:func:`complement_map_transposed` from the look-up table ``lut`` [G, Mq, T] (tests)."""
    G, M, _ = lut.shape
    n_cols = n_cols if n_cols is not None else padded_columns(M)
    c = torch.zeros(G, n_kblocks, n_cols, dtype=torch.float64, device=lut.device)
    c[:, :, :M] = complement_map_reference(lut, n_kblocks, torch.float64, n_cols=n_kblocks)[0].transpose(1, 2)
    zq = None if z_blk is None else torch.bmm(c[:, :, :M], z_blk[:, :M].double()).float()
    return c.to(dtype), zq
