"""The inference preparation (``sla_ops.sla_prepare_select``): the prepare pass split into its pooling
and states halves, the selection beside the states half, and the per-query-block states it hands the
forward kernels.

On CPU the kernels run in the Triton interpreter (the halves in order); on the GPU (``-m gpu``) the
selection runs on its own stream, also inside CUDA-graph capture, and must give bit-identical results
to the serial path (same kernels, same arithmetic).
"""

from __future__ import annotations

import sla_triton_env

sla_triton_env.set_interpret_env()  # before anything imports triton (collection time)

import pytest  # noqa: E402
import torch  # noqa: E402

from lite3r.attention.sla import SLAConfig, SparseLinearAttention, tma_capable  # noqa: E402
from lite3r.kernels.sla_reference import sla_geometry  # noqa: E402

K = sla_triton_env.load_sla_kernels()
prepare, select, ops = K["sla_prepare"], K["sla_block_select"], K["sla_ops"]


def _qkv(B, H, N, D, dtype=torch.float32, device="cpu", seed=0):
    """q, k, v as the strided views MultiHeadAttention.project_qkv produces (no copies)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, N, 3, H, D, generator=g).to(device=device, dtype=dtype)
    return x.permute(2, 0, 3, 1, 4).unbind(0)


def _geom(N, special=2, frame_len=50, top_k=4, bq=32, bk=16):
    return sla_geometry(
        N, block_q=bq, block_k=bk, keep_ratio=None, top_k_blocks=top_k, special_tokens_per_frame=special,
        frame_len=frame_len,
    )  # fmt: skip


@pytest.mark.parametrize("linear", ["complement", "all", "none"])
@pytest.mark.parametrize("virtual_kv", [False, True])
def test_prepare_halves_equal_the_fused_pass(linear, virtual_kv):
    """pool=False / states=False launches write exactly what the one fused launch writes, and leave the
    other half's outputs empty."""
    q, k, v = _qkv(2, 2, 150, 16, seed=1)
    g = _geom(150)
    fused = prepare.sla_prepare(q, k, v, g, "elu", linear, virtual_kv=virtual_kv)
    pool = prepare.sla_prepare(q, k, v, g, "elu", linear, virtual_kv=virtual_kv, states=False)
    states = prepare.sla_prepare(q, k, v, g, "elu", linear, virtual_kv=virtual_kv, pool=False)
    for i in range(3):  # pq, pk, kmean
        assert torch.equal(pool[i], fused[i]) and states[i].numel() == 0
    for i in range(3, 9):  # s_blk, z_blk, s_tot, z_tot, k_virtual, v_virtual
        assert torch.equal(states[i], fused[i]) and pool[i].numel() == 0
    with pytest.raises(ValueError, match="pool or states"):
        prepare.sla_prepare(q, k, v, g, "elu", linear, pool=False, states=False)


@pytest.mark.parametrize("select_method", ["gemm", "streamed"])
def test_selection_writes_into_a_given_table(select_method):
    q, k, v = _qkv(1, 2, 150, 16, seed=2)
    g = _geom(150)
    pq, pk, kmean, *_ = prepare.sla_prepare(q, k, v, g, "elu", "none")
    fn = select.sla_block_select_gemm if select_method == "gemm" else select.sla_block_select
    out = select.empty_lut(q, g)
    assert fn(pq, pk, kmean, g, out=out) is out
    assert torch.equal(out, fn(pq, pk, kmean, g))
    every = _geom(150, top_k=1000)  # more than there are: every block, in order
    out = select.empty_lut(q, every)
    fn(pq, pk, kmean, every, out=out)
    assert torch.equal(out[0, 1, 2], torch.arange(every.n_kblocks, dtype=out.dtype))


@pytest.mark.parametrize("linear", ["complement", "all", "none"])
@pytest.mark.parametrize("overlap", [False, True])
def test_prepare_select_hands_the_forward_its_states(linear, overlap):
    """(lut, s, z): the complement sums per query block, the totals, or nothing, per linear branch;
    the same table and states with and without the split."""
    q, k, v = _qkv(1, 2, 150, 16, seed=3)
    g = _geom(150)
    lut, s, z, kv, vv = ops.sla_prepare_select(q, k, v, g, "elu", linear, virtual_kv=True, overlap=overlap)
    pq, pk, kmean, s_blk, z_blk, s_tot, z_tot, k_virt, v_virt = prepare.sla_prepare(
        q, k, v, g, "elu", linear, virtual_kv=True
    )
    assert torch.equal(lut, select.sla_block_select_gemm(pq, pk, kmean, g))
    assert torch.equal(kv, k_virt) and torch.equal(vv, v_virt)
    if linear == "complement":
        from lite3r.kernels import sla_linear_domain

        s_ref, z_ref = sla_linear_domain.complement_sums(lut, s_blk, z_blk, g.n_kblocks, transpose=False)
        assert s.shape == (1, 2, g.n_qblocks, 16, 16)
        torch.testing.assert_close(s, s_ref)
        torch.testing.assert_close(z, z_ref)
    elif linear == "all":
        assert torch.equal(s, s_tot) and torch.equal(z, z_tot)
    else:
        assert s.numel() == 0 and z.numel() == 0


def test_module_output_does_not_depend_on_the_overlap_setting():
    q, k, v = _qkv(1, 4, 150, 16, seed=4)
    cfg = SLAConfig(top_k_blocks=3, keep_ratio=None, block_q=32, block_k=16, proj_init_std=0.1)
    a = SparseLinearAttention(64, 4, config=cfg, special_tokens_per_frame=2).eval()
    b = SparseLinearAttention(64, 4, config=cfg.replace(overlap_selection=False), special_tokens_per_frame=2)
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        assert torch.equal(a.attend(q, k, v, frame_len=50), b.eval().attend(q, k, v, frame_len=50))


# ------------------------------------------------------------------------------------------- GPU

VGGT_FRAME = 1374


@pytest.mark.gpu
@pytest.mark.parametrize("key_loads", ["tma", "gather"])
@pytest.mark.parametrize("linear", ["complement", "all"])
def test_gpu_overlapped_selection_is_bit_identical_also_in_graphs(key_loads, linear):
    """VGGT shapes (8 frames, 16 heads × 64, bf16): the selection on the high-priority stream gives the
    serial path's output bit for bit, eagerly and replayed from a CUDA graph (fork/join captured)."""
    if key_loads == "tma" and not tma_capable("cuda"):
        pytest.skip("TMA needs compute capability ≥ 9.0")
    N = 8 * VGGT_FRAME
    q, k, v = _qkv(1, 16, N, 64, torch.bfloat16, "cuda", seed=5)
    w = torch.randn(64, 64, device="cuda") * 0.05
    g = sla_geometry(
        N, block_q=128, block_k=64, keep_ratio=0.1, top_k_blocks=None, special_tokens_per_frame=5,
        frame_len=VGGT_FRAME,
    )  # fmt: skip
    kw = dict(feature="elu", linear=linear, eps=1e-6, scale=0.125, key_loads=key_loads)
    with torch.no_grad():
        serial = ops.sla_attention(q, k, v, w, g, overlap=False, **kw)
        overlapped = ops.sla_attention(q, k, v, w, g, overlap=True, **kw)
        torch.cuda.synchronize()
        assert torch.equal(overlapped, serial)
        graph, static = torch.cuda.CUDAGraph(), {}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up off the capture (compilation, autotuning)
                ops.sla_attention(q, k, v, w, g, overlap=True, **kw)
        torch.cuda.current_stream().wait_stream(side)
        with torch.cuda.graph(graph):
            static["o"] = ops.sla_attention(q, k, v, w, g, overlap=True, **kw)
        for _ in range(3):
            graph.replay()
        torch.cuda.synchronize()
    assert torch.equal(static["o"], serial)
