"""Two small kernels of the SLA pipeline against their PyTorch references: fixed-order row sums (the
prepare pass's partial sums → k̄, S_tot, z_tot) and the selection scores (float64 dot products rounded
to float32: equal to the reference's, so the selection does not change). Row and column counts that
are not multiples of a program's tile, one row, no rows, a sub-range of query blocks, more query than
key blocks and the reverse. CPU runs them under the Triton interpreter; the GPU test runs them
compiled."""

from __future__ import annotations

import sla_triton_env

sla_triton_env.set_interpret_env()  # before anything imports triton (collection time)

import pytest  # noqa: E402
import torch  # noqa: E402

K = sla_triton_env.load_sla_kernels()
sum_rows = K["sla_sum_rows"]
scores = K["sla_select_scores"]
DEV = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize(("G", "R", "C"), [(1, 1, 64), (3, 33, 64), (2, 115, 64), (4, 70, 100), (2, 5, 4096)])
def test_row_sums_match_the_reference(G, R, C):
    g = torch.Generator().manual_seed(G * 100 + R)
    x = torch.randn(G, R, C, generator=g).to(DEV)
    got = sum_rows.sum_rows(x, 0.25)
    torch.testing.assert_close(got.cpu(), sum_rows.sum_rows_reference(x.cpu(), 0.25), rtol=1e-5, atol=1e-5)
    # fixed order: the same bits on every call
    assert torch.equal(got, sum_rows.sum_rows(x, 0.25))


def test_row_sums_of_a_strided_slice_and_of_no_rows():
    x = torch.randn(2, 40, 64).to(DEV)
    torch.testing.assert_close(
        sum_rows.sum_rows(x[:, :37]).cpu(), x[:, :37].sum(1).cpu(), rtol=1e-5, atol=1e-5
    )
    assert torch.equal(sum_rows.sum_rows(x[:, :0]).cpu(), torch.zeros(2, 64))
    with pytest.raises(ValueError, match="float32"):
        sum_rows.sum_rows(x.double())


@pytest.mark.parametrize(
    ("M", "NK", "D", "rows"),
    [(1, 2, 16, None), (11, 23, 16, None), (70, 9, 32, (3, 68)), (64, 130, 16, (64, 64))],
)
def test_select_scores_equal_the_float64_reference(M, NK, D, rows):
    g = torch.Generator().manual_seed(M + NK)
    pq = torch.randn(2, 3, M, D, generator=g).to(DEV)
    pk = torch.randn(2, 3, NK, D, generator=g).to(DEV)
    kmean = torch.randn(2, 3, D, generator=g).to(DEV)
    r0, r1 = rows or (0, M)
    got = scores.select_scores(pq, pk, kmean, rows=rows)
    ref = scores.select_scores_reference(pq[:, :, r0:r1].cpu(), pk.cpu(), kmean.cpu())
    assert got.dtype == torch.float32 and got.shape == (2, 3, r1 - r0, NK)
    assert torch.equal(got.cpu(), ref)


@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (run benchmarks/gpu_check.sh on the device)"
)
def test_at_vggt_shapes_gpu():
    """32 VGGT frames: [16, 687, 64] per-block denominators and [16, 115, 64] partial sums of k."""
    for shape in ((16, 687, 64), (16, 115, 64), (16, 115, 4096)):
        x = torch.randn(*shape, device="cuda")
        torch.testing.assert_close(sum_rows.sum_rows(x), x.double().sum(1).float(), rtol=1e-5, atol=1e-4)
    pq, pk, km = (
        torch.randn(1, 16, 344, 64, device="cuda"),
        torch.randn(1, 16, 687, 64, device="cuda"),
        torch.randn(1, 16, 64, device="cuda"),
    )
    got = scores.select_scores(pq, pk, km)
    assert torch.equal(got, scores.select_scores_reference(pq, pk, km))
    assert torch.equal(scores.select_scores(pq, pk, km, rows=(100, 300)), got[:, :, 100:300])
