"""`lite3r reconstruct` / `lite3r info` end to end on CPU: the reduced VGGT checkpoint as a real file,
the real Middlebury pair, and every kind of bad input (one clear line, exit ≠ 0, nothing left behind)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from conftest import PARITY_DIR, PHOTOS_DIR
from engine_fixtures import save_small_vggt

from lite3r.cli import main
from lite3r.engine.reconstruction import Reconstruction
from lite3r.io.colmap import qvec_to_rotation, read_colmap_text
from lite3r.io.ply import read_ply

PAIR = [str(PHOTOS_DIR / "motorcycle_left.jpg"), str(PHOTOS_DIR / "motorcycle_right.jpg")]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return save_small_vggt(tmp_path_factory.mktemp("small-vggt"))


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in PAIR:
        shutil.copy(p, folder)
    (folder / "notes.txt").write_text("not a photo")
    return folder


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No network and an empty weights home, whatever the machine has cached."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from lite3r.models import registry

    monkeypatch.setattr(registry, "WEIGHTS_HOME", tmp_path / "weights-home")


def fail(capsys, argv, *needles):
    code = main(argv)
    err = capsys.readouterr().err
    assert code != 0, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    for n in needles:
        assert n in err, err
    assert "Traceback" not in err
    return err


def test_reconstruct_writes_ply_colmap_and_cameras(tmp_path, photos, weights, capsys):
    out = tmp_path / "out"
    argv = [
        "reconstruct", str(photos), "--model", "vggt-1b", "--weights", str(weights), "--device", "cpu",
        "-o", str(out / "scene.ply"), "--colmap", str(out / "sparse"), "--cameras-ply", str(out / "cams.ply"),
        "--save", str(out / "rec.npz"), "--conf-percentile", "30", "--ply-confidence", "--no-progress",
        "--input-size", "252",
    ]  # fmt: skip
    assert main(argv) == 0
    summary = capsys.readouterr().out
    rec = Reconstruction.load(out / "rec.npz")
    xyz, rgb, conf = rec.point_cloud("depth", conf_percentile=30)
    ply = read_ply(out / "scene.ply")
    assert ply.vertex_count == len(xyz) > 0
    np.testing.assert_array_equal(ply.xyz(), xyz)
    np.testing.assert_array_equal(ply.rgb(), rgb)
    np.testing.assert_array_equal(ply.elements["vertex"]["confidence"], conf)
    assert "model vggt-1b" in ply.comments and "precision fp32" in ply.comments
    assert f"{len(xyz):,} points" in summary and "2 views at 168×252" in summary
    assert "fp32" in summary and "dense" in summary and "peak memory n/a (CPU)" in summary

    model = read_colmap_text(out / "sparse")
    assert [model["images"][i][3] for i in (1, 2)] == ["motorcycle_left.jpg", "motorcycle_right.jpg"]
    assert model["cameras"][1][:3] == ("PINHOLE", 741, 500)
    np.testing.assert_allclose(model["cameras"][1][3][2:], [370.5, 250.0], rtol=1e-6)
    np.testing.assert_allclose(qvec_to_rotation(model["images"][2][0]), rec.extrinsics[1, :, :3], atol=1e-5)
    assert 0 < len(model["points"][0]) <= min(len(xyz), 100_000)
    cams = read_ply(out / "cams.ply")
    assert cams.vertex_count == 10 and len(cams.elements["edge"]) == 16
    assert sorted(os.listdir(out)) == ["cams.ply", "rec.npz", "scene.ply", "sparse"]


def test_missing_weights_explain_offline(tmp_path, capsys):
    err = fail(capsys, ["reconstruct", *PAIR, "--model", "vggt-1b", "--device", "cpu", "-o", str(tmp_path / "s.ply")],
               "VGGT-1B weights not found", "facebook/VGGT-1B", "--weights")  # fmt: skip
    assert "fix:" in err
    fail(capsys, ["reconstruct", *PAIR, "--weights", str(tmp_path / "nope.safetensors"), "--device", "cpu",
                  "-o", str(tmp_path / "s.ply")], "nope.safetensors")  # fmt: skip
    assert not (tmp_path / "s.ply").exists()


def test_wrong_and_truncated_checkpoints(tmp_path, weights, capsys):
    out = tmp_path / "s.ply"
    fail(capsys, ["reconstruct", *PAIR, "--weights", str(PARITY_DIR / "da3_small_state_dict.safetensors"),
                  "--device", "cpu", "-o", str(out)], "da3")  # fmt: skip
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(weights / "config.json", bad)
    data = (weights / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    fail(
        capsys,
        ["reconstruct", *PAIR, "--weights", str(bad), "--device", "cpu", "-o", str(out)],
        "model.safetensors",
    )
    assert sorted(os.listdir(tmp_path)) == ["bad"]


def test_bad_photos(tmp_path, photos, weights, capsys):
    out = tmp_path / "s.ply"
    base = ["--weights", str(weights), "--device", "cpu", "-o", str(out)]
    data = (photos / "motorcycle_right.jpg").read_bytes()
    (photos / "motorcycle_right.jpg").write_bytes(data[: len(data) // 3])
    fail(capsys, ["reconstruct", str(photos), *base], "motorcycle_right.jpg", "truncated")
    empty = tmp_path / "empty"
    empty.mkdir()
    fail(capsys, ["reconstruct", str(empty), *base], "no images found", str(empty))
    fail(capsys, ["reconstruct", PAIR[0], *base], "only one photo", "motorcycle_left.jpg", "--allow-single")
    (tmp_path / "x.heic").write_bytes(b"\0" * 64)
    fail(capsys, ["reconstruct", PAIR[0], str(tmp_path / "x.heic"), *base], "HEIC")
    fail(capsys, ["reconstruct", str(tmp_path / "missing"), *base], "no such")
    assert not out.exists()


def test_unwritable_outputs_fail_before_the_model(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    # no weights exist: if the writability check did not come first, the error would be about weights
    fail(capsys, ["reconstruct", *PAIR, "-o", str(blocker / "s.ply")], "is a file, not a folder")
    fail(capsys, ["reconstruct", *PAIR, "-o", str(tmp_path)], "is a folder")
    fail(capsys, ["reconstruct", *PAIR, "-o", str(tmp_path / "s.ply"), "--colmap", str(blocker)], "is a file")
    fail(capsys, ["reconstruct", *PAIR], "no output file", "-o scene.ply")
    assert sorted(os.listdir(tmp_path)) == ["file"]


def test_unsupported_combinations(tmp_path, weights, capsys):
    base = [*PAIR, "--weights", str(weights), "--device", "cpu", "-o", str(tmp_path / "s.ply")]
    fail(capsys, ["reconstruct", *base, "--precision", "fp8"], "fp8")
    # refused before any weights are looked for (no multi-GB load first)
    fail(
        capsys,
        ["reconstruct", *PAIR, "--device", "cpu", "--precision", "fp8", "-o", str(tmp_path / "s.ply")],
        "fp8",
    )
    fail(capsys, ["reconstruct", *base, "--keep", "0.1"], "--attention sla")
    try:
        import lite3r.convert  # noqa: F401
    except ImportError:
        fail(capsys, ["reconstruct", *base, "--attention", "sla", "--keep", "0.1"], "sparse-linear")
    assert not (tmp_path / "s.ply").exists()


def test_demo_is_explained(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(["reconstruct", "--demo", "--device", "cpu", "--no-progress"])
    if code == 0:  # demo scene and lite3r-tiny both shipped
        assert read_ply(tmp_path / "demo.ply").vertex_count > 0
        return
    err = capsys.readouterr().err
    assert ("demo" in err or "Lite3R-tiny" in err) and "Traceback" not in err


def test_info(capsys):
    assert main(["info", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "fp8" in text and "vggt-1b" in text and "facebook/VGGT-1B" in text and "demo" in text
    assert main(["info", "--json", "--device", "cpu"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["precisions"]["fp32"]["supported"] is True
    assert info["precisions"]["fp8"]["supported"] is False and info["precisions"]["fp8"]["reason"]
    names = [m["name"] for m in info["models"]]
    assert names == ["vggt-1b", "da3-large", "lite3r-tiny"]


def _cli_sla(weights, out, *extra):
    return [
        "reconstruct", *PAIR, "--model", "vggt-1b", "--weights", str(weights), "--device", "cpu",
        "-o", str(out), "--no-progress", "--input-size", "168", "--attention", "sla", *extra,
    ]  # fmt: skip


def test_sla_keep_and_adapter(tmp_path, weights, capsys):
    """--attention sla --keep runs the SLA path and says so; --adapter loads a trained adapter for these
    exact weights and refuses one made for other weights (or combined with --keep)."""
    from lite3r.adapters import base_hash_of, hash_state_dict, save_adapter
    from lite3r.convert import Lite3RConfig, convert
    from lite3r.models.registry import load_model

    assert main(_cli_sla(weights, tmp_path / "a.ply", "--keep", "0.5")) == 0
    summary = capsys.readouterr().out
    assert "SLA torch · 50% kept" in summary and "global ×5" in summary
    assert read_ply(tmp_path / "a.ply").vertex_count > 0

    model = load_model("vggt-1b", weights=weights, device="cpu")
    base = base_hash_of(model)
    conversion = {"keep_ratio": 0.5, "backend": "torch"}
    convert(model, Lite3RConfig(**conversion))
    tensors = {
        k: v.detach().clone().normal_(0, 1e-3) for k, v in model.state_dict().items() if "proj_lin" in k
    }
    assert tensors
    good = save_adapter(tmp_path / "good.safetensors", tensors, conversion=conversion, base_model="vggt-1b",
                        base_hash=base)  # fmt: skip
    assert main(_cli_sla(weights, tmp_path / "b.ply", "--adapter", str(good))) == 0
    assert read_ply(tmp_path / "b.ply").vertex_count > 0
    capsys.readouterr()

    foreign = save_adapter(tmp_path / "foreign.safetensors", tensors, conversion=conversion,
                           base_model="vggt-1b", base_hash=hash_state_dict({"x": tensors[next(iter(tensors))]}))  # fmt: skip
    fail(capsys, _cli_sla(weights, tmp_path / "c.ply", "--adapter", str(foreign)), "different base model")
    fail(capsys, _cli_sla(weights, tmp_path / "d.ply", "--adapter", str(good), "--keep", "0.2"), "--keep")
    assert not (tmp_path / "c.ply").exists() and not (tmp_path / "d.ply").exists()
