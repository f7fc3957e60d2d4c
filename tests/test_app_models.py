"""Desktop app, Qt-free parts: photo scanning, project cache keys, compare maths, exports, no torch."""

# ruff: noqa: F811 (pytest fixtures imported from app_fixtures are redefined as test arguments)
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from app_fake_backend import make_reconstruction
from app_fixtures import non_blank, photo_folder  # noqa: F401

from lite3r.app import compare as cmp
from lite3r.app import export
from lite3r.app.photos import expand_paths, load_thumbnail, scan_photos
from lite3r.app.project import Project, RunSettings
from lite3r.errors import OutputError


def test_photo_scan_lists_images_and_flags_bad_ones(photo_folder):
    files, folder = expand_paths([photo_folder])
    assert folder == photo_folder
    assert [f.name for f in files] == [
        "broken.jpg",
        "fake.jpg",
        "img1.png",
        "img2.png",
        "img3.png",
    ]  # no .txt
    entries = {e.name: e for e in scan_photos(files)}
    assert entries["img1.png"].ok and (entries["img1.png"].width, entries["img1.png"].height) == (80, 60)
    assert not entries["fake.jpg"].ok and "readable" in entries["fake.jpg"].problem
    assert entries["broken.jpg"].ok  # the header is fine: only a full decode finds the truncation
    arr, problem = load_thumbnail(photo_folder / "broken.jpg")
    assert arr is None and "truncated" in problem.problem
    arr, problem = load_thumbnail(photo_folder / "img2.png", size=40)
    assert problem is None and arr.dtype == np.uint8 and max(arr.shape[:2]) == 40


def test_project_cache_key_follows_photos_and_settings(tmp_path, photo_folder):
    files, folder = expand_paths([photo_folder])
    p = Project()
    seen = []
    p.photos_changed.connect(lambda: seen.append("photos"))
    p.set_photos(scan_photos(files), folder)
    assert seen == ["photos"] and p.problem_count == 1
    dense = RunSettings()
    sla = dense.with_(attention="sla")
    assert p.result_key(dense) != p.result_key(sla)
    assert p.result_key(dense) == p.result_key(RunSettings())
    p.remember(dense, tmp_path / "missing.npz")
    assert p.cached_path(dense) is None  # a deleted cache file is not a hit
    (tmp_path / "r.npz").write_bytes(b"x")
    p.remember(dense, tmp_path / "r.npz")
    assert p.cached_path(dense) == tmp_path / "r.npz" and p.cached_path(sla) is None
    p.max_cached = 1  # the oldest result file goes when the cache is full
    (tmp_path / "s.npz").write_bytes(b"y")
    p.remember(sla, tmp_path / "s.npz")
    assert not (tmp_path / "r.npz").exists() and p.cached_path(dense) is None and p.cached_path(sla)
    with pytest.raises(ValueError):
        RunSettings(precision="fp16")
    assert "SLA keep 25%" in RunSettings(attention="sla", kept_fraction=0.25).label()
    bf16_heads = RunSettings(precision="bf16", heads_precision="bf16")
    assert p.result_key(bf16_heads) != p.result_key(RunSettings(precision="bf16"))
    assert bf16_heads.label().endswith("bf16 · bf16 heads")
    with pytest.raises(ValueError, match="bf16 heads need"):
        RunSettings(heads_precision="bf16")  # fp32 means everything in float32
    with pytest.raises(ValueError, match="heads precision"):
        RunSettings(precision="bf16", heads_precision="fp16")


def test_app_head_precisions_match_the_engine():
    from lite3r.app.project import HEAD_PRECISIONS
    from lite3r.quant.precision import HEAD_PRECISIONS as ENGINE_HEAD_PRECISIONS

    assert HEAD_PRECISIONS == ENGINE_HEAD_PRECISIONS


def test_compare_recovers_a_similarity_and_measures_distances():
    left = make_reconstruction(S=3, seed=0)
    right = make_reconstruction(S=3, seed=0)
    # the right model's frame: scaled, rotated and shifted (what a different run's arbitrary frame looks like)
    a = 0.3
    Rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    true = cmp.Sim3(2.5, Rz, np.array([1.0, -2.0, 0.5]))
    inv = cmp.Sim3(1 / 2.5, Rz.T, -Rz.T @ true.translation / 2.5)
    right.points_from_depth = inv.apply(left.points_from_depth).astype(np.float32)
    right.extrinsics = true.apply_to_extrinsics(left.extrinsics).astype(np.float32)  # maps left cams by inv
    xyz_l = left.point_cloud()[0]
    xyz_r = right.point_cloud()[0]
    res, aligned = cmp.compare(left, right, xyz_l, xyz_r, threshold_rel=0.01)
    assert res.alignment == "pixels"
    assert res.transform.scale == pytest.approx(2.5, rel=1e-5)
    assert np.abs(aligned - xyz_l).max() < 1e-3
    s = res.summary()
    assert s["median"] < 1e-3 and s["within"] == pytest.approx(100.0)
    # a perturbed right cloud: distances grow, fewer points within the threshold
    noise = np.random.default_rng(0).normal(0, 0.05, left.points_from_depth.shape)
    right.points_from_depth = inv.apply(left.points_from_depth + noise).astype(np.float32)
    res2, _ = cmp.compare(left, right, xyz_l, right.point_cloud()[0], threshold_rel=0.001)
    assert res2.summary()["mean"] > res.summary()["mean"] and res2.summary()["within"] < 100
    # different pixel grids: falls back to the cameras, and says so
    small = make_reconstruction(S=3, H=21, W=28)
    _, how = cmp.align_pair(left, small)
    assert how == "cameras"


def test_exports_write_readable_files_and_refuse_to_overwrite(tmp_path):
    from lite3r.io.colmap import read_colmap_text
    from lite3r.io.ply import read_ply

    recon = make_reconstruction(S=2)
    xyz, rgb, _ = recon.point_cloud(conf_percentile=50)
    path = export.export_ply(tmp_path / "scene.ply", recon, conf_percentile=50)
    ply = read_ply(path)
    assert ply.vertex_count == len(xyz)
    np.testing.assert_allclose(ply.xyz(), xyz)
    assert (ply.rgb() == rgb).all()
    assert any("attention" in c for c in ply.comments)
    with pytest.raises(OutputError, match="already exists"):
        export.export_ply(path, recon)
    export.export_ply(path, recon, conf_percentile=0, overwrite=True)
    assert read_ply(path).vertex_count == len(recon.point_cloud()[0])
    folder = export.export_colmap(tmp_path / "colmap", recon, conf_percentile=50)
    model = read_colmap_text(folder)
    assert len(model["images"]) == 2 and len(model["points"][0]) == len(xyz)
    with pytest.raises(OutputError):
        export.export_colmap(folder, recon)
    png = export.save_png(tmp_path / "shot.png", np.full((10, 12, 3), 200, np.uint8))
    from PIL import Image

    assert Image.open(png).size == (12, 10)


def test_gui_process_never_imports_torch():
    code = (
        "import sys, lite3r.app.main, lite3r.app.main_window, lite3r.app.compare; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


@pytest.mark.gl
def test_scene_functions_render_headless():
    import pyvista as pv

    from lite3r.app import scene

    recon = make_reconstruction(S=3, H=42, W=56)
    xyz, rgb, _ = recon.point_cloud()
    pl = pv.Plotter(off_screen=True, window_size=(400, 300))
    try:
        pl.set_background("black")
        scene.add_point_cloud(pl, xyz, rgb, point_size=3)
        size = scene.frustum_size(recon.extrinsics, xyz)
        actors = scene.add_cameras(
            pl, recon.extrinsics, recon.intrinsics, recon.image_size, size, highlight=1
        )
        pl.view_xz()
        pl.reset_camera()
        img = pl.screenshot(return_img=True)
        assert non_blank(img)
        # the centre of frustum 2's image plane picks camera 2
        K = recon.intrinsics[2].astype(float)
        h, w = recon.image_size
        ray = np.linalg.inv(K) @ np.array([w / 2, h / 2, 1.0]) * size
        R, t = recon.extrinsics[2, :, :3].astype(float), recon.extrinsics[2, :, 3].astype(float)
        x, y = scene.world_to_display(pl, R.T @ (ray - t))
        assert scene.pick_view(pl, int(x), int(y), actors) == 2
    finally:
        pl.close()


def test_app_command_line_refuses_bf16_heads_with_fp32():
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "lite3r.app", "--precision", "fp32", "--heads-precision", "bf16"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "needs --precision bf16 or fp8" in proc.stderr
