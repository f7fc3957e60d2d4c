"""The fused qk-norm + 2-D RoPE kernel against its float32 reference and the model's PyTorch path.

On CPU the kernel runs in the Triton interpreter (no tl.dot here, so bf16 is exact too); on a GPU it
is compiled. Shapes cover a partial last row block, fewer tokens than one block, one token, batch > 1,
several heads and the strided q/k views of the qkv projection's output.
"""

from __future__ import annotations

import importlib

from fp8_triton_env import interpreting, set_interpret_env

set_interpret_env()  # before anything imports triton (collection time)

import pytest  # noqa: E402
import torch  # noqa: E402

from lite3r.attention.dense import MultiHeadAttention, set_qk_kernel  # noqa: E402
from lite3r.errors import UnsupportedError  # noqa: E402
from lite3r.models.layers.rope import RotaryPositionEmbedding2D, patch_positions  # noqa: E402

DEVICE = "cpu" if interpreting() else "cuda"


@pytest.fixture(scope="module")
def kmod():
    mod = importlib.import_module("lite3r.kernels.qk_norm_rope")
    if interpreting() and not getattr(mod, "__interpreted__", False):
        mod = importlib.reload(mod)  # decorated again, now under TRITON_INTERPRET=1
        mod.__interpreted__ = True
    return mod


def _qk(B, N, H, D, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    qkv = (torch.randn(B, N, 3, H, D, generator=g) * 3 + 0.5).to(DEVICE, dtype)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # strided views, as project_qkv makes them
    return q, k, v


def _norm(D, seed, eps):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(D, generator=g).to(DEVICE), torch.randn(D, generator=g).to(DEVICE), eps)


def _tables(B, N, D, special=5):
    side = int((max(N - special, 1)) ** 0.5) + 1
    pos = patch_positions(B, side, side, special)[:, :N].to(DEVICE)
    t = RotaryPositionEmbedding2D().tables(pos, D)
    return t.cos, t.sin


@pytest.mark.parametrize(
    "B,N,H,D",
    [(1, 1, 1, 16), (2, 37, 3, 16), (1, 64, 2, 64), (2, 130, 2, 64), (1, 70, 1, 128), (3, 9, 4, 32)],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_kernel_matches_reference(kmod, B, N, H, D, dtype):
    q, k, _ = _qk(B, N, H, D, dtype)
    qn, kn = _norm(D, 1, 1e-6), _norm(D, 2, 1e-5)
    tables = _tables(B, N, D)
    qo, ko = kmod.qk_norm_rope(q, k, qn, kn, tables, dtype)
    assert qo.shape == q.shape and qo.dtype == dtype and qo.stride(-1) == 1
    tol = 2e-5 if dtype == torch.float32 else (4e-3 if dtype == torch.float16 else 3e-2)
    for out, x, n in ((qo, q, qn), (ko, k, kn)):
        ref = kmod.qk_norm_rope_reference(x, n, tables, torch.float32)
        torch.testing.assert_close(out.float(), ref, rtol=tol, atol=tol * 4)


@pytest.mark.parametrize("norm,rope", [(True, False), (False, True), (False, False)])
def test_norm_and_rope_are_each_optional(kmod, norm, rope):
    B, N, H, D = 2, 21, 2, 16
    q, k, _ = _qk(B, N, H, D, torch.float32, seed=3)
    qn, kn = (_norm(D, 4, 1e-6), _norm(D, 5, 1e-6)) if norm else (None, None)
    tables = _tables(B, N, D) if rope else None
    qo, ko = kmod.qk_norm_rope(q, k, qn, kn, tables, torch.float32)
    torch.testing.assert_close(
        qo, kmod.qk_norm_rope_reference(q, qn, tables, torch.float32), rtol=2e-5, atol=1e-5
    )
    torch.testing.assert_close(
        ko, kmod.qk_norm_rope_reference(k, kn, tables, torch.float32), rtol=2e-5, atol=1e-5
    )


def test_tables_of_batch_one_are_shared_by_every_sequence(kmod):
    """Frame attention: B·S sequences, one position grid ([1, 1, N, D] tables)."""
    B, N, H, D = 3, 19, 2, 16
    q, k, _ = _qk(B, N, H, D, torch.float32, seed=6)
    cos, sin = _tables(1, N, D)
    qo, ko = kmod.qk_norm_rope(q, k, None, None, (cos, sin), torch.float32)
    for out, x in ((qo, q), (ko, k)):
        ref = kmod.qk_norm_rope_reference(x, None, (cos, sin), torch.float32)
        torch.testing.assert_close(out, ref, rtol=2e-5, atol=1e-5)


def test_vggt_forward_is_the_same_with_the_kernel(kmod):
    """The whole model (frame attention with shared tables, global attention with per-batch ones)."""
    from lite3r.training.tiny import build_tiny

    model = build_tiny("micro", seed=0).to(DEVICE).eval()
    images = torch.rand(1, 2, 3, 56, 56, device=DEVICE)
    with torch.no_grad():
        ref = model(images)
        set_qk_kernel(model.aggregator, "triton")
        got = model(images)
    for key in ("depth", "pose_enc"):
        torch.testing.assert_close(got[key], ref[key], rtol=1e-4, atol=1e-4)


def test_empty_sequence(kmod):
    q, k, _ = _qk(1, 0, 2, 16, torch.float32)
    qo, ko = kmod.qk_norm_rope(q, k, None, None, None, torch.float32)
    assert qo.shape == (1, 2, 0, 16) and ko.shape == (1, 2, 0, 16)


def test_bad_inputs_are_refused(kmod):
    q, k, _ = _qk(1, 8, 2, 16, torch.float32)
    with pytest.raises(ValueError, match="power of two"):
        kmod.qk_norm_rope(q[..., :12], k[..., :12], None, None, None, torch.float32)
    with pytest.raises(ValueError, match="both q and k"):
        kmod.qk_norm_rope(q, k, _norm(16, 0, 1e-6), None, None, torch.float32)
    cos, sin = _tables(1, 8, 16)
    with pytest.raises(ValueError, match="tables"):
        kmod.qk_norm_rope(q, k, None, None, (cos[:, :, :4], sin[:, :, :4]), torch.float32)
    with pytest.raises(ValueError, match="tables"):
        kmod.qk_norm_rope(
            q, k, None, None, (cos.expand(2, -1, -1, -1), sin.expand(2, -1, -1, -1)), torch.float32
        )


def _attention(D=16, H=2):
    torch.manual_seed(0)
    rope = RotaryPositionEmbedding2D()
    attn = MultiHeadAttention(H * D, H, qk_norm=True, qk_norm_eps=1e-6, rope=rope).to(DEVICE)
    with torch.no_grad():  # non-trivial norms
        for m in (attn.q_norm, attn.k_norm):
            m.weight.normal_()
            m.bias.normal_()
    return attn


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attention_module_same_qkv_with_either_path(kmod, dtype):
    attn = _attention().to(dtype)
    B, N, D = 2, 29, 16
    x = torch.randn(B, N, 32, device=DEVICE, dtype=dtype)
    tables = RotaryPositionEmbedding2D().tables(patch_positions(B, 4, 6, 5).to(DEVICE), D)
    with torch.no_grad():
        ref = attn.project_qkv(x, tables)
        set_qk_kernel(attn, "triton")
        got = attn.project_qkv(x, tables)
        got_pos = attn.project_qkv(x, patch_positions(B, 4, 6, 5).to(DEVICE))  # tables made inside
    # The PyTorch path rounds the normalised q/k to the model dtype before RoPE; the kernel keeps them
    # in float32 registers: the two differ by that one rounding.
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    for a, b, c in zip(got, ref, got_pos, strict=True):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a.float(), b.float(), rtol=tol, atol=tol)
        torch.testing.assert_close(c, a, rtol=0, atol=0)


def test_autograd_runs_the_pytorch_ops(kmod):
    attn = _attention()
    set_qk_kernel(attn, "triton")
    x = torch.randn(1, 12, 32, device=DEVICE, requires_grad=True)
    q, k, _v = attn.project_qkv(x, patch_positions(1, 3, 3, 3).to(DEVICE))
    (q.sum() + k.sum()).backward()  # the kernel has no backward: this would fail through it
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_compiled_attention_traces_the_kernel_as_one_op(kmod):
    attn = _attention()
    set_qk_kernel(attn, "triton")
    x = torch.randn(1, 12, 32, device=DEVICE)
    pos = patch_positions(1, 3, 3, 3).to(DEVICE)
    with torch.no_grad():
        eager = attn(x, pos)
        compiled = torch.compile(attn, backend="aot_eager", fullgraph=True)(x, pos)
    torch.testing.assert_close(compiled, eager)


def test_set_qk_kernel_refuses_what_it_cannot_run():
    attn = _attention()
    attn.q_norm = torch.nn.RMSNorm(16)
    with pytest.raises(UnsupportedError, match="LayerNorm"):
        set_qk_kernel(attn, "triton")
    assert attn.qk_kernel == "torch"
    with pytest.raises(ValueError, match="unknown qk kernel"):
        set_qk_kernel(attn, "cuda")


@pytest.mark.gpu
@pytest.mark.skipif(interpreting(), reason="needs a CUDA GPU")
def test_gpu_vggt_global_shape_matches_the_pytorch_path(kmod):
    """VGGT global attention shape (16 heads × 64, 4 frames of 1,374 tokens), bf16."""
    H, D, frames, per = 16, 64, 4, 1374
    attn = _attention(D=D, H=H).to(torch.bfloat16)
    x = torch.randn(1, frames * per, H * D, device="cuda", dtype=torch.bfloat16)
    pos = torch.cat([patch_positions(1, 37, 37, 5)] * frames, dim=1).cuda()
    with torch.no_grad():
        ref = attn.project_qkv(x, pos)
        set_qk_kernel(attn, "triton")
        got = attn.project_qkv(x, pos)
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a.float(), b.float(), rtol=3e-2, atol=3e-2)


def test_engine_choice_of_the_qk_path():
    from lite3r.engine.policy import resolve_qk_kernel
    from lite3r.eval.variants import parse_variant

    assert parse_variant("dense:bf16:qk=torch").qk_kernel == "torch"
    assert parse_variant("lite3r:fp8").qk_kernel is None  # the engine's default
    assert resolve_qk_kernel(None, torch.device("cpu")) == "torch"
    assert resolve_qk_kernel(None, torch.device("cuda")) == "triton"
    with pytest.raises(UnsupportedError, match="CUDA"):
        resolve_qk_kernel("triton", torch.device("cpu"))
