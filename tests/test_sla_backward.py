"""SLA backward: the complement-domain sums (sla_linear_domain) and the dQ / dK/dV kernels against the
float64 reference, on CPU under the Triton interpreter (fp32: bf16 dots are broken in the interpreter),
including the query-row split of the dK/dV kernel that the autotuner picks on the GPU."""

from __future__ import annotations

import sla_triton_env

sla_triton_env.set_interpret_env()  # before anything imports triton (collection time)

import functools  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from lite3r.kernels.sla_linear_domain import complement_sums, complement_sums_reference  # noqa: E402
from lite3r.kernels.sla_reference import sla_attention_reference, sla_geometry  # noqa: E402

K = sla_triton_env.load_sla_kernels()
ops, dkdv, common = K["sla_ops"], K["sla_backward_dkdv"], K["sla_triton_common"]


def _lut(B, H, Mq, Nk, T, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randperm(Nk, generator=g)[:T].sort().values for _ in range(B * H * Mq)]
    return torch.stack(rows).view(B, H, Mq, T).to(torch.int16)


@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("workspace", [1 << 30, 300, 1])  # whole map, a few rows per tile, one row
def test_complement_sums_match_the_dense_map(transpose, workspace):
    B, H, Mq, Nk, T, D = 2, 3, 7, 11, 4, 8
    lut = _lut(B, H, Mq, Nk, T)
    n_in = Mq if transpose else Nk
    g = torch.Generator().manual_seed(1)
    s = torch.randn(B, H, n_in, D, D, generator=g)
    z = torch.randn(B, H, n_in, D, generator=g)
    got_s, got_z = complement_sums(lut, s, z, Nk, transpose=transpose, workspace_bytes=workspace)
    ref_s, ref_z = complement_sums_reference(lut, s, z, Nk, transpose=transpose)
    assert got_s.shape == ref_s.shape and got_z.dtype == torch.float32
    torch.testing.assert_close(got_s.double(), ref_s, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_z.double(), ref_z, rtol=1e-5, atol=1e-5)


def test_complement_sums_keep_the_state_dtype_and_sum_vectors_in_float32():
    lut = _lut(1, 2, 5, 9, 3)
    s = torch.randn(1, 2, 9, 4, 4).to(torch.bfloat16)
    z = torch.randn(1, 2, 9, 4) * 1e3
    got_s, got_z = complement_sums(lut, s, z, 9, transpose=False)
    ref_s, ref_z = complement_sums_reference(lut, s, z, 9, transpose=False)
    assert got_s.dtype == torch.bfloat16 and got_z.dtype == torch.float32
    torch.testing.assert_close(got_s.double(), ref_s, rtol=1e-2, atol=1e-2)  # one bf16 rounding
    torch.testing.assert_close(got_z.double(), ref_z, rtol=1e-6, atol=1e-3)


def _qkv(B, H, N, D, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, N, 3, H, D, generator=g)
    return [t.detach().clone().requires_grad_() for t in x.permute(2, 0, 3, 1, 4).unbind(0)]


# (B, H, N, D, block_q, block_k, special, frame_len, keep, feature, linear, m_split)
CASES = [
    (1, 2, 150, 16, 64, 16, 2, 75, 0.3, "elu", "complement", 2),  # partial blocks, special tokens
    (2, 1, 130, 16, 64, 32, 0, None, 0.4, "softmax", "all", 2),  # batch > 1, partial query block
    (1, 3, 100, 16, 128, 16, 0, None, 0.3, "elu", "complement", 4),  # several heads, one query block
    (1, 1, 40, 16, 64, 64, 0, None, 0.5, "elu", "all", 2),  # a single key block
    (1, 2, 140, 64, 64, 32, 1, 70, 0.3, "elu", "complement", 2),  # head_dim 64
    (1, 1, 100, 128, 64, 32, 0, None, 0.3, "softmax", "all", 1),  # head_dim 128
    (1, 2, 96, 16, 32, 16, 0, None, 0.3, "elu", "none", 1),  # sparse only
]


@pytest.mark.parametrize("case", CASES)
def test_backward_kernels_match_reference(case, monkeypatch):
    B, H, N, D, bq, bk, s, L, keep, feat, lin, m_split = case
    q, k, v = _qkv(B, H, N, D, seed=N + D)
    w = (torch.randn(D, D, generator=torch.Generator().manual_seed(3)) * 0.3).requires_grad_()
    geom = sla_geometry(
        N, block_q=bq, block_k=bk, keep_ratio=keep, top_k_blocks=None, special_tokens_per_frame=s, frame_len=L
    )
    monkeypatch.setattr(dkdv, "sla_backward_dkdv", functools.partial(dkdv.sla_backward_dkdv, m_split=m_split))
    kw = dict(feature=feat, linear=lin, eps=1e-6, scale=D**-0.5)
    o = ops.sla_attention(q, k, v, w, geom, **kw)
    grad_out = torch.randn(o.shape, generator=torch.Generator().manual_seed(4))
    o.backward(grad_out)
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v, w)]
    ref = sla_attention_reference(*leaves, geom, **kw)
    ref.backward(grad_out.double())
    for name, a, r in zip("qkvw", (q, k, v, w), leaves):
        if name == "w" and lin == "none":
            assert a.grad is None
            continue
        torch.testing.assert_close(a.grad.double(), r.grad, rtol=1e-4, atol=1e-5, msg=f"d{name}")


def test_m_split_is_autotuned_not_passed_on_cuda(monkeypatch):
    """On CUDA the row split comes from the autotuner's configs; passing it explicitly is refused."""
    monkeypatch.setattr(common, "use_autotuner", lambda x: True)
    g = sla_geometry(64, block_q=32, block_k=16, keep_ratio=0.5, top_k_blocks=None)
    x = torch.zeros(1, 1, 64, 16)
    with pytest.raises(ValueError, match="autotuned"):
        dkdv.sla_backward_dkdv(
            x, x, x, x, None, None, torch.zeros(1, 1, 2, 2, dtype=torch.int16), None, None, g,
            feature="elu", linear_code=0, scale=0.25, dk=x, dv=x, m_split=2,
        )  # fmt: skip


def test_backward_configs_keep_uncapped_ones_and_prune_row_splits_to_the_block():
    prune = common.prune_for("backward_dkdv")
    cfgs = common.all_configs("backward_dkdv")

    def keys(block_m, head_dim=64):
        return sorted(
            (c.num_warps, c.num_stages, c.maxnreg or 0, c.kwargs["M_SPLIT"])
            for c in prune(cfgs, {}, HEAD_DIM=head_dim, LINEAR=2, BLOCK_M=block_m)
        )

    assert keys(128) == [(4, 3, 0, 4), (8, 2, 0, 1), (8, 3, 0, 1), (8, 3, 128, 4), (8, 3, 168, 2)]
    assert keys(64) == [(8, 2, 0, 1), (8, 3, 0, 1), (8, 3, 168, 2)]  # slices of ≥ 32 rows only
    assert keys(32) == [(8, 2, 0, 1), (8, 3, 0, 1)]
    dq = common.prune_for("backward_dq")(common.all_configs("backward_dq"), {}, HEAD_DIM=64, LINEAR=2)
    assert sorted((c.num_warps, c.num_stages, c.maxnreg or 0) for c in dq) == [
        (8, 2, 0), (8, 3, 0), (8, 3, 128), (8, 3, 168)
    ]  # fmt: skip
