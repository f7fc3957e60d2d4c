"""The row top-k kernel of the block selection against its PyTorch reference (stable sort): random
rows, exact ties (ties go to the lower column), -0.0 against +0.0, forced columns, k = 1 and k = C,
column counts that are not powers of two, row counts that are not a multiple of a program's rows, one
column. CPU runs it under the Triton interpreter; the GPU test runs it compiled."""

from __future__ import annotations

import sla_triton_env

sla_triton_env.set_interpret_env()  # before anything imports triton (collection time)

import pytest  # noqa: E402
import torch  # noqa: E402

K = sla_triton_env.load_sla_kernels()
topk_rows = K["sla_topk_rows"]
DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _check(scores: torch.Tensor, k: int, n_forced: int = 0, dtype=torch.int16):
    out = torch.full((scores.shape[0], k), -7, dtype=dtype, device=scores.device)
    topk_rows.topk_rows(scores, k, out, n_forced)
    ref = topk_rows.topk_rows_reference(scores.cpu(), k, n_forced)
    assert torch.equal(out.cpu().long(), ref)


@pytest.mark.parametrize(
    ("R", "C", "k"), [(1, 1, 1), (5, 7, 3), (37, 100, 10), (16, 64, 64), (33, 687, 68), (3, 2748, 274)]
)
def test_random_rows(R, C, k):
    g = torch.Generator().manual_seed(R * 1000 + C)
    _check(torch.randn(R, C, generator=g, dtype=torch.float64).to(DEV), k)


@pytest.mark.parametrize("k", [1, 5, 13, 40])
def test_exact_ties_go_to_the_lower_column(k):
    g = torch.Generator().manual_seed(k)
    s = torch.randint(-3, 4, (19, 41), generator=g).double()  # 7 distinct values: many ties at the k-th
    _check(s.to(DEV), k)


def test_signed_zeros_tie_and_infinities_order():
    s = torch.tensor(
        [[0.0, -0.0, -0.0, 0.0, 1.0, -1.0], [-0.0, -1.0, 0.0, float("-inf"), float("inf"), 0.0]],
        dtype=torch.float64,
    )
    for k in range(1, 7):
        _check(s.to(DEV), k)


def test_float64_rounds_once_to_float32():
    """Scores that differ only beyond float32 precision tie after the rounding, as in the reference."""
    base = torch.full((4, 9), 1.0, dtype=torch.float64)
    base += torch.arange(9, dtype=torch.float64) * 1e-12  # all round to 1.0f
    base[:, 6] = 2.0
    _check(base.to(DEV), 3)


@pytest.mark.parametrize("n_forced", [1, 3])
def test_forced_columns_always_kept(n_forced):
    g = torch.Generator().manual_seed(n_forced)
    s = torch.randn(11, 50, generator=g, dtype=torch.float64) + 100.0
    _check(s.to(DEV), 6, n_forced)
    out = torch.empty(11, 6, dtype=torch.int32, device=DEV)
    topk_rows.topk_rows(s.to(DEV), 6, out, n_forced)
    assert (out[:, :n_forced].cpu() == torch.arange(n_forced)).all()


def test_float32_input_and_int32_output():
    g = torch.Generator().manual_seed(3)
    _check(torch.randn(9, 130, generator=g).to(DEV), 12, dtype=torch.int32)


def test_refuses_what_it_cannot_do():
    s = torch.zeros(2, 5, dtype=torch.float64, device=DEV)
    with pytest.raises(ValueError, match="topk"):
        topk_rows.topk_rows(s, 6, torch.empty(2, 6, dtype=torch.int32, device=DEV))
    with pytest.raises(ValueError, match="registers"):
        wide = torch.zeros(1, topk_rows.MAX_COLS + 1, dtype=torch.float64, device=DEV)
        topk_rows.topk_rows(wide, 1, torch.empty(1, 1, dtype=torch.int32, device=DEV))


@pytest.mark.gpu
def test_gpu_vggt_shape():
    """32 VGGT frames, 16 heads: 687 query × 687 key blocks, 68 kept, compiled kernel."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (run benchmarks/gpu_check.sh on the device)")
    g = torch.Generator().manual_seed(0)
    _check(torch.randn(16 * 687, 687, generator=g, dtype=torch.float64).cuda(), 68, n_forced=1)


@pytest.mark.parametrize("dist", ["cauchy", "exponential", "bimodal", "constant", "few_values", "huge_range"])
def test_awkward_rows(dist):
    """Rows far from Gaussian (heavy tails, two clusters, one value, a few values, magnitudes from 1e-30
    to 1e30) give the exact table, with and without forced columns."""
    g = torch.Generator().manual_seed(7)
    R, C, k = 6, 1374, 137
    x = torch.randn(R, C, generator=g, dtype=torch.float64)
    if dist == "cauchy":
        s = torch.tan(torch.pi * (torch.rand(R, C, generator=g, dtype=torch.float64) - 0.5))
    elif dist == "exponential":
        s = -torch.log(torch.rand(R, C, generator=g, dtype=torch.float64))
    elif dist == "bimodal":
        s = x + 1e4 * (torch.rand(R, C, generator=g) < 0.05).double()
    elif dist == "constant":
        s = torch.full((R, C), 3.0, dtype=torch.float64)
    elif dist == "few_values":
        s = torch.randint(0, 3, (R, C), generator=g).double()
    else:
        s = torch.sign(x) * torch.pow(10.0, 60 * torch.rand(R, C, generator=g, dtype=torch.float64) - 30)
    _check(s.to(DEV), k)
    _check(s.to(DEV), k, n_forced=5)
