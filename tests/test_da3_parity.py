"""DA3 parity with the reference (shared/parity, reduced model) and the engine protocol.

Every saved output / intermediate tensor of every case (mono, mv2, mv3_ref, posecond) must meet
|got − exp| ≤ 1e-4·|exp| + 1e-4·max|exp| (shapes exact, ``inter.ref_view_idx`` exact), after a strict
load of the state dict.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import PARITY_DIR
from safetensors.torch import load_file

from lite3r.attention.dense import MultiHeadAttention
from lite3r.models import reference
from lite3r.models.da3 import DA3, DA3Config
from lite3r.models.da3.ref_view import gather_views, inverse_order, reference_order, select_reference_view

CONFIG = PARITY_DIR / "da3_small_config.json"
STATE = PARITY_DIR / "da3_small_state_dict.safetensors"
IO = PARITY_DIR / "da3_small_io.safetensors"


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


def test_strict_load_consumes_every_key(parity):
    _, report = parity
    assert report.ok and report.dropped == [] and report.ignored == []
    assert len(report.loaded) == 451


@pytest.mark.parametrize("case,name", _saved_names())
def test_saved_tensor_matches(parity, case, name):
    results, _ = parity
    r = results[(case, name)]
    assert r.ok, (
        f"{case}.{name}: {r.detail} max|Δ|/max|exp| = {r.rel_to_scale:.3e}, worst/tol = {r.worst_ratio:.3g}"
    )


def test_every_saved_group_is_covered():
    names = _saved_names()
    per_case = {c: {n for cc, n in names if cc == c} for c in ("mono", "mv2", "mv3_ref", "posecond")}
    for case, got in per_case.items():
        assert {"output.depth", "output.extrinsics", "inter.pose_enc", "inter.head.ray"} <= got, case
        assert sum(n.startswith("inter.feat.") for n in got) == 4
        assert sum(n.startswith("inter.cam_token.") for n in got) == 4
    assert "inter.ref_view_idx" in per_case["mv3_ref"]
    assert "inter.cam_enc_tokens" in per_case["posecond"]


def test_reference_view_is_exact(model, io):
    with torch.no_grad():
        feats = model.encode(io["mv3_ref.input.images"], ref_view_strategy="saddle_balanced")
        first = model.encode(io["mv3_ref.input.images"], ref_view_strategy="first")
        two = model.encode(io["mv2.input.images"])
        posed = model.encode(
            io["posecond.input.images"], io["posecond.input.extrinsics"], io["posecond.input.intrinsics"]
        )
    assert feats.ref_view.tolist() == [1, 0] == io["mv3_ref.inter.ref_view_idx"].tolist()
    assert feats.ref_view.dtype == torch.int64
    assert first.ref_view.tolist() == [0, 0]
    assert two.ref_view is None and posed.ref_view is None  # S < 3 / cameras given: no selection
    # a different reference changes the cross-view computation (camera-token slots move)
    assert not torch.allclose(first.features[-1], feats.features[-1], atol=1e-3)


def test_views_permuted_give_permuted_outputs(model, io):
    """The selection follows the image, and outputs come back in the caller's order."""
    images = io["mv3_ref.input.images"]
    perm = torch.tensor([2, 0, 1])
    with torch.no_grad():
        feats = model.encode(images[:, perm], ref_view_strategy="saddle_balanced")
        out_p = model.predict(feats, images[:, perm])
    assert perm[feats.ref_view].tolist() == [1, 0]  # the same physical views
    for key in ("depth", "extrinsics"):
        exp = io[f"mv3_ref.output.{key}"][:, perm]
        torch.testing.assert_close(out_p[key], exp, rtol=1e-4, atol=1e-4 * exp.abs().max().item())


def test_selection_strategies_and_orders():
    torch.manual_seed(0)
    cls = torch.randn(2, 5, 8)
    assert select_reference_view(cls, "first").tolist() == [0, 0]
    assert select_reference_view(cls, "middle").tolist() == [2, 2]
    for strategy in ("saddle_balanced", "saddle_sim_range"):
        ref = select_reference_view(cls, strategy)
        assert ref.shape == (2,) and ref.dtype == torch.int64 and ((ref >= 0) & (ref < 5)).all()
    # saddle_sim_range: a view whose similarities span the widest range
    cls = torch.tensor([[[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]])
    assert select_reference_view(cls, "saddle_sim_range").tolist() == [0]
    with pytest.raises(ValueError, match="strategy"):
        select_reference_view(cls, "best")
    order = reference_order(torch.tensor([2, 0, 4]), 5)
    assert order.tolist() == [[2, 0, 1, 3, 4], [0, 1, 2, 3, 4], [4, 0, 1, 2, 3]]
    x = torch.arange(15.0).view(3, 5)
    torch.testing.assert_close(gather_views(gather_views(x, order), inverse_order(order)), x)


def test_frame_chunking_is_exact(model, io):
    images = io["mv3_ref.input.images"]
    with torch.no_grad():
        feats = model.encode(images)
        d_all, c_all = model.decode_depth(feats, images, frames_chunk_size=None)
        d_one, c_one = model.decode_depth(feats, images, frames_chunk_size=1)
        r_two, rc_two = model.decode_rays(feats, images, frames_chunk_size=2)
    torch.testing.assert_close(d_one, d_all, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(c_one, c_all, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(r_two, io["mv3_ref.inter.head.ray"], rtol=1e-4, atol=1e-4)
    assert rc_two.shape == (2, 3, 24, 40)


def test_encode_keeps_only_the_out_layers(model, io):
    with torch.no_grad():
        feats = model.encode(io["mv3_ref.input.images"])
    assert len(feats.features) == len(feats.camera_tokens) == 4
    assert all(f.shape == (2, 3, 15, 64) for f in feats.features)
    assert all(c.shape == (2, 3, 64) for c in feats.camera_tokens)
    sub = model.select_frames(feats, 1, 3)
    assert sub.features[0].shape == (2, 2, 15, 64) and sub.ref_view is feats.ref_view
    torch.testing.assert_close(model.decode_depth(sub)[0], model.decode_depth(feats)[0][:, 1:3])


def test_decode_protocol_matches_forward(model, io):
    images = io["mv2.input.images"]
    with torch.no_grad():
        feats = model.encode(images)
        cams = model.decode_cameras(feats, (42, 70))
        depth, conf = model.decode_depth(feats, images)
        assert model.decode_points(feats, images) is None
        out = model(images)
    assert set(out) == {"depth", "depth_conf", "extrinsics", "intrinsics"}
    assert cams.extrinsics.shape == (2, 2, 3, 4) and cams.intrinsics.shape == (2, 2, 3, 3)
    assert cams.pose_enc_list is None
    torch.testing.assert_close(cams.extrinsics, io["mv2.output.extrinsics"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(cams.pose_enc, io["mv2.inter.pose_enc"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(depth, io["mv2.output.depth"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out["depth_conf"], conf)
    ext, intr = cams[:2]
    assert ext is cams.extrinsics and intr is cams.intrinsics


def test_unbatched_input_is_accepted(model, io):
    with torch.no_grad():
        out = model(io["mono.input.images"][0])  # [S, 3, H, W]
    assert out["depth"].shape == (1, 1, 42, 70)
    torch.testing.assert_close(out["extrinsics"], io["mono.output.extrinsics"], rtol=1e-4, atol=1e-5)


def test_pose_conditioning_needs_both_cameras(model, io):
    with pytest.raises(ValueError, match="both extrinsics and intrinsics"):
        model.encode(io["posecond.input.images"], io["posecond.input.extrinsics"])


def test_attention_sites_and_frame_len(model, io):
    sites = model.attention_sites()
    assert set(sites) == {"per_view", "cross_view", "camera_encoder"}
    mods = dict(model.named_modules())
    for site in sites.values():
        for name in site.modules:
            assert isinstance(mods[name], MultiHeadAttention), name
    idx = {n: [int(re.search(r"\.(\d+)\.attn$", m).group(1)) for m in s.modules] for n, s in sites.items()}
    assert idx["per_view"] == [0, 1, 2, 4, 6, 8, 10] and idx["cross_view"] == [3, 5, 7, 9, 11]
    assert idx["camera_encoder"] == [0, 1, 2, 3]
    assert [n for n, s in sites.items() if s.cross_view] == ["cross_view"]
    assert sites["per_view"].special_tokens_per_frame == 1 == sites["cross_view"].special_tokens_per_frame
    assert sites["camera_encoder"].special_tokens_per_frame == 0 and not sites["camera_encoder"].trunk
    assert sites["per_view"].trunk and sites["cross_view"].trunk

    seen = {}

    def spy(name, attn):
        orig = attn.attend

        def attend(q, k, v, frame_len=None):
            seen.setdefault(name, (q.shape[0], q.shape[2], frame_len))
            return orig(q, k, v, frame_len=frame_len)

        return attend

    patched = []
    for site in sites.values():
        for name in site.modules:
            mods[name].attend = spy(name, mods[name])
            patched.append(mods[name])
    try:
        with torch.no_grad():
            model(
                io["posecond.input.images"], io["posecond.input.extrinsics"], io["posecond.input.intrinsics"]
            )
    finally:
        for m in patched:
            del m.attend
    blocks = "backbone.pretrained.blocks"
    assert seen[f"{blocks}.3.attn"] == (1, 3 * 16, 16)  # B, S·N tokens, N = cls + 15 patches per view
    assert seen[f"{blocks}.0.attn"] == (3, 16, 16) and seen[f"{blocks}.4.attn"] == (3, 16, 16)
    assert seen["cam_enc.trunk.0.attn"] == (1, 3, 1)  # one token per view, across the views


def test_head_and_trunk_modules(model):
    mods = dict(model.named_modules())
    assert model.head_modules() == ["head", "cam_dec", "cam_enc"]
    assert model.trunk_modules() == ["backbone"]
    assert all(n in mods for n in model.head_modules() + model.trunk_modules())
    assert model.family == "da3" and model.input_normalization == "imagenet"


# Documented LayerNorm eps per site (architectures.md §2.3–2.7, §4 item 5). The parity data cannot see eps.
EPS_RULES = [
    (r"^backbone\.pretrained\.blocks\.\d+\.norm[12]$", 1e-6),
    (r"^backbone\.pretrained\.blocks\.\d+\.attn\.[qk]_norm$", 1e-5),
    (r"^backbone\.pretrained\.norm$", 1e-5),
    (r"^head\.norm$", 1e-5),
    (r"^head\.scratch\.output_conv2_aux\.\d\.2$", 1e-5),
    (r"^cam_enc\.trunk\.\d+\.norm[12]$", 1e-5),
    (r"^cam_enc\.(token_norm|trunk_norm)$", 1e-5),
]


def test_layernorm_eps_by_construction():
    with torch.device("meta"):
        m = DA3(DA3Config.da3_large())
    norms = {n: mod for n, mod in m.named_modules() if isinstance(mod, torch.nn.LayerNorm)}
    assert len(norms) == 24 * 2 + 16 * 2 + 1 + 1 + 4 + 4 * 2 + 2
    for name, mod in norms.items():
        rules = [eps for pat, eps in EPS_RULES if re.match(pat, name)]
        assert len(rules) == 1, f"LayerNorm {name} matches {len(rules)} documented sites"
        assert mod.eps == rules[0], f"{name}: eps {mod.eps}, documented {rules[0]}"
    assert norms["backbone.pretrained.blocks.8.attn.q_norm"].normalized_shape == (64,)
    assert "backbone.pretrained.blocks.7.attn.q_norm" not in norms
    blocks = m.backbone.pretrained.blocks
    assert blocks[7].attn.rope is None and blocks[8].attn.rope is m.backbone.pretrained.rope
    assert m.backbone.pretrained.rope.base == 100.0


def test_dtype_robust_heads_under_bf16_trunk(model, io):
    images = io["mv3_ref.input.images"]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        feats = model.encode(images)
    feats.features = [f.to(torch.bfloat16) for f in feats.features]  # a bf16 trunk's outputs
    feats.camera_tokens = [c.to(torch.bfloat16) for c in feats.camera_tokens]
    with torch.no_grad():
        depth, _conf = model.decode_depth(feats, images)
        cams = model.decode_cameras(feats)
    assert depth.dtype == torch.float32 and cams.extrinsics.dtype == torch.float32
    ref = io["mv3_ref.output.depth"]
    assert (depth - ref).abs().max() / ref.abs().max() < 0.1


@pytest.fixture
def no_tf32():
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


@pytest.mark.gpu
def test_parity_on_gpu_fp32(no_tf32):
    """The same acceptance rule on CUDA in float32 with TF32 off, every case."""
    from lite3r.models.reference import compare, outputs

    cfg = json.loads(CONFIG.read_text())
    m, _ = reference.load(cfg, STATE)
    m = m.cuda()
    io = load_file(str(IO))
    for case, entry in cfg["cases"].items():
        inputs = {k[len(case) + 1 :]: v.cuda() for k, v in io.items() if k.startswith(f"{case}.input.")}
        got = outputs(m, entry, inputs)
        for name, t in got.items():
            ok, detail, max_abs, scale, ratio = compare(t.cpu(), io[f"{case}.{name}"])
            assert ok, f"{case}.{name}: {detail} {max_abs / max(scale, 1e-30):.3e} ({ratio:.3g} × tol)"
