"""SLA Triton kernels vs their PyTorch references.

On CPU the kernels run in the Triton interpreter at small sizes (fp32/fp16; bf16 ``tl.dot`` is broken in
the interpreter); on a GPU (``-m gpu``) at VGGT sizes in bf16, gradients included.
"""

from __future__ import annotations

import sla_triton_env

sla_triton_env.set_interpret_env()  # before anything imports triton (collection time)

import dataclasses  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from lite3r.kernels.sla_reference import (  # noqa: E402
    block_scores_reference,
    select_blocks_reference,
    sla_attention_reference,
    sla_geometry,
    virtual_key_order,
)

K = sla_triton_env.load_sla_kernels()
prepare, select, forward, ops = K["sla_prepare"], K["sla_block_select"], K["sla_forward"], K["sla_ops"]
dkdv = K["sla_backward_dkdv"]
domain = importlib.import_module("lite3r.kernels.sla_linear_domain")  # plain PyTorch

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _qkv(B, H, N, D, dtype=torch.float32, device="cpu", seed=0, requires_grad=False):
    """q, k, v as the strided views MultiHeadAttention.project_qkv produces (no copies)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, N, 3, H, D, generator=g).to(device=device, dtype=dtype)
    q, k, v = x.permute(2, 0, 3, 1, 4).unbind(0)
    if requires_grad:
        q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    return q, k, v


def _geom(N, bq, bk, keep=0.3, special=0, frame_len=None, top_k=None):
    return sla_geometry(
        N,
        block_q=bq,
        block_k=bk,
        keep_ratio=None if top_k else keep,
        top_k_blocks=top_k,
        special_tokens_per_frame=special,
        frame_len=frame_len,
    )


def _assert_valid_topk(lut, scores, topk):
    """Same selection as torch.topk up to exact ties: sorted, distinct, and every selected score ≥ every
    unselected one."""
    lut = lut.long()
    assert lut.shape[-1] == topk
    assert bool((lut.diff(dim=-1) > 0).all()), "look-up table rows must be ascending and distinct"
    picked = scores.gather(-1, lut)
    mask = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, lut, True)
    rest = scores.masked_fill(mask, -math.inf).amax(-1)
    assert bool((picked.amin(-1) >= rest).all())


# ------------------------------------------------------------------------------------------- CPU
# (B, H, N, D, block_q, block_k, special, frame_len, keep, feature, linear, dtype)
PREPARE_CASES = [
    (2, 2, 150, 16, 32, 16, 2, 50, 0.3, "elu", "complement", torch.float32),  # partial blocks, special
    (1, 3, 100, 32, 16, 32, 0, None, 0.3, "softmax", "all", torch.float16),
]


@pytest.mark.parametrize("case", PREPARE_CASES)
def test_prepare_matches_reference(case):
    B, H, N, D, bq, bk, s, L, keep, feat, lin, dt = case
    q, k, v = _qkv(B, H, N, D, dt)
    g = _geom(N, bq, bk, keep, s, L)
    got = prepare.sla_prepare(q, k, v, g, feat, lin)
    ref = prepare.prepare_reference(q, k, v, g, feat, lin)
    names = ("pq", "pk", "kmean", "s_blk", "z_blk", "s_tot", "z_tot")
    tol = 1e-5 if dt == torch.float32 else 2e-2
    for name, a, r in zip(names, got, ref):
        if a.numel() == 0:
            assert lin != "complement" and name in ("s_blk", "z_blk")
            continue
        if name in ("s_blk", "z_blk"):  # rows padded to a multiple of 8 key blocks, zero past the last
            assert a.shape[2] == prepare.padded_kblocks(g.n_kblocks) and a.shape[2] % 8 == 0
            assert not a[:, :, g.n_kblocks :].any(), name
            a = a[:, :, : g.n_kblocks]
        torch.testing.assert_close(a.float(), r, rtol=tol, atol=tol, msg=name)
    # Without totals (the "summed" complement states): the same blocks and states, no s_tot / z_tot.
    lean = prepare.sla_prepare(q, k, v, g, feat, lin, totals=False)
    assert lean[5].numel() == 0 and lean[6].numel() == 0
    for name, a, b in zip(names[:5], got, lean):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("dt", [torch.float32, torch.float16])
def test_prepare_writes_augmented_state_rows(dt):
    """``augmented``: each key block's row holds S_j's D² entries then z_j's D (state dtype: float32 for
    these inputs), zero rows past the last block up to a multiple of 8; the rest is unchanged."""
    B, H, N, D = 2, 2, 150, 16
    q, k, v = _qkv(B, H, N, D, dt)
    g = _geom(N, 32, 16, 0.3, 2, 50)
    plain = prepare.sla_prepare(q, k, v, g, "elu", "complement", True, False)
    aug = prepare.sla_prepare(q, k, v, g, "elu", "complement", True, False, augmented=True)
    rows = prepare.padded_kblocks(g.n_kblocks)
    assert aug[3].shape == (B, H, rows, D * D + D) and aug[4].numel() == 0
    assert torch.equal(aug[3][..., : D * D], plain[3].reshape(B, H, rows, D * D))
    assert torch.equal(aug[3][..., D * D :], plain[4].to(aug[3].dtype))
    for a, b in zip(plain[:3] + plain[5:], aug[:3] + aug[5:]):
        assert torch.equal(a, b)


def test_prepare_refuses_unknown_launch_settings():
    q, k, v = _qkv(1, 1, 100, 16)
    g = _geom(100, 32, 16)
    with pytest.raises(ValueError, match="num_warps and num_stages"):
        prepare.sla_prepare(q, k, v, g, "elu", "none", launch={"num_warp": 8})


@pytest.mark.parametrize(
    "N, bq, bk, keep, special, frame_len",
    [
        (150, 32, 16, 0.3, 2, 50),  # forced special block, partial last blocks
        (1100, 64, 16, 0.2, 0, None),  # 69 key blocks: several streamed chunks
        (40, 64, 64, 0.5, 0, None),  # one block of each
        (333, 16, 16, 0.1, 1, 111),
    ],
)
def test_block_select_is_exact_topk(N, bq, bk, keep, special, frame_len):
    q, k, v = _qkv(1, 2, N, 16)
    g = _geom(N, bq, bk, keep, special, frame_len)
    pq, pk, kmean, *_ = prepare.sla_prepare(q, k, v, g, "elu", "none")
    lut = select.sla_block_select(pq, pk, kmean, g)
    order = virtual_key_order(g)
    scores = block_scores_reference(q, k if order is None else k[:, :, order], g)
    _assert_valid_topk(lut, scores, g.topk)
    if g.n_forced:
        assert bool((lut[..., : g.n_forced].long() == torch.arange(g.n_forced)).all())


def test_block_select_breaks_ties_by_block_order():
    """Identical keys give identical scores: the first blocks in order are taken, exactly topk of them."""
    N, D = 256, 16
    q = torch.randn(1, 1, N, D)
    k = torch.ones(1, 1, N, D)
    g = _geom(N, 32, 16, top_k=5)
    pq, pk, kmean, *_ = prepare.sla_prepare(q, k, k, g, "elu", "none")
    lut = select.sla_block_select(pq, pk, kmean, g)
    assert torch.equal(lut.long(), torch.arange(5).expand(1, 1, g.n_qblocks, 5))
    _, lut_torch = select.block_select_reference(q, k, g)  # the torch backend breaks ties the same way
    assert torch.equal(lut_torch, lut.long())


@pytest.mark.parametrize(
    "N, bq, bk, keep, special, frame_len, workspace",
    [
        (150, 32, 16, 0.3, 2, 50, 1 << 29),  # forced special block, partial last blocks
        (
            1100,
            64,
            16,
            0.2,
            0,
            None,
            20 * 2 * 69 * 3,
        ),  # 3 query blocks per tile: several tiles + a partial one
        (40, 64, 64, 0.5, 0, None, 1),  # one block of each, one row per tile
        (333, 16, 16, 0.1, 1, 111, 1 << 29),
    ],
)
def test_block_select_gemm_equals_the_stable_reference(N, bq, bk, keep, special, frame_len, workspace):
    """The cuBLAS + top-k selection gives exactly the reference table (ascending, ties to the lower
    block), whatever the tile size."""
    q, k, v = _qkv(1, 2, N, 16)
    g = _geom(N, bq, bk, keep, special, frame_len)
    pq, pk, kmean, *_ = prepare.sla_prepare(q, k, v, g, "elu", "none")
    lut = select.sla_block_select_gemm(pq, pk, kmean, g, workspace_bytes=workspace)
    scores = (pq.float() @ (pk.float() - kmean.float()[:, :, None]).transpose(-1, -2)).clone()
    scores[..., : g.n_forced] = math.inf
    assert lut.dtype == select.lut_dtype_for(g.n_kblocks)
    assert torch.equal(lut.long(), select_blocks_reference(scores, g.topk))
    assert torch.equal(lut, ops.sla_block_select_op(pq, pk, kmean, sla_ops_geom(g), "gemm"))


def test_block_select_gemm_ties_and_the_streamed_kernel_agree():
    N, D = 256, 16
    q = torch.randn(1, 1, N, D)
    k = torch.ones(1, 1, N, D)
    g = _geom(N, 32, 16, top_k=5)
    pq, pk, kmean, *_ = prepare.sla_prepare(q, k, k, g, "elu", "none")
    gemm = select.sla_block_select_gemm(pq, pk, kmean, g, workspace_bytes=32 * 16 * 3)
    assert torch.equal(gemm, select.sla_block_select(pq, pk, kmean, g))
    assert torch.equal(gemm.long(), torch.arange(5).expand(1, 1, g.n_qblocks, 5))
    with pytest.raises(ValueError, match="unknown block selection"):
        ops.sla_block_select_op(pq, pk, kmean, sla_ops_geom(g), "sorted")


def test_block_select_gemm_ignores_autocast():
    """Under bf16 autocast a float32 matmul would run in bf16 (on the H100 4 % of the rows then
    selected other blocks): the selection scores in float64 whatever the caller's autocast state."""
    N, bq, bk = 2000, 64, 16
    q, k, v = _qkv(1, 2, N, 64)
    g = _geom(N, bq, bk, 0.1, 0, None)
    pq, pk, kmean, *_ = prepare.sla_prepare(q, k, v, g, "elu", "none")
    plain = select.sla_block_select_gemm(pq, pk, kmean, g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = ops.sla_block_select_op(pq, pk, kmean, ops.geom_to_list(g), "gemm")
    assert torch.equal(plain, under_autocast)
    scores = block_scores_reference(q, k, g)
    assert torch.equal(plain.long(), select_blocks_reference(scores, g.topk))


def sla_ops_geom(g):
    return ops.geom_to_list(g)


# (B, H, N, D, bq, bk, special, frame_len, keep, feature, linear, dtype)
FORWARD_CASES = [
    (2, 2, 150, 16, 32, 16, 2, 50, 0.3, "elu", "complement", torch.float32),
    (1, 1, 200, 32, 16, 32, 0, None, 0.2, "softmax", "all", torch.float32),
    (1, 1, 40, 16, 64, 64, 0, None, 0.5, "elu", "complement", torch.float16),  # a single block
    (1, 2, 222, 16, 32, 16, 1, 111, 0.1, "elu", "complement", torch.float16),
    (1, 1, 100, 16, 32, 16, 0, None, 1.0, "elu", "complement", torch.float32),  # everything kept
    (1, 2, 200, 16, 32, 16, 0, None, 0.3, "elu", "none", torch.float32),
    # special tokens filling whole key blocks (4 frames × 4 = 16 = one block), and frames with fewer
    # patch tokens than a key block (10 < 16: the per-block patch mapping does not apply)
    (1, 2, 160, 16, 32, 16, 4, 40, 0.4, "elu", "complement", torch.float32),
    (1, 2, 120, 16, 32, 16, 2, 12, 0.4, "elu", "complement", torch.float32),
]


@pytest.mark.parametrize("case", FORWARD_CASES)
def test_forward_matches_reference(case):
    B, H, N, D, bq, bk, s, L, keep, feat, lin, dt = case
    q, k, v = _qkv(B, H, N, D, dt)
    w = torch.randn(D, D) * 0.2
    g = _geom(N, bq, bk, keep, s, L)
    pq, pk, km, sb, zb, st, zt, *_ = prepare.sla_prepare(q, k, v, g, feat, lin)
    lut = select.sla_block_select(pq, pk, km, g)
    kw = dict(feature=feat, linear=lin, eps=1e-6, scale=D**-0.5)
    o, _, _ = forward.sla_forward(q, k, v, lut, sb, zb, st, zt, w, g, fuse_proj=True, **kw)
    o_s, o_l, lse = forward.sla_forward(q, k, v, lut, sb, zb, st, zt, w, g, fuse_proj=False, **kw)
    if lin == "complement":  # the selected blocks' states recomputed in the loop instead of read back
        _, _, _, no_sb, no_zb, *_ = prepare.sla_prepare(q, k, v, g, feat, lin, store_states=False)
        assert no_sb.numel() == 0 and no_zb.numel() == 0
        o_re, _, _ = forward.sla_forward(
            q, k, v, lut, no_sb, no_zb, st, zt, w, g, fuse_proj=True, recompute_states=True, **kw
        )
        torch.testing.assert_close(o_re, o, rtol=1e-3 if dt == torch.float16 else 1e-5, atol=1e-4)
        # ... or summed per query block before the kernel (one batched GEMM, no state reads in the loop)
        s_q, z_q = domain.complement_sums(lut, sb, zb, g.n_kblocks, transpose=False)
        empty = s_q.new_empty(0)
        for pair in (1, 2):
            o_sum, _, _ = forward.sla_forward(
                q, k, v, lut, empty, empty, s_q, z_q, w, g, fuse_proj=True, summed_states=True, pair=pair,
                **kw,
            )  # fmt: skip
            torch.testing.assert_close(o_sum, o, rtol=1e-3 if dt == torch.float16 else 1e-5, atol=1e-4)
        # ... or from the augmented states ([S_j | z_j] rows), summed by one GEMM (the inference path)
        s_aug, z_none = prepare.sla_prepare(q, k, v, g, feat, lin, True, False, augmented=True)[3:5]
        assert z_none.numel() == 0 and s_aug.shape[-1] == D * D + D
        sq_aug = domain.complement_sums_augmented(lut, s_aug, g.n_kblocks)
        o_aug, _, _ = forward.sla_forward(
            q, k, v, lut, empty, empty, sq_aug, z_none, w, g, fuse_proj=True, summed_states=True, **kw
        )  # fmt: skip
        torch.testing.assert_close(o_aug, o, rtol=1e-3 if dt == torch.float16 else 1e-5, atol=1e-4)
    d64 = [t.double() for t in (q, k, v, w)]
    ref, ref_s, ref_l, _ = sla_attention_reference(*d64, g, lut=lut.long(), return_parts=True, **kw)
    tol = 2e-5 if dt == torch.float32 else 2e-3
    assert o.stride(-2) == H * D, "output is stored [B, N, H, D] so the head merge is a view"
    torch.testing.assert_close(o.double(), ref, rtol=tol, atol=tol)
    torch.testing.assert_close(o_s.double(), ref_s, rtol=tol, atol=tol)
    if lin != "none":
        torch.testing.assert_close(o_l.double(), ref_l, rtol=tol, atol=tol)
    # lse is the base-2 log-sum-exp of the selected logits
    assert lse.shape == (B, H, N) and bool(torch.isfinite(lse).all())


def test_patch_blocks_are_mapped_per_block_where_frames_allow():
    """The forward maps patch-only key blocks once per block (``patch_pair_rows``) when a block spans at
    most two frames: true at VGGT shapes and in the special-token cases above, false without special
    tokens or with frames shorter than a key block (the general per-column mapping runs there)."""
    fast = importlib.import_module("lite3r.kernels.sla_triton_common").fast_patch_map
    assert fast(_geom(1374 * 8, 128, 64, 0.1, 5, 1374))
    assert fast(_geom(300, 32, 16, special=3, frame_len=75, top_k=9))
    assert not fast(_geom(120, 32, 16, 0.4, 2, 12))
    assert not fast(_geom(200, 32, 16, 0.3))
    # the per-block division is a multiply-shift, exact below 2^24 tokens and 2^16 patches per frame
    geom = _geom(1374 * 8, 128, 64, 0.1, 5, 1374)
    assert not fast(dataclasses.replace(geom, n_tokens=1 << 24))
    assert not fast(dataclasses.replace(geom, frame_len=(1 << 16) + 6))
    patches = torch.tensor([16, 17, 1369, 4095, 1 << 16])[:, None]
    g = torch.Generator().manual_seed(0)
    starts = torch.cat(
        [torch.arange(5000), torch.randint(0, 1 << 24, (5000,), generator=g), torch.tensor([(1 << 24) - 1])]
    )
    magic = ((1 << 40) + patches - 1) // patches
    assert torch.equal((starts[None, :] * magic) >> 40, starts[None, :] // patches)


# (B, H, N, D, bq, bk, special, frame_len, top_k, linear, recompute): odd and even numbers of
# unmasked blocks, one block, a partial last block, batch > 1.
PAIR_CASES = [
    (2, 2, 150, 16, 32, 16, 2, 50, 4, "complement", False),
    (1, 2, 150, 16, 32, 16, 2, 50, 5, "complement", True),
    (1, 1, 100, 16, 32, 16, 0, None, 1, "complement", False),
    (1, 1, 100, 16, 32, 16, 0, None, 2, "all", False),
    (1, 2, 200, 16, 32, 16, 0, None, 7, "none", False),
    # many patch-only blocks after the special ones, crossing frame boundaries inside blocks
    (1, 2, 300, 16, 32, 16, 3, 75, 9, "complement", False),
    (1, 1, 300, 16, 32, 16, 3, 75, 8, "all", False),
]


@pytest.mark.parametrize("case", PAIR_CASES)
def test_forward_two_blocks_per_step_matches_reference(case):
    """PAIR = 2 (two selected key blocks per loop step) computes the same attention as PAIR = 1."""
    B, H, N, D, bq, bk, s, L, top_k, lin, recompute = case
    q, k, v = _qkv(B, H, N, D, seed=3)
    w = torch.randn(D, D) * 0.2
    g = _geom(N, bq, bk, special=s, frame_len=L, top_k=top_k)
    pq, pk, km, sb, zb, st, zt, *_ = prepare.sla_prepare(q, k, v, g, "elu", lin, store_states=not recompute)
    lut = select.sla_block_select(pq, pk, km, g)
    kw = dict(feature="elu", linear=lin, eps=1e-6, scale=D**-0.5, recompute_states=recompute)
    o1, ol1, lse1 = forward.sla_forward(q, k, v, lut, sb, zb, st, zt, w, g, fuse_proj=False, pair=1, **kw)
    o2, ol2, lse2 = forward.sla_forward(q, k, v, lut, sb, zb, st, zt, w, g, fuse_proj=False, pair=2, **kw)
    f2, _, _ = forward.sla_forward(q, k, v, lut, sb, zb, st, zt, w, g, fuse_proj=True, pair=2, **kw)
    d64 = [t.double() for t in (q, k, v, w)]
    kw_ref = {k_: v_ for k_, v_ in kw.items() if k_ != "recompute_states"}
    ref, ref_s, ref_l, _ = sla_attention_reference(*d64, g, lut=lut.long(), return_parts=True, **kw_ref)
    for got, want in ((o1, ref_s), (o2, ref_s), (f2, ref)):
        torch.testing.assert_close(got.double(), want, rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(lse2, lse1, rtol=1e-6, atol=1e-6)
    if lin != "none":
        torch.testing.assert_close(ol2.double(), ref_l, rtol=2e-5, atol=2e-5)
        torch.testing.assert_close(ol2, ol1, rtol=1e-5, atol=1e-6)


# (B, H, N, D, bq, bk, special, frame_len, keep, feature, linear)
BACKWARD_CASES = [
    (1, 2, 100, 16, 32, 16, 2, 50, 0.3, "elu", "complement"),
    (2, 1, 100, 16, 16, 32, 0, None, 0.4, "softmax", "all"),
    (1, 2, 120, 16, 32, 16, 1, 60, 0.3, "softmax", "complement"),
    (1, 2, 90, 16, 16, 16, 0, None, 0.3, "elu", "none"),
    # frames shorter than a key block: the dQ kernel's general mapping everywhere
    (1, 2, 120, 16, 32, 16, 2, 12, 0.4, "elu", "complement"),
]


@pytest.mark.parametrize("case", BACKWARD_CASES)
def test_backward_matches_reference(case):
    B, H, N, D, bq, bk, s, L, keep, feat, lin = case
    q, k, v = _qkv(B, H, N, D, requires_grad=True)
    w = (torch.randn(D, D) * 0.3).requires_grad_()
    g = _geom(N, bq, bk, keep, s, L)
    kw = dict(feature=feat, linear=lin, eps=1e-6, scale=D**-0.5)
    o = ops.sla_attention(q, k, v, w, g, **kw)
    grad_out = torch.randn_like(o)
    o.backward(grad_out)
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v, w)]
    ref = sla_attention_reference(*leaves, g, **kw)
    ref.backward(grad_out.double())
    torch.testing.assert_close(o.double(), ref.detach(), rtol=1e-5, atol=1e-5)
    for name, a, r in zip("qkvw", (q, k, v, w), leaves):
        if name == "w" and lin == "none":
            assert a.grad is None
            continue
        torch.testing.assert_close(a.grad.double(), r.grad, rtol=1e-4, atol=1e-5, msg=f"d{name}")


def test_weight_only_gradient_path():
    """Frozen backbone (q, k, v without grad): only proj_lin gets a gradient, no sparse backward."""
    q, k, v = _qkv(1, 2, 96, 16)
    w = (torch.randn(16, 16, generator=torch.Generator().manual_seed(1)) * 0.3).requires_grad_()
    g = _geom(96, 32, 16, 0.3)
    kw = dict(feature="elu", linear="complement", eps=1e-6, scale=0.25)
    ops.sla_attention(q, k, v, w, g, **kw).square().sum().backward()
    w2 = w.detach().double().requires_grad_()
    sla_attention_reference(q.double(), k.double(), v.double(), w2, g, **kw).square().sum().backward()
    # float32 accumulation over 96 tokens × 2 heads: absolute errors of a few 1e-6 (seen: 4.4e-6)
    torch.testing.assert_close(w.grad.double(), w2.grad, rtol=1e-4, atol=2e-5)


def test_inverse_lut_lists_the_selecting_query_blocks():
    lut = torch.tensor([[[[0, 2], [1, 2], [0, 1]]]])  # B=H=1, 3 query blocks, top-2 of 3 key blocks
    qlist, offsets = dkdv.inverse_lut(lut, 3)
    lists = [qlist[offsets[j] : offsets[j + 1]].tolist() for j in range(3)]
    assert lists == [[0, 2], [1, 2], [0, 1]]


def test_custom_ops_trace_without_graph_breaks():
    """The ops have fake kernels, so a model using them compiles as one graph (eager backend here)."""
    q, k, v = _qkv(1, 2, 96, 16)
    w = torch.randn(16, 16) * 0.2
    g = _geom(96, 32, 16, 0.3)
    kw = dict(feature="elu", linear="complement", eps=1e-6, scale=0.25)

    def f(q, k, v, w):
        return ops.sla_attention(q, k, v, w, g, **kw)

    torch._dynamo.reset()
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v, w), f(q, k, v, w))


def test_autotuning_is_per_variant_and_work_bucket_not_per_length(monkeypatch):
    """The autotuner is keyed on the compile-time variant, the dtypes and a coarse work bucket (selected
    blocks per query block ≤ 16 / ≤ 128 / more), never on the sequence length; the size integers are not
    specialised (no recompiles per length either); configs are pruned to the head_dim class. Routed
    through the autotuners in the interpreter, with a counting stand-in for the timing."""
    common = K["sla_triton_common"]
    monkeypatch.setattr(common, "use_autotuner", lambda x: True)
    timed = []

    def fake_bench(kernel_call, quantiles):
        timed.append(1)
        return [1.0, 1.0, 1.0]

    for tuner in forward._sla_forward_kernel_tuned:
        assert tuner.fn is forward._sla_forward_kernel  # one jitted kernel: compiled binaries are shared
        assert not {"N", "n_qblocks", "n_kblocks", "topk"} & set(tuner.keys)
        monkeypatch.setattr(tuner, "_do_bench", fake_bench)
        monkeypatch.setattr(tuner, "cache", {})
    kw = dict(feature="elu", linear="none", eps=1e-6, scale=0.25)
    none = torch.empty(0)

    def run(N, keep):
        q, k, v = _qkv(1, 1, N, 16, seed=N)
        g = _geom(N, 32, 16, keep)
        pq, pk, km, *_ = prepare.sla_prepare(q, k, v, g, "elu", "none")
        lut = select.sla_block_select(pq, pk, km, g)
        o, _, _ = forward.sla_forward(q, k, v, lut, none, none, none, none, None, g, fuse_proj=True, **kw)
        ref = sla_attention_reference(q, k, v, None, g, lut=lut.long(), **kw)
        torch.testing.assert_close(o, ref, rtol=2e-5, atol=2e-5)
        return g.topk

    n_small = len(common.CONFIGS["forward"]["small"])
    assert run(100, 0.3) <= 16 and len(timed) == n_small  # first launch: tuned
    assert run(150, 0.3) <= 16 and len(timed) == n_small  # another length, same bucket: not re-tuned
    assert run(320, 0.9) > 16 and len(timed) == 2 * n_small  # next bucket: tuned once more
    assert run(330, 0.9) > 16 and len(timed) == 2 * n_small

    prune = common.prune_for("forward")
    cfgs = common.all_configs("forward")
    pairs = lambda cs: sorted((c.num_warps, c.num_stages, c.maxnreg or 0, c.kwargs["PAIR"]) for c in cs)
    # head_dim 64 with a linear branch also tries a 128-register cap (two programs per SM), and both
    # one and two key blocks per loop step
    assert pairs(prune(cfgs, {}, HEAD_DIM=64, LINEAR=2)) == [
        (8, 2, 0, 1), (8, 2, 0, 2), (8, 3, 0, 1), (8, 3, 0, 2), (8, 3, 128, 1), (8, 3, 128, 2),
        (8, 4, 0, 1), (8, 4, 128, 1),
    ]  # fmt: skip
    assert pairs(prune(cfgs, {}, HEAD_DIM=64, LINEAR=0)) == [
        (4, 3, 0, 1), (8, 2, 0, 2), (8, 3, 0, 1), (8, 3, 0, 2), (8, 4, 0, 1)
    ]  # fmt: skip
    assert pairs(prune(cfgs, {}, HEAD_DIM=128, LINEAR=2)) == [(8, 2, 0, 1), (8, 3, 0, 1)]
    assert all(2 <= len(v) <= 8 for table in common.CONFIGS.values() for v in table.values())


def test_kernels_compile_for_hopper():
    """Triton front end + ptxas for sm_90a, no GPU needed: catches what the interpreter cannot (dot shapes,
    layouts, shared memory). One config per kernel at head_dim 64; the full grid is
    ``python -m lite3r.kernels.sla_compile_check --head-dims 64 128``."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, "-m", "lite3r.kernels.sla_compile_check", "--quick"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # forward ×2, TMA forward, backward dQ / dK/dV, prepare (+ fused-qk), qk-norm/RoPE (pooled q,
    # virtual k), select, complement map (+ transposed), row sums, selection scores, row top-k
    assert proc.stdout.count("ok ") == 15


def test_sass_mix_probe_counts_the_forward_loops(tmp_path):
    """benchmarks/probes/sla_sass_mix.py (sm_90a SASS, no GPU) finds the forward's MMA loops and counts
    one exponential per score: 128 × 128 scores over 256 threads = 64 per thread per pair iteration (plus
    the rescale factors); the per-block mapping issues fewer instructions than the per-column one and no
    integer division."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = tmp_path / "mix.json"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(
        [sys.executable, os.path.join(root, "benchmarks", "probes", "sla_sass_mix.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    loops = json.loads(out.read_text())["loops"]
    hot = {name: max(v, key=lambda loop: loop["opcodes"]["HGMMA"]) for name, v in loops.items()}
    for loop in hot.values():
        assert 64 <= loop["opcodes"]["MUFU"] <= 72 and loop["opcodes"]["HGMMA"] >= 8
    per_block = min(
        v["instructions"] for v in loops["special, per-block patch mapping"] if v["opcodes"]["HGMMA"] == 12
    )
    per_column = hot["special, per-column mapping"]["instructions"]
    assert per_block < per_column
    # the per-block division is a multiply-shift whose constant the compiler hoists: no integer-division
    # sequence (I2F + MUFU.RCP) or division call is left in the patch-mapped pair loop
    fast = next(v for v in loops["special, per-block patch mapping"] if v["instructions"] == per_block)
    assert not any(fast["opcodes"].get(op) for op in ("I2F", "F2I", "CALL"))


# ------------------------------------------------------------------------------------------- GPU
VGGT_FRAME = 1374  # tokens per frame at 518 px (1 camera + 4 registers + 37·37 patches)


def _rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.gpu
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("linear", ["complement", "all"])
def test_gpu_forward_bf16_vggt_shapes(D, linear):
    frames, H = 4, 1024 // D
    N = frames * VGGT_FRAME
    q, k, v = _qkv(1, H, N, D, torch.bfloat16, "cuda")
    w = torch.randn(D, D, device="cuda") * 0.05
    g = _geom(N, 128, 64, 0.1, 5, VGGT_FRAME)
    kw = dict(feature="elu", linear=linear, eps=1e-6, scale=D**-0.5)
    with torch.no_grad():
        pq, pk, km, *_ = prepare.sla_prepare(q, k, v, g, "elu", linear)
        lut = select.sla_block_select(pq, pk, km, g)
        o = ops.sla_attention(q, k, v, w, g, **kw)
        ref = sla_attention_reference(q.float(), k.float(), v.float(), w, g, lut=lut.long(), **kw)
    assert _rel_err(o, ref) < 1e-2
    order = virtual_key_order(g, "cuda")
    scores = block_scores_reference(q, k[:, :, order], g)
    _assert_valid_topk_tolerant(lut, scores, g.topk)


def _assert_valid_topk_tolerant(lut, scores, topk, tol=1e-4):
    """As _assert_valid_topk, up to ``tol`` × the largest finite |score| of the row (the kernel scores in
    tf32x3 on the GPU, the reference in float32)."""
    lut = lut.long()
    assert lut.shape[-1] == topk
    assert bool((lut.diff(dim=-1) > 0).all())
    picked = scores.gather(-1, lut)
    mask = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, lut, True)
    rest = scores.masked_fill(mask, -math.inf).amax(-1)
    scale = scores.masked_fill(~torch.isfinite(scores), 0).abs().amax(-1) + 1e-6
    assert bool((picked.amin(-1) >= rest - tol * scale).all())
    forced = torch.isinf(scores) & (scores > 0)
    assert bool((mask | ~forced).all()), "every forced (special-token) block is selected"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("linear", ["complement", "all", "none"])
def test_gpu_backward_vs_float32_reference(dtype, linear):
    frames, H, D = 3, 4, 64
    N = frames * VGGT_FRAME
    q, k, v = _qkv(2, H, N, D, dtype, "cuda", requires_grad=True)
    w = (torch.randn(D, D, device="cuda") * 0.1).requires_grad_()
    g = _geom(N, 128, 64, 0.2, 5, VGGT_FRAME)
    kw = dict(feature="elu", linear=linear, eps=1e-6, scale=D**-0.5)
    o = ops.sla_attention(q, k, v, w, g, **kw)
    grad_out = torch.randn_like(o)
    o.backward(grad_out)
    with torch.no_grad():
        pq, pk, km, *_ = prepare.sla_prepare(q, k, v, g, "elu", "none")
        lut = select.sla_block_select(pq, pk, km, g)
    leaves = [t.detach().float().requires_grad_() for t in (q, k, v, w)]
    ref = sla_attention_reference(*leaves, g, lut=lut.long(), **kw)
    ref.backward(grad_out.float())
    assert _rel_err(o, ref) < 1e-2
    for name, a, r in zip("qkvw", (q, k, v, w), leaves):
        if name == "w" and linear == "none":
            continue
        assert _rel_err(a.grad, r.grad) < 3e-2, f"d{name}"


def _long_selection_inputs(frames=200, H=16, D=64):
    """Pooled q/k of a 200-frame VGGT sequence (≈4.3k key blocks) on the GPU, and its geometry."""
    g = _geom(frames * VGGT_FRAME, 128, 64, 0.1, 5, VGGT_FRAME)
    pq = torch.randn(1, H, g.n_qblocks, D, device="cuda")
    pk = torch.randn(1, H, g.n_kblocks, D, device="cuda")
    km = torch.randn(1, H, D, device="cuda")
    return g, pq, pk, km


def _lut_and_extra_bytes(select_fn, pq, pk, km, g):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    lut = select_fn(pq, pk, km, g)
    torch.cuda.synchronize()
    return lut, torch.cuda.max_memory_allocated() - base


def _assert_long_selection_valid(lut, pq, pk, km, g):
    scores = pq[:, :, :64] @ (pk - km[:, :, None]).transpose(-1, -2)
    scores[..., : g.n_forced] = math.inf
    _assert_valid_topk_tolerant(lut[:, :, :64], scores, g.topk)


@pytest.mark.gpu
def test_gpu_block_select_gemm_long_sequence():
    """The cuBLAS + top-k selection equals the streamed kernel up to near-ties, and its extra memory
    stays within the LUT + one bounded score tile (+ top-k scratch)."""
    g, pq, pk, km = _long_selection_inputs()
    lut, extra = _lut_and_extra_bytes(select.sla_block_select_gemm, pq, pk, km, g)
    assert extra <= lut.numel() * lut.element_size() + 2 * select.SELECT_WORKSPACE_BYTES
    _assert_long_selection_valid(lut, pq, pk, km, g)
    streamed = select.sla_block_select(pq, pk, km, g)
    assert (lut == streamed).float().mean().item() > 0.99  # float64 vs tf32x3 scores: near-ties only


@pytest.mark.gpu
def test_gpu_block_select_long_sequence_memory():
    """Streamed selection: extra memory = pooled q/k + the LUT only."""
    g, pq, pk, km = _long_selection_inputs()
    lut, extra = _lut_and_extra_bytes(select.sla_block_select, pq, pk, km, g)
    assert extra <= lut.numel() * lut.element_size() + (1 << 20)
    _assert_long_selection_valid(lut, pq, pk, km, g)
