"""VGGT parity with the reference (shared/parity, reduced model) and the engine protocol.

Every saved output / derived / intermediate tensor of every case must meet
|got − exp| ≤ 1e-4·|exp| + 1e-4·max|exp| (shapes exact), after a strict load of the state dict.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import PARITY_DIR
from safetensors.torch import load_file

from lite3r.attention.dense import MultiHeadAttention
from lite3r.models import reference
from lite3r.models.vggt import VGGT, VGGTConfig

CONFIG = PARITY_DIR / "vggt_small_config.json"
STATE = PARITY_DIR / "vggt_small_state_dict.safetensors"
IO = PARITY_DIR / "vggt_small_io.safetensors"


def _saved_names():
    cases = json.loads(CONFIG.read_text())["cases"]
    io = load_file(str(IO))
    return [
        (c, k[len(c) + 1 :])
        for c in cases
        for k in sorted(io)
        if k.startswith(f"{c}.") and not k.startswith(f"{c}.input.")
    ]


@pytest.fixture(scope="module")
def parity():
    results, report = reference.check_cases(CONFIG, STATE, IO)
    return {(r.case, r.name): r for r in results}, report


@pytest.fixture(scope="module")
def model():
    m, _ = reference.load(json.loads(CONFIG.read_text()), STATE)
    return m


@pytest.fixture(scope="module")
def io():
    return load_file(str(IO))


def test_strict_load_drops_only_mask_token(parity):
    _, report = parity
    assert report.ok
    assert report.dropped == ["aggregator.patch_embed.mask_token"]
    assert len(report.loaded) == 382


@pytest.mark.parametrize("case,name", _saved_names())
def test_saved_tensor_matches(parity, case, name):
    results, _ = parity
    r = results[(case, name)]
    assert r.ok, (
        f"{case}.{name}: {r.detail} max|Δ|/max|exp| = {r.rel_to_scale:.3e}, worst/tol = {r.worst_ratio:.3g}"
    )


def test_every_saved_group_is_covered():
    names = {n for _, n in _saved_names()}
    assert {
        "output.depth",
        "output.pose_enc_list",
        "derived.points_from_depth",
        "inter.patch_tokens",
    } <= names
    assert sum(n.startswith("inter.aggregated.") for n in names) == 5


def test_frame_chunking_is_exact(model, io):
    images = io["b2s3.input.images"]
    with torch.no_grad():
        feats = model.encode(images)
        d_all, c_all = model.decode_depth(feats, images, frames_chunk_size=None)
        d_two, c_two = model.decode_depth(feats, images, frames_chunk_size=2)
        p_two, _ = model.decode_points(feats, images, frames_chunk_size=2)
    torch.testing.assert_close(d_two, d_all, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(c_two, c_all, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(p_two, io["b2s3.output.world_points"], rtol=1e-4, atol=1e-4)


def test_encode_keeps_only_head_layers(model, io):
    images = io["b2s3.input.images"]
    assert model.default_layers() == (0, 2, 3, 4)  # DPT [0, 2, 3, 4] ∪ last (4); layer 1 unused
    with torch.no_grad():
        feats = model.encode(images)
    assert sorted(feats.layers) == [0, 2, 3, 4]
    assert feats.layers[4].shape == (2, 3, 20, 64)
    with pytest.raises(KeyError):
        feats.layer(1)


def test_decode_protocol_matches_forward(model, io):
    images = io["b2s3.input.images"]
    with torch.no_grad():
        feats = model.encode(images)
        cams = model.decode_cameras(feats, (42, 70))
        depth, conf = model.decode_depth(feats, images)
        pts, pconf = model.decode_points(feats, images)
    assert cams.extrinsics.shape == (2, 3, 3, 4) and cams.intrinsics.shape == (2, 3, 3, 3)
    torch.testing.assert_close(cams.extrinsics, io["b2s3.derived.extrinsic"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(cams.pose_enc, io["b2s3.output.pose_enc"], rtol=1e-4, atol=1e-5)
    assert len(cams.pose_enc_list) == 4
    assert depth.shape == (2, 3, 42, 70) and conf.shape == (2, 3, 42, 70)
    torch.testing.assert_close(depth, io["b2s3.output.depth"][..., 0], rtol=1e-4, atol=1e-4)
    assert pts.shape == (2, 3, 42, 70, 3) and pconf.shape == (2, 3, 42, 70)
    ext, intr = cams[:2]
    assert ext is cams.extrinsics and intr is cams.intrinsics


def test_unbatched_input_is_accepted(model, io):
    images = io["b1s1.input.images"][0]  # [S, 3, H, W]
    with torch.no_grad():
        out = model(images)
    assert out["depth"].shape == (1, 1, 42, 70, 1)
    torch.testing.assert_close(out["pose_enc"], io["b1s1.output.pose_enc"], rtol=1e-4, atol=1e-5)


def test_attention_sites_and_frame_len(model, io):
    sites = model.attention_sites()
    assert set(sites) == {"dino", "frame", "global", "camera"}
    mods = dict(model.named_modules())
    for site in sites.values():
        for name in site.modules:
            assert isinstance(mods[name], MultiHeadAttention), name
    assert [n for n, s in sites.items() if s.cross_view] == ["global"]
    assert sites["dino"].special_tokens_per_frame == 5 and sites["frame"].special_tokens_per_frame == 5
    assert sites["global"].special_tokens_per_frame == 5 and sites["camera"].special_tokens_per_frame == 0
    assert all(s.trunk for n, s in sites.items() if n != "camera") and not sites["camera"].trunk
    assert len(sites["global"].modules) == 5 and len(sites["camera"].modules) == 2

    seen = {}

    def spy(name, attn):
        orig = attn.attend

        def attend(q, k, v, frame_len=None):
            seen.setdefault(name, (q.shape[2], frame_len))
            return orig(q, k, v, frame_len=frame_len)

        return attend

    patched = []
    for site in sites.values():
        for name in site.modules:
            mods[name].attend = spy(name, mods[name])
            patched.append(mods[name])
    try:
        with torch.no_grad():
            model(io["b2s3.input.images"])
    finally:
        for m in patched:
            del m.attend
    assert seen["aggregator.global_blocks.0.attn"] == (3 * 20, 20)  # S·P tokens, P per frame
    assert seen["aggregator.frame_blocks.0.attn"] == (20, 20)
    assert seen["aggregator.patch_embed.blocks.0.attn"] == (20, 20)  # cls + 4 registers + 15 patches
    assert seen["camera_head.trunk.0.attn"] == (3, 1)  # one camera token per view


def test_head_and_trunk_modules(model):
    mods = dict(model.named_modules())
    assert model.head_modules() == ["camera_head", "depth_head", "point_head"]
    assert model.trunk_modules() == ["aggregator"]
    assert all(n in mods for n in model.head_modules() + model.trunk_modules())
    assert model.family == "vggt" and model.input_normalization == "none"


# Documented LayerNorm eps per site (architectures.md §4 item 5). The parity data cannot see eps.
EPS_RULES = [
    (r"^aggregator\.patch_embed\.blocks\.\d+\.norm[12]$", 1e-6),
    (r"^aggregator\.patch_embed\.norm$", 1e-6),
    (r"^aggregator\.(frame|global)_blocks\.\d+\.norm[12]$", 1e-5),
    (r"^aggregator\.(frame|global)_blocks\.\d+\.attn\.[qk]_norm$", 1e-5),
    (r"^camera_head\.trunk\.\d+\.norm[12]$", 1e-5),
    (r"^camera_head\.(token_norm|trunk_norm)$", 1e-5),
    (r"^camera_head\.adaln_norm$", 1e-6),
    (r"^(depth|point)_head\.norm$", 1e-5),
]


def test_layernorm_eps_by_construction():
    import re

    with torch.device("meta"):
        m = VGGT(VGGTConfig.vggt_1b())
    norms = {n: mod for n, mod in m.named_modules() if isinstance(mod, torch.nn.LayerNorm)}
    assert len(norms) == 24 * 2 + 1 + 48 * 4 + 4 * 2 + 3 + 2
    for name, mod in norms.items():
        rules = [eps for pat, eps in EPS_RULES if re.match(pat, name)]
        assert len(rules) == 1, f"LayerNorm {name} matches {len(rules)} documented sites"
        assert mod.eps == rules[0], f"{name}: eps {mod.eps}, documented {rules[0]}"
    assert not norms["camera_head.adaln_norm"].elementwise_affine
    assert norms["aggregator.global_blocks.3.attn.q_norm"].normalized_shape == (64,)


def test_dtype_robust_heads_under_bf16_trunk(model, io):
    images = io["b2s3.input.images"]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        feats = model.encode(images)
    feats.layers = {k: v.to(torch.bfloat16) for k, v in feats.layers.items()}  # a bf16 trunk's outputs
    with torch.no_grad():
        depth, _conf = model.decode_depth(feats, images)
        cams = model.decode_cameras(feats)
    assert depth.dtype == torch.float32 and cams.extrinsics.dtype == torch.float32
    ref = io["b2s3.output.depth"][..., 0]
    assert (depth - ref).abs().max() / ref.abs().max() < 0.1


def test_small_config_trains_from_scratch():
    """lite3r-tiny-like config: head_dim 64, camera trunk depth 1, arbitrary DPT layers; gradients
    reach every parameter that the losses use."""
    cfg = VGGTConfig.scaled(
        img_size=56,
        embed_dim=128,
        num_heads=2,
        depth=3,
        dino_depth=1,
        dpt_features=16,
        dpt_out_channels=(8, 16, 32, 32),
        intermediate_layer_idx=(0, 0, 1, 2),
    )
    torch.manual_seed(0)
    m = VGGT(cfg).train()
    assert m.aggregator.frame_blocks[0].attn.head_dim == 64
    g = m.aggregator.frame_blocks[0].ls1.gamma
    assert torch.all(g == 0.01)
    assert m.aggregator.camera_token.std() < 1e-5
    out = m(torch.rand(1, 2, 3, 42, 70))
    loss = out["depth"].mean() + out["world_points"].abs().mean() + out["pose_enc"].square().mean()
    loss.backward()
    no_grad = [
        n for n, p in m.named_parameters() if p.grad is None and "patch_embed.register_tokens" not in n
    ]
    assert no_grad == [], no_grad
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


@pytest.fixture
def no_tf32():
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


@pytest.mark.gpu
def test_parity_on_gpu_fp32(no_tf32):
    """The same acceptance rule on CUDA in float32 with TF32 off."""
    from lite3r.models.reference import compare, outputs

    cfg = json.loads(CONFIG.read_text())
    m, _ = reference.load(cfg, STATE)
    m = m.cuda()
    io = load_file(str(IO))
    for case in cfg["cases"]:
        got = outputs(m, cfg["cases"][case], {"input.images": io[f"{case}.input.images"].cuda()})
        for name, t in got.items():
            ok, detail, max_abs, scale, ratio = compare(t.cpu(), io[f"{case}.{name}"])
            assert ok, f"{case}.{name}: {detail} {max_abs / max(scale, 1e-30):.3e} ({ratio:.3g} × tol)"


@pytest.mark.gpu
def test_bf16_trunk_fp32_heads_on_gpu():
    cfg = json.loads(CONFIG.read_text())
    m, _ = reference.load(cfg, STATE)
    m = m.cuda()
    io = load_file(str(IO))
    images = io["b2s3.input.images"].cuda()
    with torch.no_grad():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            feats = m.encode(images)
        depth, _ = m.decode_depth(feats, images)
    ref = io["b2s3.output.depth"][..., 0]
    assert depth.dtype == torch.float32
    assert (depth.cpu() - ref).abs().max() / ref.abs().max() < 0.1
