"""SLA backward: the complement-domain sums (sla_linear_domain) and the dQ / dK/dV kernels against the
float64 reference, on CPU under the Triton interpreter (fp32: bf16 dots are broken in the interpreter),
including the query-row split of the dK/dV kernel that the autotuner picks on the GPU."""

from __future__ import annotations

import sla_triton_env

sla_triton_env.set_interpret_env()  # before anything imports triton (collection time)

import functools  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from lite3r.kernels.sla_linear_domain import (  # noqa: E402
    complement_sums,
    complement_sums_augmented,
    complement_sums_reference,
)
from lite3r.kernels.sla_reference import sla_attention_reference, sla_geometry  # noqa: E402

K = sla_triton_env.load_sla_kernels()
ops, dkdv, common = K["sla_ops"], K["sla_backward_dkdv"], K["sla_triton_common"]


def _lut(B, H, Mq, Nk, T, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randperm(Nk, generator=g)[:T].sort().values for _ in range(B * H * Mq)]
    return torch.stack(rows).view(B, H, Mq, T).to(torch.int16)


@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("workspace", [1 << 30, 300, 1])  # whole map, a few rows per tile, one row
@pytest.mark.parametrize("padded", [False, True])  # zero input rows up to a multiple of 8, or none
def test_complement_sums_match_the_dense_map(transpose, workspace, padded):
    B, H, Mq, Nk, T, D = 2, 3, 7, 11, 4, 8
    lut = _lut(B, H, Mq, Nk, T)
    n_in = Mq if transpose else Nk
    rows = -(-n_in // 8) * 8 if padded else n_in
    g = torch.Generator().manual_seed(1)
    s = torch.zeros(B, H, rows, D, D)
    z = torch.zeros(B, H, rows, D)
    s[:, :, :n_in] = torch.randn(B, H, n_in, D, D, generator=g)
    z[:, :, :n_in] = torch.randn(B, H, n_in, D, generator=g)
    got_s, got_z = complement_sums(lut, s, z, Nk, transpose=transpose, workspace_bytes=workspace)
    ref_s, ref_z = complement_sums_reference(lut, s, z, Nk, transpose=transpose)
    assert got_s.shape == ref_s.shape and got_z.dtype == torch.float32
    torch.testing.assert_close(got_s.double(), ref_s, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_z.double(), ref_z, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("workspace", [1 << 30, 300, 1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("map_kernel", [True, False])  # the map kernel, or PyTorch's map (no Triton)
def test_augmented_complement_sums_match_the_dense_map(workspace, dtype, map_kernel, monkeypatch):
    """[S_j | z_j] rows summed over each query block's complement by one GEMM: the states and the
    denominators as the reference sums them (bf16: one rounding of inputs and result, relative)."""
    if not map_kernel:
        monkeypatch.setattr(sys.modules["lite3r.kernels.sla_complement_map"], "runs_here", lambda x: False)
    B, H, Mq, Nk, T, D = 2, 3, 7, 11, 4, 8
    lut = _lut(B, H, Mq, Nk, T)
    g = torch.Generator().manual_seed(2)
    aug = torch.zeros(B, H, 16, D * D + D, dtype=dtype)
    aug[:, :, :Nk, : D * D] = torch.randn(B, H, Nk, D * D, generator=g).to(dtype)
    aug[:, :, :Nk, D * D :] = (torch.rand(B, H, Nk, D, generator=g) * 50).to(dtype)  # Σφ(k) > 0
    got = complement_sums_augmented(lut, aug, Nk, workspace_bytes=workspace)
    s = aug[..., : D * D].float().reshape(B, H, 16, D, D)
    ref_s, ref_z = complement_sums_reference(lut, s, aug[..., D * D :].float(), Nk, transpose=False)
    assert got.shape == (B, H, Mq, D * D + D) and got.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(got[..., : D * D].double().view_as(ref_s), ref_s, rtol=tol, atol=tol)
    torch.testing.assert_close(got[..., D * D :].double(), ref_z, rtol=tol, atol=0)


def test_transposed_complement_sums_in_half_precision_with_a_given_inverse_table():
    """fp16 G (the backward's dtype for 16-bit inputs, fp16 here: bf16 dots are broken in the
    interpreter) padded to 8 query blocks, a batch > 1, the caller's inverse look-up table."""
    B, H, Mq, Nk, T, D = 2, 2, 13, 20, 5, 16
    lut = _lut(B, H, Mq, Nk, T, seed=5)
    g = torch.Generator().manual_seed(6)
    s = torch.zeros(B, H, 16, D, D, dtype=torch.float16)
    z = torch.zeros(B, H, 16, D)
    s[:, :, :Mq] = torch.randn(B, H, Mq, D, D, generator=g).half()
    z[:, :, :Mq] = torch.randn(B, H, Mq, D, generator=g)
    inverse = dkdv.inverse_lut(lut, Nk)
    got_s, got_z = complement_sums(lut, s, z, Nk, transpose=True, inverse=inverse, workspace_bytes=4000)
    ref_s, ref_z = complement_sums_reference(lut, s, z, Nk, transpose=True)
    assert got_s.dtype == torch.float16 and got_s.shape == (B, H, Nk, D, D)
    torch.testing.assert_close(got_s.double(), ref_s, rtol=2e-3, atol=2e-3)  # one fp16 rounding
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


class _TorchWithGarbageEmpty:
    """``torch`` for a kernel launcher, with ``empty`` returning NaN-filled memory: outputs a kernel
    leaves unwritten show up."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def empty(*size, **kw):
        t = torch.empty(*size, **kw)
        return t.fill_(float("nan")) if t.is_floating_point() else t


@pytest.mark.parametrize("N, block_q", [(150, 64), (100, 128)])  # 3 query blocks (5 padding rows), 1 (7)
def test_dq_kernel_writes_zero_padding_rows_of_the_query_block_grads(N, block_q, monkeypatch):
    """The complement's per-query-block G / dz are padded to a multiple of 8 rows, the transposed sums'
    GEMM reduction length; the dQ kernel writes those rows as zeros (a NaN there would reach every
    key block's dS through 0·NaN)."""
    monkeypatch.setattr(K["sla_backward_dq"], "torch", _TorchWithGarbageEmpty())
    D = 16
    q, k, v = _qkv(1, 2, N, D, seed=7)
    w = (torch.randn(D, D, generator=torch.Generator().manual_seed(3)) * 0.3).requires_grad_()
    geom = sla_geometry(N, block_q=block_q, block_k=16, keep_ratio=0.3, top_k_blocks=None)
    kw = dict(feature="elu", linear="complement", eps=1e-6, scale=D**-0.5)
    o = ops.sla_attention(q, k, v, w, geom, **kw)
    grad_out = torch.randn(o.shape, generator=torch.Generator().manual_seed(4))
    o.backward(grad_out)
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v, w)]
    sla_attention_reference(*leaves, geom, **kw).backward(grad_out.double())
    for name, a, r in zip("qkvw", (q, k, v, w), leaves):
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


# ------------------------------------------------------------------------------------------- GPU
VGGT_FRAME = 1374  # tokens per frame at 518 px (1 camera + 4 registers + 37·37 patches)


def _rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.gpu
@pytest.mark.parametrize("frames", [3, 64])  # 33 / 687 query blocks: odd, padded to 40 / 688
def test_gpu_backward_with_aligned_transposed_sums_matches_the_dense_map(frames):
    """VGGT global attention (16 heads × 64, 10 % kept, bf16): the backward op (G padded to a multiple
    of 8 query blocks, transposed map from the inverse LUT, one aligned GEMM) against the same kernels
    fed the per-key-block sums of a dense float64 map (what the PyTorch-built map computed before)."""
    H, D = 16, 64
    N = frames * VGGT_FRAME
    geom = sla_geometry(
        N, block_q=128, block_k=64, keep_ratio=0.1, top_k_blocks=None, special_tokens_per_frame=5,
        frame_len=VGGT_FRAME,
    )  # fmt: skip
    g = ops.geom_to_list(geom)
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(1, N, 3, H, D, device="cuda", generator=gen).to(torch.bfloat16)
    q, k, v = x.permute(2, 0, 3, 1, 4).unbind(0)
    eps, scale = 1e-6, D**-0.5
    args = ("elu", "complement", eps, scale)
    with torch.no_grad():
        pq, pk, km, sb, zb, st, zt, *_ = ops.sla_prepare_op(q, k, v, g, "elu", "complement", True)
        lut = ops.sla_block_select_op(pq, pk, km, g)
        o_s, o_l, lse = ops.sla_forward_op(q, k, v, lut, sb, zb, st, zt, None, g, *args, False)
        do = torch.randn(o_s.shape, device="cuda", generator=gen).to(o_s.dtype)
        do_l = torch.randn(o_l.shape, device="cuda", generator=gen).to(o_l.dtype)
        dq, dk, dv = ops.sla_backward_op(q, k, v, o_s, o_l, lse, do, do_l, lut, sb, zb, st, zt, g, *args)

        # The same kernels around the dense-map sums.
        Mq = geom.n_qblocks
        s_q, z_q = complement_sums(lut, sb, zb, geom.n_kblocks, transpose=False)
        ref_dq, ref_dk, ref_dv = (torch.empty_like(o_s) for _ in range(3))
        delta, g_blk, dz_blk = K["sla_backward_dq"].sla_backward_dq(
            q, k, v, o_s, o_l, do, do_l, lse, lut, s_q, z_q, geom,
            feature="elu", linear_code=2, eps=eps, scale=scale, dq=ref_dq, g_dtype=sb.dtype,
        )  # fmt: skip
        assert (
            g_blk.shape[2] == -(-Mq // 8) * 8 and not g_blk[:, :, Mq:].any() and not dz_blk[:, :, Mq:].any()
        )
        ds_ref, dz_ref = complement_sums_reference(lut, g_blk, dz_blk, geom.n_kblocks, transpose=True)
        ds_got, dz_got = complement_sums(lut, g_blk, dz_blk, geom.n_kblocks, transpose=True)
        assert _rel_err(ds_got, ds_ref) < 1e-2 and _rel_err(dz_got, dz_ref) < 1e-4
        dkdv.sla_backward_dkdv(
            q, k, v, do, lse, delta, lut, ds_ref.to(g_blk.dtype), dz_ref.float(), geom,
            feature="elu", linear_code=2, scale=scale, dk=ref_dk, dv=ref_dv,
        )  # fmt: skip
    assert torch.equal(dq, ref_dq)  # the query side does not use the transposed sums
    assert _rel_err(dk, ref_dk) < 1e-2 and _rel_err(dv, ref_dv) < 1e-2
