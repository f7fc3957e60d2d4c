"""The Gluon (wgmma) SLA forward kernel against the Triton kernel and the float32 reference (GPU, sm_90).

On CPU only the sm_90a compile runs (no GPU needed): it catches layout, shape and shared-memory errors
and checks that the P·V wait stays after the softmax in the compiled loop.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from lite3r.kernels.sla_reference import sla_attention_reference, sla_geometry

HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9
needs_sm90 = pytest.mark.skipif(not HOPPER, reason="needs an sm_90 (Hopper) GPU")


def _qkv(B, H, N, D, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, N, 3, H, D, generator=g).to(device="cuda", dtype=torch.bfloat16)
    return x.permute(2, 0, 3, 1, 4).unbind(0)


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


# (B, H, N, special, frame_len, keep, top_k): tiles of two key blocks, so top_k 1/2/3/4/5/7 give one
# tile, one full tile, an odd last tile, the peeled tile only, one loop step, and prefetches past the end
CASES = [
    (1, 2, 4 * 1374, 5, 1374, 0.1, None),  # VGGT frames: special tokens first, partial last key block
    (2, 3, 1000, 0, None, None, 1),  # one block: first tile = last tile, half empty
    (1, 2, 300, 2, 100, None, 2),  # frames of 100 tokens: blocks span frames, partial last block
    (1, 2, 700, 5, 350, None, 3),
    (1, 1, 2000, 0, None, None, 4),
    (1, 2, 2000, 5, 400, None, 5),
    (2, 1, 3000, 1, 1000, None, 7),
    (1, 1, 100, 0, None, None, 2),  # one partial query block, every key block selected
]


@pytest.mark.gpu
@needs_sm90
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("linear", ["complement", "all", "none"])
def test_wgmma_forward_matches_triton_and_reference(case, linear):
    from lite3r.kernels import sla_forward, sla_forward_hopper, sla_linear_domain, sla_ops

    B, H, N, special, frame_len, keep, top_k = case
    D = 64
    q, k, v = _qkv(B, H, N, D)
    g = sla_geometry(
        N, block_q=128, block_k=64, keep_ratio=keep, top_k_blocks=top_k,
        special_tokens_per_frame=special, frame_len=frame_len,
    )  # fmt: skip
    gl = sla_ops.geom_to_list(g)
    w = torch.randn(D, D, device="cuda") * 0.05
    kw = dict(feature="elu", linear=linear, eps=1e-6, scale=D**-0.5)
    none = q.new_empty(0, dtype=torch.float32)
    with torch.no_grad():
        pq, pk, km, sb, zb, st, zt = sla_ops.sla_prepare_op(q, k, v, gl, "elu", linear, True, True)
        lut = sla_ops.sla_block_select_op(pq, pk, km, gl)
        if linear == "complement":
            s_q, z_q = sla_linear_domain.complement_sums(lut, sb, zb, g.n_kblocks, transpose=False)
        else:
            s_q, z_q = st, zt
        summed = linear == "complement"
        args = (q, k, v, lut)
        outs = {}
        for fuse in (True, False):
            tri = sla_forward.sla_forward(
                *args, none, none, s_q, z_q, w, g, fuse_proj=fuse, summed_states=summed, **kw
            )
            for ws, consumers, fence in (
                (True, 2, True),
                (True, 2, False),
                (True, 1, True),
                (False, 2, True),
            ):
                wg = sla_forward_hopper.sla_forward_wgmma(
                    *args, s_q, z_q, w, g, fuse_proj=fuse, summed_states=summed, fence_softmax=fence,
                    warp_specialized=ws, consumers=consumers, **kw,
                )  # fmt: skip
                for name, a, b in zip(("o", "o_l", "lse"), wg, tri):
                    assert a.shape == b.shape and a.dtype == b.dtype, name
                    if a.numel():
                        assert torch.isfinite(a).all(), name
                        tol = 1e-5 if name == "lse" else 1e-2
                        assert _rel(a, b) < tol, (name, fuse, ws, consumers, fence, _rel(a, b))
            outs[fuse] = wg
        ref = sla_attention_reference(q.float(), k.float(), v.float(), w, g, lut=lut.long(), **kw)
    assert _rel(outs[True][0], ref) < 1e-2


@pytest.mark.gpu
@needs_sm90
def test_wgmma_forward_refuses_what_it_does_not_cover():
    from lite3r.kernels import sla_forward_hopper

    q, k, v = _qkv(1, 1, 512, 128)
    g = sla_geometry(512, block_q=128, block_k=64, keep_ratio=None, top_k_blocks=2)
    none = q.new_empty(0, dtype=torch.float32)
    with pytest.raises(ValueError, match="head_dim 128"):
        sla_forward_hopper.sla_forward_wgmma(
            q, k, v, none, none, none, None, g, feature="elu", linear="none", eps=1e-6, scale=0.1,
            fuse_proj=True,
        )  # fmt: skip


def test_wgmma_forward_compiles_for_sm90a_and_overlaps_the_softmax():
    """sm_90a compile on any machine: no spills, fits shared memory, and with the fenced softmax the
    compiled loop waits for P·V only after the softmax's exponentials (the unfenced loop does not)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = (
        "import json; from lite3r.kernels import sla_forward_hopper as H; "
        "print(json.dumps([H.compile_report(fence, warp_specialized=ws) for ws in (True, False) "
        "for fence in (True, False)]))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    import json

    reports = json.loads(out.stdout.strip().splitlines()[-1])
    for r in reports:
        assert r["spill_bytes"] == 0 and r["shared"] <= 227 * 1024, r
    for fenced, unfenced in (reports[:2], reports[2:]):
        assert fenced["exp_between_waits"] >= 64, fenced
        assert unfenced["exp_between_waits"] < fenced["exp_between_waits"]
