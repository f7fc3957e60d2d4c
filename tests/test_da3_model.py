"""DA3 beyond parity: the DA3-Large manifest on the meta device, checked loading (hub prefix, legacy
names, the authors' format, foreign and broken files), the registry entry, and the engine end to end
with the reduced model on real photos."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import PARITY_DIR, PHOTOS_DIR
from safetensors.torch import load_file, save_file

from lite3r.errors import CheckpointError
from lite3r.models import reference, registry
from lite3r.models.da3 import DA3, DA3Config, from_reference_config
from lite3r.models.da3.loading import is_legacy, legacy_rename, load_da3, read_da3_config

STATE = PARITY_DIR / "da3_small_state_dict.safetensors"
REF_CONFIG = json.loads((PARITY_DIR / "da3_small_config.json").read_text())
SMALL = from_reference_config(REF_CONFIG)
PHOTOS = [PHOTOS_DIR / "motorcycle_left.jpg", PHOTOS_DIR / "motorcycle_right.jpg", PHOTOS_DIR / "chelsea.jpg"]


@pytest.fixture(scope="module")
def state():
    return load_file(str(STATE))


@pytest.fixture(scope="module")
def manifest():
    return json.loads((PARITY_DIR / "da3large_keys.json").read_text())


@pytest.fixture(scope="module")
def da3_large():
    with torch.device("meta"):
        return DA3(DA3Config.da3_large())


def _save(tmp_path, sd, name="ckpt.safetensors"):
    path = tmp_path / name
    if name.endswith(".safetensors"):
        save_file(sd, str(path))
    else:
        torch.save(sd, path)
    return path


def _same_weights(model, sd):
    own = model.state_dict()
    return set(own) == set(sd) and all(torch.equal(own[k], sd[k]) for k in own)


# ---- DA3-Large on the meta device ---------------------------------------------------------------


def test_da3_large_keys_shapes_and_order(manifest, da3_large):
    keys = manifest["keys"]
    assert len(keys) == manifest["num_tensors"] == 643
    state = da3_large.state_dict()
    assert list(state) == list(keys)  # key for key, in the official order
    wrong = {k: (list(v.shape), keys[k]) for k, v in state.items() if list(v.shape) != keys[k]}
    assert wrong == {}
    assert not list(da3_large.buffers())  # no constants: DA3 takes normalised images


def test_da3_large_param_counts(manifest, da3_large):
    assert sum(p.numel() for p in da3_large.parameters()) == manifest["num_params"] == 410_941_959
    for prefix, count in manifest["param_count_by_prefix"].items():
        got = sum(p.numel() for n, p in da3_large.named_parameters() if n.startswith(prefix))
        assert got == count, prefix


def test_da3_large_sites_and_layers(da3_large):
    sites = da3_large.attention_sites()
    assert {k: len(s.modules) for k, s in sites.items()} == {
        "per_view": 16,
        "cross_view": 8,
        "camera_encoder": 4,
    }
    assert sites["cross_view"].modules[0] == "backbone.pretrained.blocks.9.attn"
    assert da3_large.backbone.out_layers == (11, 15, 19, 23)
    assert all(da3_large.backbone.is_cross_view(i) for i in (11, 15, 19, 23))
    assert da3_large.backbone.pretrained.blocks[0].attn.head_dim == 64
    assert da3_large.cam_enc.trunk[0].attn.head_dim == 64
    with pytest.raises(TypeError, match="DA3Backbone"):  # no silent per-view-only forward
        da3_large.backbone.pretrained(torch.zeros(1, 3, 14, 14, device="meta"))


def test_config_round_trip_and_validation():
    cfg = DA3Config.da3_large()
    assert DA3Config.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert DA3Config.from_dict(SMALL.to_dict()) == SMALL
    with pytest.raises(ValueError, match="unknown DA3Config fields"):
        DA3Config.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="ref_view_strategy"):
        DA3Config(ref_view_strategy="best")
    bad = dict(REF_CONFIG, backbone=dict(REF_CONFIG["backbone"]))
    bad["backbone"]["kwargs"] = dict(bad["backbone"]["kwargs"], interpolate_antialias=True)
    with pytest.raises(ValueError, match="interpolate_antialias"):
        from_reference_config(bad)


# ---- loading --------------------------------------------------------------------------------------


def test_hub_prefix_is_stripped(tmp_path, state):
    model = DA3.from_pretrained(_save(tmp_path, {f"model.{k}": v for k, v in state.items()}), config=SMALL)
    rep = model.load_report
    assert rep.ok and rep.stripped_prefix == "model." and rep.renamed == 0 and not model.training
    assert _same_weights(model, state)


def _to_legacy(key: str) -> str:
    """Current name → the training-format name (the inverse of the reference's rename table)."""
    key = key.replace("backbone.pretrained.camera_token", "backbone.pretrained.camera_token_extra")
    key = key.replace("cam_dec.backbone.", "cam_dec.more_mlps.")
    for new, old in (
        ("backbone.", "net."),
        ("cam_enc.", "all_heads.camera_cond_head."),
        ("cam_dec.", "all_heads.camera_head."),
        ("head.", "all_heads.head."),
    ):
        if key.startswith(new):
            key = old + key[len(new) :]
            break
    return "module." + key.replace(".fc_qvec.", ".fc_rot.").replace("_aux.", "_ray.")


def test_legacy_training_names_are_renamed(tmp_path, state):
    legacy = {_to_legacy(k): v for k, v in state.items()}
    legacy["module.net.pretrained.camera_token"] = torch.zeros_like(state["backbone.pretrained.camera_token"])
    assert "module.all_heads.camera_head.more_mlps.0.weight" in legacy
    assert "module.all_heads.head.scratch.output_conv1_ray.3.0.weight" in legacy
    assert is_legacy(legacy) and not is_legacy(state)
    # current names are fixed points, except the camera token a legacy file supersedes
    assert [k for k in state if legacy_rename(k) != k] == ["backbone.pretrained.camera_token"]
    model = DA3.from_pretrained(_save(tmp_path, {"model": legacy, "step": 3}, "last.pt"), config=SMALL)
    rep = model.load_report
    assert rep.ok and rep.unwrapped == "model" and rep.stripped_prefix == "module."
    assert rep.renamed > 100 and rep.ignored == ["backbone.pretrained.camera_token#legacy-unused"]
    assert _same_weights(model, state)  # camera_token came from camera_token_extra


def test_authors_checkpoint_format(tmp_path, state):
    extra = {
        "backbone.pretrained.blocks.3.attn.proj_lin.weight": torch.randn(16, 16),
        "backbone.pretrained.blocks.3.attn.lam": torch.tensor(0.5),
        "cam_enc.trunk.0.attn.proj_lin.weight": torch.randn(16, 16),
    }
    wrapped = {"model": dict(state, **extra), "optim": None, "step": 7, "extra": {}}
    model = DA3.from_pretrained(_save(tmp_path, wrapped, "last.pt"), config=SMALL)
    rep = model.load_report
    assert rep.ok and rep.ignored == ["backbone.pretrained.blocks.3.attn.lam"]
    assert sorted(rep.adapter) == [
        "backbone.pretrained.blocks.3.attn.proj_lin.weight",
        "cam_enc.trunk.0.attn.proj_lin.weight",
    ]
    assert _same_weights(model, state)


def test_vggt_checkpoint_is_refused():
    with pytest.raises(CheckpointError, match="VGGT") as e:
        DA3.from_pretrained(PARITY_DIR / "vggt_small_state_dict.safetensors", config=SMALL)
    assert "not a DA3" in str(e.value)


def test_missing_and_misshaped_keys(tmp_path, state):
    sd = dict(state)
    del sd["cam_dec.fc_t.bias"]
    sd["head.norm.weight"] = torch.ones(3)
    path = _save(tmp_path, sd)
    with pytest.raises(CheckpointError, match=r"cam_dec\.fc_t\.bias") as e:
        DA3.from_pretrained(path, config=SMALL)
    assert "head.norm.weight" in str(e.value)
    model = DA3.from_pretrained(path, config=SMALL, strict=False)
    assert model.load_report.missing == ["cam_dec.fc_t.bias"]
    assert torch.equal(model.cam_dec.fc_qvec.weight, state["cam_dec.fc_qvec.weight"])


def test_without_camera_encoder_drops_its_keys(state):
    import dataclasses

    model = DA3.from_pretrained(STATE, config=dataclasses.replace(SMALL, cam_enc=None))
    rep = model.load_report
    assert rep.ok and model.cam_enc is None and all(k.startswith("cam_enc.") for k in rep.dropped)
    assert len(rep.dropped) == sum(k.startswith("cam_enc.") for k in state)
    assert "camera_encoder" not in model.attention_sites() and model.head_modules() == ["head", "cam_dec"]


def test_save_pretrained_round_trip_and_configs(tmp_path, state):
    model = DA3.from_pretrained(STATE, config=SMALL)
    folder = model.save_pretrained(tmp_path / "m", metadata={"note": "x"})
    again = DA3.from_pretrained(folder)  # config.json brings the reduced config
    assert again.config == SMALL and _same_weights(again, state)
    hub = tmp_path / "hub.json"
    hub.write_text(json.dumps({"model_name": "da3-large"}))
    assert read_da3_config(hub) == DA3Config.da3_large()
    hub.write_text(json.dumps({"model_name": "da3-giant"}))
    with pytest.raises(CheckpointError, match="da3-giant"):
        read_da3_config(hub)
    hub.write_text(json.dumps({"family": "vggt", "config": {}}))
    with pytest.raises(CheckpointError, match="not DA3"):
        read_da3_config(hub)


def test_registry_entry(tmp_path):
    spec = registry.get_spec("da3-large")
    assert spec.family == "da3" and spec.hf_repo_id == "depth-anything/DA3-LARGE-1.1"
    assert spec.hf_filename == "model.safetensors" and spec.default_input_size == 504
    assert spec.preprocessing == "da3_upper_bound_resize" and "CC BY-NC 4.0" in spec.licence
    assert spec.config() == DA3Config.da3_large()
    assert registry.LOADERS["da3"] is load_da3
    DA3.from_pretrained(STATE, config=SMALL).save_pretrained(tmp_path / "w")
    model = registry.load_model("da3-large", weights=tmp_path / "w")
    assert isinstance(model, DA3) and model.config == SMALL and model.load_report.ok
    assert reference.family_of(REF_CONFIG).name == "da3"


# ---- engine ---------------------------------------------------------------------------------------


def test_engine_reconstructs_photos_with_reduced_da3():
    pytest.importorskip("cv2")
    from lite3r.engine.reconstructor import Reconstructor

    model, _ = reference.load(REF_CONFIG, STATE)
    partials = []
    rc = Reconstructor(model, precision="fp32", device="cpu", frames_chunk_size=2, input_size=126)
    assert rc.rule.name == "da3_upper_bound_resize" and not rc.has_point_head
    rec = rc.reconstruct(PHOTOS, on_partial=partials.append)
    S, (H, W) = 3, rec.image_size
    assert H % 14 == 0 and W % 14 == 0 and max(H, W) <= 126 + 7
    assert rec.depth.shape == (S, H, W) and np.isfinite(rec.depth).all() and (rec.depth > 0).all()
    assert (rec.depth_conf >= 1).all()
    np.testing.assert_allclose(rec.extrinsics[0], np.eye(3, 4), atol=1e-5)  # world = camera 0
    R = rec.extrinsics[:, :, :3]
    np.testing.assert_allclose(R @ R.transpose(0, 2, 1), np.broadcast_to(np.eye(3), (S, 3, 3)), atol=1e-4)
    assert (rec.intrinsics[:, 0, 0] > 0).all() and np.allclose(rec.intrinsics[:, :2, 2], [W / 2, H / 2])
    assert rec.world_points is None and rec.world_points_conf is None
    assert np.isfinite(rec.points_from_depth).all()
    assert rec.metadata["family"] == "da3" and "reference view" in rec.metadata["world_frame"]
    assert [p.metadata["views_done"] for p in partials] == [0, 2, 3]
    # the engine's unprojection equals depth lifted with the (re-expressed) cameras
    from lite3r.geometry import unproject_depth

    np.testing.assert_allclose(
        rec.points_from_depth,
        unproject_depth(rec.depth, rec.extrinsics, rec.intrinsics),
        rtol=1e-4,
        atol=1e-4,
    )


def test_sla_conversion_targets_the_cross_view_blocks():
    """The default conversion swaps exactly the cross-view blocks; with every block kept it is dense."""
    from lite3r.attention.sla import SparseLinearAttention
    from lite3r.convert import Lite3RConfig, convert

    io = load_file(str(PARITY_DIR / "da3_small_io.safetensors"))
    images = io["mv3_ref.input.images"]  # 3 views × 16 tokens: 3 key blocks of 16
    dense, _ = reference.load(REF_CONFIG, STATE)
    with torch.no_grad():
        ref = dense(images)
    for keep in (1.0, 0.5):
        model, _ = reference.load(REF_CONFIG, STATE)
        convert(model, Lite3RConfig(keep_ratio=keep, block_q=16, block_k=16, backend="torch"))
        converted = [n for n, m in model.named_modules() if isinstance(m, SparseLinearAttention)]
        assert converted == model.attention_sites()["cross_view"].modules
        with torch.no_grad():
            out = model(images)
        assert torch.isfinite(out["depth"]).all()
        if keep == 1.0:
            torch.testing.assert_close(out["depth"], ref["depth"], rtol=1e-4, atol=1e-4)


def test_hub_download_and_offline_message(monkeypatch, tmp_path, state):
    import huggingface_hub

    from lite3r.errors import WeightsNotFoundError

    hub_file = _save(tmp_path, {f"model.{k}": v for k, v in state.items()}, "model.safetensors")
    calls = []
    monkeypatch.setattr(
        huggingface_hub, "hf_hub_download", lambda repo_id, filename: calls.append(repo_id) or str(hub_file)
    )
    model = DA3.from_pretrained("depth-anything/DA3-LARGE-1.1", config=SMALL)
    assert calls == ["depth-anything/DA3-LARGE-1.1"] and model.load_report.stripped_prefix == "model."

    def offline(*a, **k):
        raise OSError("We couldn't connect to 'https://huggingface.co' (offline)")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    monkeypatch.setattr(registry, "WEIGHTS_HOME", tmp_path / "home")
    with pytest.raises(WeightsNotFoundError) as e:
        registry.load_model("da3-large")
    msg = str(e.value)
    assert "https://huggingface.co/depth-anything/DA3-LARGE-1.1/resolve/main/model.safetensors" in msg
    assert "DA3-Large weights not found" in msg and "--weights PATH" in msg
