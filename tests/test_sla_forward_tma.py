"""The TMA forward (``sla_forward_tma``) and the prepare pass's virtual K/V copies vs their references.

On CPU the kernels run in the Triton interpreter (which emulates the TMA descriptor loads) at small
sizes in fp32/fp16; on the H100 (``-m gpu``) at VGGT sizes in bf16 against the gather kernel.
"""

from __future__ import annotations

import sla_triton_env

sla_triton_env.set_interpret_env()  # before anything imports triton (collection time)

import pytest  # noqa: E402
import torch  # noqa: E402

from lite3r.attention.sla import SLAConfig, SparseLinearAttention, tma_capable  # noqa: E402
from lite3r.errors import UnsupportedError  # noqa: E402
from lite3r.kernels.sla_reference import sla_attention_reference, sla_geometry  # noqa: E402

K = sla_triton_env.load_sla_kernels()
prepare, select, tma, ops = K["sla_prepare"], K["sla_block_select"], K["sla_forward_tma"], K["sla_ops"]
gather = K["sla_forward"]


def _qkv(B, H, N, D, dtype=torch.float32, device="cpu", seed=0):
    """q, k, v as the strided views MultiHeadAttention.project_qkv produces (no copies)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, N, 3, H, D, generator=g).to(device=device, dtype=dtype)
    return x.permute(2, 0, 3, 1, 4).unbind(0)


def _geom(N, bq, bk, special=0, frame_len=None, top_k=None, keep=None):
    return sla_geometry(
        N,
        block_q=bq,
        block_k=bk,
        keep_ratio=keep,
        top_k_blocks=top_k,
        special_tokens_per_frame=special,
        frame_len=frame_len,
    )


def _complement_sums(lut, s_blk, z_blk, n_kblocks):
    from lite3r.kernels import sla_linear_domain

    return sla_linear_domain.complement_sums(lut, s_blk, z_blk, n_kblocks, transpose=False)


def _complement_sums_augmented(lut, s_aug, n_kblocks):
    from lite3r.kernels import sla_linear_domain

    return sla_linear_domain.complement_sums_augmented(lut, s_aug, n_kblocks)


# (B, H, N, D, bq, bk, special, frame_len, top_k, linear, pair, dtype): odd and even numbers of whole
# blocks per pair walk, one block only, a partial last block, special tokens with blocks crossing frame
# boundaries, batch and heads > 1, every linear branch.
CASES = [
    (2, 2, 150, 16, 32, 16, 2, 50, 4, "complement", 2, torch.float32),
    (1, 2, 150, 16, 32, 16, 2, 50, 5, "complement", 1, torch.float32),
    (1, 1, 100, 16, 32, 16, 0, None, 1, "complement", 2, torch.float32),  # one block
    (1, 1, 100, 16, 32, 16, 0, None, 7, "all", 2, torch.float16),  # every block (no complement)
    (1, 2, 200, 32, 32, 16, 0, None, 6, "none", 2, torch.float32),
    (1, 2, 300, 16, 32, 16, 3, 75, 9, "complement", 2, torch.float16),
    (2, 1, 300, 16, 16, 32, 3, 75, 3, "all", 1, torch.float32),  # key blocks larger than query blocks
]


def test_prepare_writes_virtual_kv_copies():
    """The copies hold K and V in virtual key order, zero past the last token; the other outputs are the
    same with or without them."""
    q, k, v = _qkv(2, 2, 150, 16)
    g = _geom(150, 32, 16, special=2, frame_len=50, top_k=3)
    for linear in ("complement", "none"):
        plain = prepare.sla_prepare(q, k, v, g, "elu", linear, True, False)
        with_copies = prepare.sla_prepare(q, k, v, g, "elu", linear, True, False, virtual_kv=True)
        assert plain[7].numel() == 0 and plain[8].numel() == 0
        for a, b in zip(plain[:7], with_copies[:7]):
            assert torch.equal(a, b)
        torch.testing.assert_close(with_copies[7], tma.virtual_kv(k, g), rtol=0, atol=0)
        torch.testing.assert_close(with_copies[8], tma.virtual_kv(v, g), rtol=0, atol=0)
    rows = tma.virtual_kv(k, g).view(2, 2, g.n_kblocks * g.block_k, 16)
    assert not rows[:, :, 150:].any(), "padding rows are zero"


@pytest.mark.parametrize("case", CASES)
def test_tma_forward_matches_reference_and_gather_kernel(case):
    B, H, N, D, bq, bk, s, L, top_k, lin, pair, dt = case
    q, k, v = _qkv(B, H, N, D, dt, seed=3)
    w = torch.randn(D, D) * 0.2
    g = _geom(N, bq, bk, s, L, top_k)
    pq, pk, km, sb, zb, st, zt, kv, vv = prepare.sla_prepare(
        q, k, v, g, "elu", lin, True, True, virtual_kv=True
    )
    lut = select.sla_block_select(pq, pk, km, g)
    kw = dict(feature="elu", linear=lin, eps=1e-6, scale=D**-0.5)
    s_in, z_in = st, zt
    if lin == "complement" and g.topk < g.n_kblocks:
        s_in, z_in = _complement_sums(lut, sb, zb, g.n_kblocks)
    o = tma.sla_forward_tma(q, kv, vv, lut, s_in, z_in, w, g, pair=pair, **kw)
    assert o.shape == q.shape and o.stride(-2) == H * D, "stored [B, N, H, D] like the gather kernel"
    d64 = [t.double() for t in (q, k, v, w)]
    ref = sla_attention_reference(*d64, g, lut=lut.long(), **kw)
    tol = 2e-5 if dt == torch.float32 else 2e-3
    torch.testing.assert_close(o.double(), ref, rtol=tol, atol=tol)
    o_gather, _, _ = gather.sla_forward(q, k, v, lut, sb, zb, st, zt, w, g, fuse_proj=True, **kw)
    torch.testing.assert_close(o, o_gather, rtol=tol, atol=tol)
    if lin == "complement" and g.topk < g.n_kblocks:  # the augmented sums (module's inference path)
        s_aug = prepare.sla_prepare(q, k, v, g, "elu", lin, True, False, augmented=True)[3]
        sq_aug = _complement_sums_augmented(lut, s_aug, g.n_kblocks)
        o_aug = tma.sla_forward_tma(q, kv, vv, lut, sq_aug, q.new_empty(0), w, g, pair=pair, **kw)
        torch.testing.assert_close(o_aug, o, rtol=tol, atol=tol)


def test_tma_forward_refuses_wrong_inputs():
    q, k, v = _qkv(1, 1, 100, 16)
    g = _geom(100, 32, 16, top_k=2)
    pq, pk, km, sb, zb, st, zt, kv, vv = prepare.sla_prepare(q, k, v, g, "elu", "complement", virtual_kv=True)
    lut = select.sla_block_select(pq, pk, km, g)
    kw = dict(feature="elu", linear="complement", eps=1e-6, scale=0.25)
    w = torch.zeros(16, 16)
    with pytest.raises(ValueError, match="virtual K/V copies"):
        tma.sla_forward_tma(q, k.reshape(-1, 16), vv, lut, st, zt, w, g, **kw)
    with pytest.raises(ValueError, match="summed per query block"):
        tma.sla_forward_tma(q, kv, vv, lut, st, zt, w, g, **kw)  # totals, not per-query-block sums
    s_q, z_q = _complement_sums(lut, sb, zb, g.n_kblocks)
    with pytest.raises(ValueError, match="projection weight"):
        tma.sla_forward_tma(q, kv, vv, lut, s_q, z_q, None, g, **kw)


def _module(key_loads, linear="complement", complement_states="summed"):
    torch.manual_seed(0)
    cfg = SLAConfig(
        keep_ratio=0.3, block_q=32, block_k=16, linear=linear, complement_states=complement_states,
        key_loads=key_loads, proj_init_std=0.1,
    )  # fmt: skip
    return SparseLinearAttention(64, 4, config=cfg, special_tokens_per_frame=2).eval()


@pytest.mark.parametrize("linear", ["complement", "all", "none"])
def test_module_with_tma_key_loads_matches_gather(linear):
    """SLAConfig(key_loads="tma") runs prepare with the copies and the TMA kernel; same output."""
    q, k, v = _qkv(1, 4, 150, 16, seed=5)
    a, b = _module("tma", linear), _module("gather", linear)
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        o_tma = a.attend(q, k, v, frame_len=50)
        o_gather = b.attend(q, k, v, frame_len=50)
    torch.testing.assert_close(o_tma, o_gather, rtol=2e-5, atol=2e-5)
    assert "TMA key loads at inference (training gathers)" in a.config.describe()
    assert "TMA" not in b.config.describe()


def test_tma_key_loads_config_is_checked():
    with pytest.raises(ValueError, match="key_loads"):
        SLAConfig(key_loads="async")
    with pytest.raises(UnsupportedError, match="summed"):
        SLAConfig(key_loads="tma", complement_states="stored")
    SLAConfig(key_loads="tma", linear="all", complement_states="stored")  # no complement: allowed


def test_conversion_chooses_gather_loads_off_hopper():
    """convert() resolves key_loads=None from the device: gather on CPU (TMA needs sm90+)."""
    from lite3r.convert import Lite3RConfig, default_key_loads

    cpu = torch.device("cpu")
    assert default_key_loads(Lite3RConfig(), "torch", cpu) == "gather"
    assert default_key_loads(Lite3RConfig(), "triton", cpu) == "gather"
    assert Lite3RConfig().sla_config("triton", "tma").key_loads == "tma"
    assert Lite3RConfig(key_loads="gather").sla_config("triton", "tma").key_loads == "gather"
    assert Lite3RConfig().sla_config("triton").key_loads == "gather"
    assert default_key_loads(Lite3RConfig(complement_states="stored"), "triton", cpu) == "gather"


# ------------------------------------------------------------------------------------------- GPU

VGGT_FRAME = 1374


@pytest.mark.gpu
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("linear", ["complement", "all", "none"])
def test_gpu_tma_forward_matches_gather_kernel_bf16(D, linear):
    """VGGT shapes (5 special + 37·37 tokens per frame, 4 frames), bf16: the TMA module path vs the
    gather kernel on the same selection, and the kernel-level TMA copies vs their reference."""
    if not tma_capable("cuda"):
        pytest.skip("TMA needs compute capability ≥ 9.0")
    frames, H = 4, 1024 // D
    N = frames * VGGT_FRAME
    q, k, v = _qkv(1, H, N, D, torch.bfloat16, "cuda")
    w = torch.randn(D, D, device="cuda") * 0.05
    g = _geom(N, 128, 64, 5, VGGT_FRAME, keep=0.1)
    kw = dict(feature="elu", linear=linear, eps=1e-6, scale=D**-0.5)
    with torch.no_grad():
        out = prepare.sla_prepare(q, k, v, g, "elu", linear, True, True, virtual_kv=True)
        assert torch.equal(out[7], tma.virtual_kv(k, g)) and torch.equal(out[8], tma.virtual_kv(v, g))
        o_tma = ops.sla_attention(q, k, v, w, g, key_loads="tma", **kw)
        o_gather = ops.sla_attention(q, k, v, w, g, key_loads="gather", **kw)
    err = ((o_tma.float() - o_gather.float()).norm() / o_gather.float().norm()).item()
    assert err < 5e-3, err


def test_variant_token_chooses_the_key_loads():
    """``keys=tma|gather`` in a bench/eval variant reaches the conversion config; no token: the
    conversion's default."""
    from lite3r.errors import InputError
    from lite3r.eval.variants import parse_variant

    assert parse_variant("lite3r:fp8:sla0.1:keys=gather").sla_config().key_loads == "gather"
    assert parse_variant("lite3r:keys=tma").sla_config().key_loads == "tma"
    assert parse_variant("lite3r:sla0.1").sla_config().key_loads is None
    with pytest.raises(InputError, match="keys=tma"):
        parse_variant("lite3r:keys=fast")
