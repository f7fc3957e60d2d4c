"""The fused-qk SLA inference path: qk-norm/RoPE that also pools the queries and writes k in virtual
key order (``qk_norm_rope_sla``), the prepare pass reading those, and the module taking that path.

On CPU the kernels run in the Triton interpreter at small sizes in fp32/fp16 (bf16 dots are broken in
the Triton 3.6 interpreter); on the H100 (``-m gpu``) at VGGT sizes in bf16.
"""

from __future__ import annotations

import sla_triton_env

sla_triton_env.set_interpret_env()  # before anything imports triton (collection time)

import pytest  # noqa: E402
import torch  # noqa: E402

from lite3r.attention.dense import set_qk_kernel  # noqa: E402
from lite3r.attention.sla import SLAConfig, SparseLinearAttention, tma_capable  # noqa: E402
from lite3r.errors import UnsupportedError  # noqa: E402
from lite3r.kernels.sla_reference import sla_geometry  # noqa: E402
from lite3r.models.layers.rope import RotaryPositionEmbedding2D, patch_positions  # noqa: E402

K = sla_triton_env.load_sla_kernels()
prepare, tma, ops, qkmod = K["sla_prepare"], K["sla_forward_tma"], K["sla_ops"], K["qk_norm_rope"]
DEVICE = "cpu" if sla_triton_env.interpreting() else "cuda"


def _raw_qkv(B, H, N, D, dtype, device=DEVICE, seed=0):
    """The qkv projection's q, k, v before qk-norm/RoPE: strided views of [B, N, 3, H, D]."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(B, N, 3, H, D, generator=g) * 2 + 0.3).to(device=device, dtype=dtype)
    return x.permute(2, 0, 3, 1, 4).unbind(0)


def _norms(D, device=DEVICE, seed=1):
    g = torch.Generator().manual_seed(seed)
    return tuple(
        (torch.randn(D, generator=g).to(device), torch.randn(D, generator=g).to(device), 1e-6)
        for _ in range(2)
    )


def _positions(B, frames, special, side, device=DEVICE):
    """Every frame's (y, x) positions, as VGGT's global attention sees them: [B, frames·frame_len, 2]."""
    one = patch_positions(B, side, side, special)
    return one.repeat(1, frames, 1).to(device)


def _tables(pos, D):
    t = RotaryPositionEmbedding2D().tables(pos, D)
    return t.cos, t.sin


def _geom(N, bq, bk, special, frame_len, top_k=3):
    return sla_geometry(
        N, block_q=bq, block_k=bk, keep_ratio=None, top_k_blocks=top_k,
        special_tokens_per_frame=special, frame_len=frame_len,
    )  # fmt: skip


# (B, H, frames, special, side, D, bq, bk): special tokens with key blocks crossing frames, a partial
# last query and key block, no special tokens, one query block, batch and heads > 1, 128-query blocks.
CASES = [
    (2, 2, 3, 2, 7, 16, 32, 16),
    (1, 3, 2, 5, 6, 32, 16, 32),
    (1, 1, 4, 0, 5, 16, 32, 16),
    (2, 1, 1, 1, 5, 16, 32, 16),
    (1, 2, 3, 2, 9, 16, 128, 16),  # 128-query blocks, the last one partial
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_qk_norm_rope_sla_matches_reference(case, dtype):
    """q as qk_norm_rope writes it, the pooled queries, and k in virtual order with zero padding rows."""
    B, H, frames, special, side, D, bq, bk = case
    frame_len = special + side * side
    N = frames * frame_len
    q, k, _ = _raw_qkv(B, H, N, D, dtype)
    qn, kn = _norms(D)
    tables = _tables(_positions(B, frames, special, side), D)
    g = _geom(N, bq, bk, special, frame_len)
    args = qkmod.launch_args(q, k, qn, kn, tables)
    qo, pq, k_virt = qkmod.qk_norm_rope_sla(*args, dtype, g)
    q_plain, k_plain = qkmod.qk_norm_rope(q, k, qn, kn, tables, dtype)
    assert torch.equal(qo, q_plain)  # the same stored values as the plain kernel
    assert torch.equal(k_virt, tma.virtual_kv(k_plain, g))  # virtual order, zeros past N
    assert k_virt.shape == (B * H * g.n_kblocks * g.block_k, D)
    ref_q, ref_pq, ref_k = qkmod.qk_norm_rope_sla_reference(q, k, qn, kn, tables, dtype, g)
    tol = 2e-5 if dtype == torch.float32 else 4e-3
    torch.testing.assert_close(qo.float(), ref_q.float(), rtol=tol, atol=tol * 4)
    torch.testing.assert_close(k_virt.float(), ref_k.float(), rtol=tol, atol=tol * 4)
    # the pooled queries are the means of the stored q (float32 sums of the same values)
    from lite3r.kernels.sla_reference import pool_blocks

    torch.testing.assert_close(pq, pool_blocks(qo, bq), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pq, ref_pq, rtol=tol, atol=tol * 4)


def test_pooling_over_two_tiles_adds_into_the_mean():
    """The probe's variant (benchmarks/probes/qk_fused_probe.py): two tiles per pooled block, each adding
    its share into a zeroed mean, equal to one tile per block."""
    B, H, N, D = 1, 2, 75, 16
    q, _, _ = _raw_qkv(B, H, N, D, torch.float32, seed=4)
    w, b, eps = _norms(D)[0]
    out = qkmod.empty_bnhd_like(q, torch.float32)
    one = torch.empty(B, H, 3, D, device=DEVICE)
    qkmod._launch(q, out, w, b, None, None, eps, pooled=one, pool_rows=32, block_rows=32)
    two = torch.zeros(B, H, 3, D, device=DEVICE)
    qkmod._launch(q, out, w, b, None, None, eps, pooled=two, pool_rows=32, block_rows=16)
    torch.testing.assert_close(two, one, rtol=1e-6, atol=1e-6)


def test_prepare_reads_the_virtual_k():
    """prepare(pool_q=False, k_virtual=True) from the virtual-order k gives the same pooled keys, mean,
    states and V copy as from the physical k; no pooled q and no K copy."""
    B, H, frames, special, side, D = 2, 2, 3, 2, 7, 16
    frame_len = special + side * side
    N = frames * frame_len
    q, k, v = _raw_qkv(B, H, N, D, torch.float32, seed=3)
    g = _geom(N, 32, 16, special, frame_len)
    k_virt = tma.virtual_kv(k, g)
    for linear, summed in (("complement", True), ("complement", False), ("all", False), ("none", False)):
        plain = prepare.sla_prepare(
            q, k, v, g, "elu", linear, True, not summed, virtual_kv=True, augmented=summed
        )
        fused = prepare.sla_prepare(
            q, k_virt, v, g, "elu", linear, True, not summed, virtual_kv=True, augmented=summed,
            pool_q=False, k_virtual=True,
        )  # fmt: skip
        assert fused[0].numel() == 0 and fused[7].numel() == 0
        for i in (1, 2, 3, 4, 5, 6, 8):
            assert torch.equal(plain[i], fused[i]), (linear, i)
    with pytest.raises(ValueError, match="virtual-order k"):
        prepare.sla_prepare(q, k, v, g, "elu", "none", True, False, virtual_kv=True, k_virtual=True)


def test_fused_qk_ops_trace_without_graph_breaks():
    """The qk op and the prepare op's new arguments have fake kernels: the fused path compiles as one
    graph (aot_eager here), with the same result."""
    B, H, frames, special, side, D = 1, 2, 3, 2, 7, 16
    frame_len = special + side * side
    N = frames * frame_len
    q, k, v = _raw_qkv(B, H, N, D, torch.float32, seed=8)
    qn, kn = _norms(D)
    tables = _tables(_positions(B, frames, special, side), D)
    w = torch.randn(D, D, device=DEVICE) * 0.2
    g = _geom(N, 32, 16, special, frame_len)

    def f(q, k, v, w):
        return ops.sla_attention_fused_qk(
            q, k, v, qn, kn, tables, w, g, feature="elu", linear="complement", eps=1e-6, scale=0.25
        )

    torch._dynamo.reset()
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(q, k, v, w), f(q, k, v, w))


def _module(D=16, H=2, special=2, linear="complement", key_loads="tma", dtype=torch.float32):
    cfg = SLAConfig(
        keep_ratio=None, top_k_blocks=3, block_q=32, block_k=16, linear=linear, backend="triton",
        key_loads=key_loads,
    )  # fmt: skip
    m = SparseLinearAttention(
        D * H, H, qk_norm=True, rope=RotaryPositionEmbedding2D(), config=cfg, special_tokens_per_frame=special
    )
    with torch.no_grad():
        for p in (m.q_norm.weight, m.k_norm.weight, m.q_norm.bias, m.k_norm.bias):
            p.normal_(0.5, 0.3)
        if m.proj_lin is not None:
            m.proj_lin.weight.normal_(0, 0.1)
    return m.to(DEVICE, dtype).eval()


def _unfused_forward(m, x, pos, frame_len):
    """The module's forward through project_qkv + attend (the path without the fused qk kernel)."""
    B, N, C = x.shape
    o = m.attend(*m.project_qkv(x, pos), frame_len=frame_len)
    return m.proj(o.transpose(1, 2).reshape(B, N, C))


@pytest.mark.parametrize("linear", ["complement", "all", "none"])
def test_module_takes_the_fused_qk_path_at_inference(linear, monkeypatch):
    frames, special, side = 3, 2, 7
    frame_len = special + side * side
    m = _module(linear=linear)
    assert m.attention_path(frames * frame_len, frame_len) == "sla-triton"  # qk kernel "torch"
    set_qk_kernel(m, "triton")
    assert m.attention_path(frames * frame_len, frame_len) == "sla-triton-fused-qk"
    calls = []
    original = ops.sla_attention_fused_qk

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(ops, "sla_attention_fused_qk", counted)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(1, frames * frame_len, m.dim, generator=g).to(DEVICE)
    pos = _positions(1, frames, special, side)
    with torch.no_grad():
        fused = m(x, pos, frame_len=frame_len)
        assert len(calls) == 1  # the forward took the fused path
        unfused = _unfused_forward(m, x, pos, frame_len)
    assert len(calls) == 1
    torch.testing.assert_close(fused, unfused, rtol=2e-5, atol=2e-5)
    # with gradients the module runs project_qkv + attend (the training path), same values
    with torch.enable_grad():
        out = m.train()(x, pos, frame_len=frame_len)
    assert out.requires_grad and len(calls) == 1
    torch.testing.assert_close(out.detach(), unfused, rtol=1e-4, atol=1e-4)
    # frozen weights but an input that needs gradients (e.g. a saliency map): autograd still records
    m.eval().requires_grad_(False)
    x_grad = x.clone().requires_grad_(True)
    with torch.enable_grad():
        out = m(x_grad, pos, frame_len=frame_len)
    out.sum().backward()
    assert x_grad.grad is not None and len(calls) == 1


def test_engine_description_names_the_fused_qk_path():
    from torch import nn

    from lite3r.engine.policy import fused_qk_note

    m = _module()
    model = nn.Sequential(m)
    assert fused_qk_note(model) == ""  # qk-norm/RoPE as PyTorch ops: attend() on their outputs
    set_qk_kernel(m, "triton")
    assert "fused qk" in fused_qk_note(model)
    set_qk_kernel(m, "torch")
    assert fused_qk_note(nn.Sequential(_module(key_loads="gather"))) == ""


def test_fused_qk_refuses_what_it_cannot_run():
    frames, special, side = 2, 2, 7
    frame_len = special + side * side
    gather = _module(key_loads="gather")
    set_qk_kernel(gather, "triton")
    assert gather.attention_path(frames * frame_len, frame_len) == "sla-triton"
    q, k, v = _raw_qkv(1, 2, frames * frame_len, 16, torch.float32)
    with pytest.raises(UnsupportedError, match="key_loads='tma'"):
        gather.attend_fused_qk(q, k, v, None, frame_len)
    m = _module()
    set_qk_kernel(m, "triton")
    q1, k1, v1 = _raw_qkv(1, 2, 12, 16, torch.float32)
    with pytest.raises(UnsupportedError, match="key block"):
        m.attend_fused_qk(q1, k1, v1, None, None)  # 12 tokens: one key block → dense
    w = torch.zeros(16, 16, requires_grad=True)
    g = _geom(frames * frame_len, 32, 16, special, frame_len)
    with pytest.raises(ValueError, match="inference only"):
        ops.sla_attention_fused_qk(
            q, k, v, None, None, None, w, g, feature="elu", linear="complement", eps=1e-6, scale=0.25
        )


# ------------------------------------------------------------------------------------------- GPU

VGGT_FRAME = 1374


@pytest.mark.gpu
@pytest.mark.parametrize("linear", ["complement", "all"])
def test_gpu_fused_qk_module_matches_unfused_bf16(linear):
    """VGGT shapes (5 special + 37·37 tokens per frame, 4 frames, 16 heads × 64), bf16: the fused
    path's q and virtual k equal the plain kernel's, its output matches project_qkv + attend."""
    if not tma_capable("cuda"):
        pytest.skip("TMA needs compute capability ≥ 9.0")
    frames, special, side, D, H = 4, 5, 37, 64, 16
    cfg = SLAConfig(keep_ratio=0.1, block_q=128, block_k=64, linear=linear, key_loads="tma")
    m = SparseLinearAttention(
        D * H, H, qk_norm=True, rope=RotaryPositionEmbedding2D(), config=cfg, special_tokens_per_frame=special
    )
    with torch.no_grad():
        m.proj_lin.weight.normal_(0, 0.05)
    m = m.cuda().eval().to(torch.bfloat16)
    m.proj_lin.float()
    set_qk_kernel(m, "triton")
    N = frames * VGGT_FRAME
    x = torch.randn(1, N, D * H, device="cuda", dtype=torch.bfloat16)
    pos = _positions(1, frames, special, side, "cuda")
    g = m.geometry(N, VGGT_FRAME)
    with torch.no_grad():
        qkv = m.qkv(x).reshape(1, N, 3, H, D).permute(2, 0, 3, 1, 4)
        q, k, _ = qkv.unbind(0)
        args = qkmod.launch_args(q, k, *m._qk_kernel_args(pos))
        qo, pq, k_virt = qkmod.qk_norm_rope_sla(*args, torch.bfloat16, g)
        q_plain, k_plain = qkmod.qk_norm_rope(q, k, *m._qk_kernel_args(pos), torch.bfloat16)
        assert torch.equal(qo, q_plain) and torch.equal(k_virt, tma.virtual_kv(k_plain, g))
        from lite3r.kernels.sla_reference import pool_blocks

        torch.testing.assert_close(pq, pool_blocks(qo, 128), rtol=1e-5, atol=1e-5)
        fused = m(x, pos, frame_len=VGGT_FRAME)
        unfused = _unfused_forward(m, x, pos, VGGT_FRAME)
    err = ((fused.float() - unfused.float()).norm() / unfused.float().norm()).item()
    assert err < 2e-3, err
