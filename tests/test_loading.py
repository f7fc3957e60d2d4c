"""Checkpoint loading: formats, strictness reports, drop lists, wrong/corrupt files, hub/offline."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import PARITY_DIR
from safetensors.torch import load_file, save_file

from lite3r.errors import CheckpointError, UnsupportedError, WeightsNotFoundError
from lite3r.models import loading, registry
from lite3r.models.vggt import VGGT, VGGTConfig, from_reference_config

STATE = PARITY_DIR / "vggt_small_state_dict.safetensors"
SMALL = from_reference_config(json.loads((PARITY_DIR / "vggt_small_config.json").read_text()))


@pytest.fixture(scope="module")
def state():
    return load_file(str(STATE))


def _save(tmp_path, sd, name="ckpt.safetensors"):
    path = tmp_path / name
    if name.endswith(".safetensors"):
        save_file(sd, str(path))
    else:
        torch.save(sd, path)
    return path


def _same_weights(model, sd):
    own = model.state_dict()
    return all(torch.equal(own[k], sd[k]) for k in own)


def test_safetensors_strict_load_reports_drops(state):
    model = VGGT.from_pretrained(STATE, config=SMALL)
    assert not model.training
    assert model.load_report.ok
    assert model.load_report.dropped == ["aggregator.patch_embed.mask_token"]
    assert "dropped 1 unused keys" in model.load_report.summary()
    assert _same_weights(model, state)
    # non-persistent constants are refilled after the meta-device build
    assert torch.allclose(model.aggregator._resnet_mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))


def test_track_head_keys_are_dropped(tmp_path, state):
    sd = dict(state, **{"track_head.feature_extractor.norm.weight": torch.ones(3)})
    model = VGGT.from_pretrained(_save(tmp_path, sd), config=SMALL)
    assert sorted(model.load_report.dropped) == [
        "aggregator.patch_embed.mask_token",
        "track_head.feature_extractor.norm.weight",
    ]


def test_pt_file_and_training_format_dict(tmp_path, state):
    plain = VGGT.from_pretrained(_save(tmp_path, dict(state), "plain.pt"), config=SMALL)
    assert plain.load_report.format == "torch" and _same_weights(plain, state)
    extra = {
        "aggregator.global_blocks.0.attn.proj_lin.weight": torch.randn(16, 16),
        "aggregator.global_blocks.0.attn.lam": torch.tensor(0.5),
    }
    wrapped = {"model": dict(state, **extra), "optim": None, "step": 7, "extra": {"note": "x"}}
    model = VGGT.from_pretrained(_save(tmp_path, wrapped, "last.pt"), config=SMALL)
    rep = model.load_report
    assert rep.unwrapped == "model" and rep.ok
    assert rep.ignored == ["aggregator.global_blocks.0.attn.lam"]
    assert list(rep.adapter) == ["aggregator.global_blocks.0.attn.proj_lin.weight"]
    assert _same_weights(model, state)


def test_module_prefix_is_stripped(tmp_path, state):
    model = VGGT.from_pretrained(_save(tmp_path, {f"module.{k}": v for k, v in state.items()}), config=SMALL)
    assert model.load_report.stripped_prefix == "module." and _same_weights(model, state)


def test_missing_key_is_refused_then_allowed_non_strict(tmp_path, state):
    sd = dict(state)
    del sd["camera_head.empty_pose_tokens"]
    path = _save(tmp_path, sd)
    with pytest.raises(CheckpointError, match=r"1 missing: camera_head\.empty_pose_tokens") as e:
        VGGT.from_pretrained(path, config=SMALL)
    assert str(path) in str(e.value) and "strict=False" in str(e.value)
    model = VGGT.from_pretrained(path, config=SMALL, strict=False)
    assert model.load_report.missing == ["camera_head.empty_pose_tokens"]
    assert torch.equal(model.depth_head.norm.weight, state["depth_head.norm.weight"])


def test_unexpected_and_mismatched_keys_are_listed(tmp_path, state):
    sd = dict(state)
    sd["depth_head.extra.weight"] = torch.zeros(2)
    sd["depth_head.norm.weight"] = torch.zeros(65)
    with pytest.raises(CheckpointError) as e:
        VGGT.from_pretrained(_save(tmp_path, sd), config=SMALL)
    msg = str(e.value)
    assert "1 unexpected: depth_head.extra.weight" in msg
    assert "depth_head.norm.weight (file [65], model [64])" in msg


def test_wrong_config_gives_shape_report(state):
    with pytest.raises(CheckpointError, match="wrong shape"):
        VGGT.from_pretrained(STATE)  # a reduced file against the VGGT-1B config


@pytest.mark.parametrize("name", ["cut.safetensors", "cut.pt"])
def test_truncated_file_names_the_file(tmp_path, state, name):
    full = _save(tmp_path, dict(state), "full" + name[3:])
    data = full.read_bytes()
    path = tmp_path / name
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as e:
        VGGT.from_pretrained(path, config=SMALL)
    assert str(path) in str(e.value)


def test_garbage_file(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match=str(path)):
        VGGT.from_pretrained(path, config=SMALL)


def test_da3_checkpoint_is_recognised():
    with pytest.raises(CheckpointError, match="Depth-Anything-3") as e:
        VGGT.from_pretrained(PARITY_DIR / "da3_small_state_dict.safetensors", config=SMALL)
    assert "not a VGGT" in str(e.value)


def test_unrelated_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="not a VGGT checkpoint"):
        VGGT.from_pretrained(_save(tmp_path, {"encoder.weight": torch.zeros(2)}), config=SMALL)


def test_missing_file():
    with pytest.raises(WeightsNotFoundError, match="not found"):
        VGGT.from_pretrained("/nonexistent/dir/model.safetensors")


def test_offline_hub_gives_download_instructions(monkeypatch, tmp_path):
    def offline(*a, **k):
        raise OSError("We couldn't connect to 'https://huggingface.co' (offline)")

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(WeightsNotFoundError) as e:
        VGGT.from_pretrained("facebook/VGGT-1B")
    msg = str(e.value)
    assert "https://huggingface.co/facebook/VGGT-1B/resolve/main/model.safetensors" in msg
    assert "--weights PATH" in msg and "OSError" in msg

    monkeypatch.setattr(registry, "WEIGHTS_HOME", tmp_path)
    with pytest.raises(WeightsNotFoundError) as e:
        registry.load_model("vggt-1b")
    msg = str(e.value)
    assert "resolve/main/model.safetensors" in msg
    assert str(tmp_path / "vggt-1b" / "model.safetensors") in msg and "--weights PATH" in msg


def test_hub_download_path_is_used(monkeypatch, tmp_path, state):
    import huggingface_hub

    path = _save(tmp_path, dict(state), "model.safetensors")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo_id, filename: str(path))
    model = VGGT.from_pretrained("someone/vggt-small", config=SMALL)
    assert model.load_report.ok


def test_registry_specs_and_tiny_without_weights(monkeypatch, tmp_path):
    spec = registry.get_spec("vggt-1b")
    assert (
        spec.family == "vggt" and spec.hf_repo_id == "facebook/VGGT-1B" and spec.preprocessing == "vggt_crop"
    )
    assert spec.weights_url == "https://huggingface.co/facebook/VGGT-1B/resolve/main/model.safetensors"
    with pytest.raises(UnsupportedError, match="unknown model"):
        registry.get_spec("vggt-2b")
    monkeypatch.setattr(registry, "_tiny_folder", lambda: tmp_path / "lite3r-tiny")
    with pytest.raises(WeightsNotFoundError, match="Lite3R-tiny") as e:
        registry.load_model("lite3r-tiny")
    assert str(tmp_path / "lite3r-tiny" / "model.safetensors") in str(e.value)


def test_save_pretrained_round_trip_and_registry_tiny(monkeypatch, tmp_path):
    cfg = VGGTConfig.scaled(
        img_size=56,
        embed_dim=64,
        num_heads=1,
        depth=2,
        dino_depth=1,
        dpt_features=16,
        dpt_out_channels=(8, 16, 32, 32),
    )
    torch.manual_seed(0)
    model = VGGT(cfg).eval()
    folder = model.save_pretrained(tmp_path / "lite3r-tiny", metadata={"input_size": 56})
    assert json.loads((folder / "config.json").read_text())["family"] == "vggt"
    assert not list(folder.glob("*.tmp"))
    again = VGGT.from_pretrained(folder)
    assert again.config == cfg and _same_weights(again, model.state_dict())
    monkeypatch.setattr(registry, "_tiny_folder", lambda: folder)
    tiny = registry.load_model("lite3r-tiny")
    x = torch.rand(1, 2, 3, 56, 84)
    with torch.no_grad():
        torch.testing.assert_close(tiny(x)["depth"], model(x)["depth"])


def test_authors_checkpoint_without_point_head(monkeypatch, tmp_path, state):
    monkeypatch.setattr(loading, "default_vggt_config", lambda: SMALL)
    sd = {k: v for k, v in state.items() if not k.startswith("point_head.")}
    model = VGGT.from_pretrained(_save(tmp_path, {"model": sd, "step": 1}, "last.pt"))
    assert model.point_head is None and model.load_report.ok
    with torch.no_grad():
        feats = model.encode(torch.rand(1, 2, 3, 42, 70))
    assert model.decode_points(feats, None) is None
    assert model.head_modules() == ["camera_head", "depth_head"]


def test_official_config_json(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"img_size": 518, "patch_size": 14, "embed_dim": 1024}))
    assert loading.read_vggt_config(tmp_path / "config.json") == VGGTConfig.vggt_1b()
    (tmp_path / "config.json").write_text(json.dumps({"img_size": 224, "patch_size": 14, "embed_dim": 1024}))
    with pytest.raises(CheckpointError, match="differs from VGGT-1B"):
        loading.read_vggt_config(tmp_path / "config.json")


def test_config_dict_round_trip():
    cfg = VGGTConfig.scaled(point_head=False)
    assert VGGTConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="unknown"):
        VGGTConfig.from_dict({"aggregator": {"depth": 2, "bogus": 1}})
    with pytest.raises(ValueError, match="dim_in"):
        VGGTConfig.from_dict({"aggregator": {"embed_dim": 64, "patch_embed": {"embed_dim": 64}}})
