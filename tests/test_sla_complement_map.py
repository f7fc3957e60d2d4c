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
    # without vectors: the map only
    c_only, none = cmap.complement_map(lut, Nk, dtype, rows=rows)
    assert none is None and torch.equal(c_only, c)
