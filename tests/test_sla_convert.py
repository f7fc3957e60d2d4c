"""lite3r.convert: which sites are swapped, weight reuse, the report, keep-100 % = dense, the compat mode,
and conversion of the reduced parity VGGT."""

from __future__ import annotations

import sla_triton_env

sla_triton_env.set_interpret_env()  # before anything imports triton (collection time)

import json  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from conftest import PARITY_DIR  # noqa: E402
from torch import nn  # noqa: E402

from lite3r.attention.dense import MultiHeadAttention  # noqa: E402
from lite3r.attention.sla import SparseLinearAttention  # noqa: E402
from lite3r.convert import Lite3RConfig, convert, describe_conversion  # noqa: E402
from lite3r.errors import UnsupportedError  # noqa: E402
from lite3r.models.layers.block import Block  # noqa: E402
from lite3r.models.sites import AttentionSite  # noqa: E402

sla_triton_env.load_sla_kernels()


class TwoSiteModel(nn.Module):
    """Frame + global blocks over frames of 1 special token + P patch tokens, and a camera trunk."""

    def __init__(self, dim=32, heads=2, depth=2, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.frame_blocks = nn.ModuleList(
            Block(dim, heads, qk_norm=True, layer_scale_init=0.5) for _ in range(depth)
        )
        self.global_blocks = nn.ModuleList(
            Block(dim, heads, qk_norm=True, layer_scale_init=0.5) for _ in range(depth)
        )
        self.cam_trunk = Block(dim, heads, layer_scale_init=0.5)

    def attention_sites(self):
        d = len(self.frame_blocks)
        return {
            "frame": AttentionSite("frame", [f"frame_blocks.{i}.attn" for i in range(d)], False, 1, True),
            "global": AttentionSite("global", [f"global_blocks.{i}.attn" for i in range(d)], True, 1, True),
            "camera": AttentionSite("camera", ["cam_trunk.attn"], True, 0, False),
        }

    def forward(self, x):  # x [B, S, n, C]
        B, S, n, C = x.shape
        x = x.reshape(B * S, n, C)
        for fb, gb in zip(self.frame_blocks, self.global_blocks):
            x = fb(x, frame_len=n)
            x = gb(x.reshape(B, S * n, C), frame_len=n).reshape(B * S, n, C)
        cam = self.cam_trunk(x.reshape(B, S, n, C)[:, :, 0])
        return x.reshape(B, S, n, C), cam


def test_default_converts_the_cross_view_trunk_sites_only():
    model = TwoSiteModel()
    qkv = model.global_blocks[0].attn.qkv
    out = convert(model, Lite3RConfig(block_q=16, block_k=16))
    assert out is model
    assert all(isinstance(b.attn, SparseLinearAttention) for b in model.global_blocks)
    assert not any(isinstance(b.attn, SparseLinearAttention) for b in model.frame_blocks)
    assert type(model.cam_trunk.attn) is MultiHeadAttention  # cross-view but a head, not the trunk
    assert model.global_blocks[0].attn.qkv is qkv  # pretrained weights reused, not copied
    assert model.global_blocks[0].attn.special_tokens_per_frame == 1
    assert model.global_blocks[0].attn.config.backend == "torch"  # chosen from the CPU device
    other = convert(TwoSiteModel(), Lite3RConfig(), device="cuda")  # converted before moving to the GPU
    assert other.global_blocks[0].attn.config.backend == "triton"
    report = describe_conversion(model)
    rows = {r.site: r for r in report.sites}
    assert rows["global"].modules == 2 and rows["global"].trainable_params == 2 * 16 * 16
    assert rows["frame"].modules == 0 and report.converted == 2
    assert "global ×2" in model.attention_description and "10% kept" in model.attention_description
    assert "| global | 2/2 |" in report.table()
    trainable = [n for n, p in model.named_parameters() if "proj_lin" in n]
    assert trainable == ["global_blocks.0.attn.proj_lin.weight", "global_blocks.1.attn.proj_lin.weight"]


def test_triton_conversion_logs_the_complement_state_path(caplog):
    """complement_states is a runtime choice (not saved with adapters): the path that runs is logged."""
    caplog.set_level("INFO", logger="lite3r.convert")
    model = convert(TwoSiteModel(), Lite3RConfig(complement_states="stored"), device="cuda")
    assert model.global_blocks[0].attn.config.complement_states == "stored"
    assert "Triton inference with complement states stored" in caplog.text
    assert Lite3RConfig(linear="all").runtime_path() == "no complement states"


def test_config_from_a_mapping_and_errors():
    cfg = Lite3RConfig(**{"sites": ["global"], "keep_ratio": 0.1})  # training/config.py DEFAULT_CONVERSION
    assert cfg.sites == ("global",) and cfg.sla_config("triton").keep_ratio == 0.1
    assert Lite3RConfig(**cfg.to_dict()) == cfg
    with pytest.raises(UnsupportedError, match="unknown attention site"):
        convert(TwoSiteModel(), Lite3RConfig(sites=["cross_view"]))
    model = convert(TwoSiteModel(), Lite3RConfig())
    with pytest.raises(UnsupportedError, match="already"):
        convert(model, Lite3RConfig())
    with pytest.raises(UnsupportedError, match="compat"):
        Lite3RConfig(compat=True, linear="complement", feature_map="softmax")
    with pytest.raises(UnsupportedError, match="attention sites"):
        convert(nn.Linear(2, 2), Lite3RConfig())


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_keep_everything_matches_the_dense_model(backend):
    dense = TwoSiteModel(depth=1)
    sites = ["frame", "global", "camera"] if backend == "torch" else ["global", "camera"]
    sla = convert(
        TwoSiteModel(depth=1),
        Lite3RConfig(sites=sites, keep_ratio=1.0, block_q=16, block_k=16, backend=backend),
    )
    x = torch.randn(1, 3, 17, 32)
    with torch.no_grad():
        (ref, ref_cam), (out, out_cam) = dense(x), sla(x)
    # bf16 tolerance (the models run in float32 here)
    torch.testing.assert_close(out, ref, rtol=1.6e-2, atol=1e-3)
    torch.testing.assert_close(out_cam, ref_cam, rtol=1.6e-2, atol=1e-3)
    assert describe_conversion(sla).converted == len(sites)


def test_compat_converts_every_site_and_loads_the_authors_keys():
    model = convert(TwoSiteModel(), Lite3RConfig(compat=True))
    report = describe_conversion(model)
    assert report.converted == 5 and "token top-k 30%" in model.attention_description
    sd = model.state_dict()
    assert {k for k in sd if k.endswith((".proj_lin.weight", ".lam"))} == {
        f"{m}.{leaf}"
        for site in model.attention_sites().values()
        for m in site.modules
        for leaf in ("proj_lin.weight", "lam")
    }
    authors = {k: (torch.randn_like(v) if k.endswith("proj_lin.weight") else v) for k, v in sd.items()}
    model.load_state_dict(authors, strict=True)
    x = torch.randn(1, 2, 9, 32)
    with torch.no_grad():
        out, _ = model(x)
    assert torch.isfinite(out).all()


def _reduced_vggt():
    reference = pytest.importorskip("lite3r.models.reference")
    config = json.loads((PARITY_DIR / "vggt_small_config.json").read_text())
    model, _ = reference.load(config, PARITY_DIR / "vggt_small_state_dict.safetensors")
    return model.eval()


def _vggt_input(model):
    torch.manual_seed(0)
    return torch.rand(1, 3, 3, 42, 70)


@pytest.mark.parametrize("backend, sites", [("torch", None), ("triton", ["global"])])
def test_reduced_parity_vggt_keep_everything_matches_dense(backend, sites):
    """All four sites on the torch backend; the global site (frames of 5 special + 15 patch tokens) on
    the Triton one (interpreted on CPU, so only one site to stay quick)."""
    dense = _reduced_vggt()
    model = _reduced_vggt()
    names = sites or list(model.attention_sites())
    cfg = Lite3RConfig(sites=names, keep_ratio=1.0, block_q=16, block_k=16, backend=backend)
    convert(model, cfg)
    report = describe_conversion(model)
    assert report.converted == sum(len(model.attention_sites()[n].modules) for n in names)
    images = _vggt_input(model)
    with torch.no_grad():
        ref = dense.encode(images)
        out = model.encode(images)
    ref_t, out_t = _tensors(ref), _tensors(out)
    assert len(ref_t) == len(out_t) > 0
    for a, b in zip(out_t, ref_t):
        torch.testing.assert_close(a, b, rtol=1.6e-2, atol=1e-3)


def _tensors(x):
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, dict):
        return [t for k in sorted(x, key=str) for t in _tensors(x[k])]
    if isinstance(x, list | tuple):
        return [t for v in x for t in _tensors(v)]
    if hasattr(x, "__dict__"):
        return [t for k in sorted(vars(x)) for t in _tensors(vars(x)[k])]
    return []


def test_reduced_parity_vggt_default_and_compat():
    model = convert(_reduced_vggt(), Lite3RConfig())
    assert [r.site for r in describe_conversion(model).sites if r.modules] == ["global"]
    compat = convert(_reduced_vggt(), Lite3RConfig(compat=True))
    assert all(r.modules == r.total_modules for r in describe_conversion(compat).sites)
    with torch.no_grad():
        out = compat(_vggt_input(compat))
    assert all(torch.isfinite(t).all() for t in _tensors(out))


# ------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
def test_gpu_converted_model_keep_everything_matches_dense_bf16():
    dense = TwoSiteModel(dim=256, heads=4).cuda()
    sla = convert(TwoSiteModel(dim=256, heads=4).cuda(), Lite3RConfig(keep_ratio=1.0))
    assert sla.global_blocks[0].attn.config.backend == "triton"
    x = torch.randn(1, 4, 301, 256, device="cuda")  # 1204 global tokens: 19 key blocks, partial
    with torch.no_grad(), torch.autocast("cuda", torch.bfloat16):
        (ref, _), (out, _) = dense(x), sla(x)
    torch.testing.assert_close(out.float(), ref.float(), rtol=3e-2, atol=3e-2)


def test_converted_blocks_compile_with_dynamic_shapes_on_cpu():
    """torch.compile(dynamic=True) traces the SLA geometry with a symbolic token count (the block
    budget is integer arithmetic, not math.floor of a symbolic float) and matches eager."""
    from lite3r.quant.compile import compile_trunk
    from lite3r.training.tiny import build_tiny

    torch._dynamo.reset()
    model = build_tiny("micro").eval()
    convert(model, Lite3RConfig(keep_ratio=0.5, block_q=64, block_k=64, backend="torch"), device="cpu")
    images = [torch.rand(1, S, 3, 56, 56, generator=torch.Generator().manual_seed(S)) for S in (8, 12)]
    with torch.no_grad():
        eager = [model(x)["depth"] for x in images]
        compile_trunk(
            model, "default", model.trunk_modules(), fullgraph=True, dynamic=True, backend="aot_eager"
        )
        compiled = [model(x)["depth"] for x in images]
    for a, b in zip(compiled, eager, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
