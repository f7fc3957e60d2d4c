"""The complement-map kernel (sla_complement_map) against its PyTorch reference, under the Triton
interpreter on CPU: row tiles, more columns than one store step, more selected blocks than one gather
step, the map in bf16 and float32."""

from __future__ import annotations

import sla_triton_env

sla_triton_env.set_interpret_env()  # before anything imports triton (collection time)

import pytest  # noqa: E402
import torch  # noqa: E402

K = sla_triton_env.load_sla_kernels()
cmap = K["sla_complement_map"]


def _lut(G, M, Nk, T, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randperm(Nk, generator=g)[:T].sort().values for _ in range(G * M)]
    return torch.stack(rows).view(G, M, T).to(torch.int16)


@pytest.mark.parametrize(
    "G, M, Nk, T, rows, dtype",
    [
        (3, 5, 11, 4, None, torch.float32),
        (2, 6, 1100, 70, (2, 5), torch.bfloat16),  # > 1,024 columns, > 64 selected, a row tile
        (1, 1, 2, 1, None, torch.bfloat16),  # one row, one block selected of two
    ],
)
def test_complement_map_matches_reference(G, M, Nk, T, rows, dtype):
    lut = _lut(G, M, Nk, T)
    z = torch.randn(G, Nk, 16, generator=torch.Generator().manual_seed(1)).abs() * 10
    c, zq = cmap.complement_map(lut, Nk, dtype, z, z.sum(1), rows=rows)
    ref_c, ref_z = cmap.complement_map_reference(lut, Nk, dtype, z)
    r0, r1 = rows or (0, M)
    n_cols = -(-Nk // 8) * 8  # zero columns up to a multiple of 8: the GEMM's reduction length
    assert c.dtype == dtype and c.shape == (G, r1 - r0, n_cols) and c.is_contiguous()
    assert torch.equal(c, ref_c[:, r0:r1]) and not c[:, :, Nk:].any()
    assert zq.dtype == torch.float32
    torch.testing.assert_close(zq, ref_z[:, r0:r1], rtol=1e-5, atol=1e-3)
    # the vector sums written into a given tensor (the complement sums' output, no copy)
    dst = torch.full_like(zq, float("nan"))
    _, z_in_place = cmap.complement_map(lut, Nk, dtype, z, z.sum(1), rows=rows, z_out=dst)
    assert z_in_place is dst and torch.equal(dst, zq)
    with pytest.raises(ValueError, match="z_out"):
        cmap.complement_map(lut, Nk, dtype, z, z.sum(1), rows=rows, z_out=dst.double())
    # without vectors: the map only
    c_only, none = cmap.complement_map(lut, Nk, dtype, rows=rows)
    assert none is None and torch.equal(c_only, c)


@pytest.mark.parametrize(
    "B, H, M, Nk, T, rows, dtype",
    [
        (1, 3, 5, 11, 4, None, torch.float32),  # Mq = 5: three zero columns
        (2, 2, 70, 9, 3, (2, 7), torch.bfloat16),  # batch > 1, a row tile, > 64 listed query blocks
        (1, 1, 1, 2, 1, None, torch.float16),  # one query block: one column + seven zero columns
        (1, 2, 8, 5, 5, None, torch.float32),  # every key block selected: a zero map
    ],
)
def test_transposed_complement_map_matches_reference(B, H, M, Nk, T, rows, dtype):
    """Cᵀ from the inverse look-up table (the backward's per-key-block sums), against the transposed
    reference map: zero columns up to a multiple of 8 query blocks, the dz sums over each row's ones."""
    dkdv = K["sla_backward_dkdv"]
    G = B * H
    lut = _lut(G, M, Nk, T, seed=2)
    qlist, offsets = dkdv.inverse_lut(lut.view(B, H, M, T), Nk)
    z = torch.randn(G, M, 16, generator=torch.Generator().manual_seed(3))
    c, zk = cmap.complement_map_transposed(qlist, offsets, M, Nk, dtype, z, z.sum(1), rows=rows)
    ref_c, ref_z = cmap.complement_map_transposed_reference(lut, Nk, dtype, z)
    r0, r1 = rows or (0, Nk)
    n_cols = -(-M // 8) * 8
    assert c.dtype == dtype and c.shape == (G, r1 - r0, n_cols) and c.is_contiguous()
    assert torch.equal(c, ref_c[:, r0:r1]) and not c[:, :, M:].any()
    torch.testing.assert_close(zk, ref_z[:, r0:r1], rtol=1e-5, atol=1e-4)
    # a slice of the batch·heads: the offsets of groups 1.. with the whole list
    if G > 1:
        c1, _ = cmap.complement_map_transposed(qlist, offsets[Nk:], M, Nk, dtype, rows=rows)
        assert torch.equal(c1, c[1:])
