"""PLY and COLMAP export: round trips, third-party readers, atomicity and writability checks."""

from __future__ import annotations

import os

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from lite3r.errors import OutputError
from lite3r.io.atomic import atomic_write, check_writable, check_writable_dir
from lite3r.io.colmap import (
    qvec_to_rotation,
    read_colmap_text,
    rotation_to_qvec,
    unique_image_names,
    write_colmap_text,
)
from lite3r.io.ply import frustum_lines, read_ply, write_frusta_ply, write_ply


def cloud(n=1000, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 3)).astype(np.float32), rng.integers(0, 256, (n, 3), dtype=np.uint8)


def cameras(S=3, seed=0):
    rng = np.random.default_rng(seed)
    R = Rotation.random(S, random_state=seed).as_matrix()
    R[0] = np.eye(3)
    t = rng.normal(size=(S, 3))
    t[0] = 0
    E = np.concatenate([R, t[:, :, None]], axis=2)
    K = np.tile(np.array([[300.0, 0, 320], [0, 310.0, 240], [0, 0, 1]]), (S, 1, 1))
    return E, K, [(480, 640)] * S


def test_ply_round_trip_and_plyfile(tmp_path):
    xyz, rgb = cloud()
    conf = np.linspace(1, 5, len(xyz)).astype(np.float32)
    normals = np.tile([0, 0, 1], (len(xyz), 1)).astype(np.float32)
    p = write_ply(
        tmp_path / "s.ply",
        xyz,
        rgb,
        confidence=conf,
        normals=normals,
        comments=["model vggt-1b", "precision bf16\n"],
    )
    d = read_ply(p)
    assert d.vertex_count == 1000 and d.comments == ["model vggt-1b", "precision bf16"]
    np.testing.assert_array_equal(d.xyz(), xyz)
    np.testing.assert_array_equal(d.rgb(), rgb)
    np.testing.assert_array_equal(d.elements["vertex"]["confidence"], conf)
    plyfile = pytest.importorskip("plyfile")
    v = plyfile.PlyData.read(str(p))["vertex"]
    np.testing.assert_array_equal(v["x"], xyz[:, 0])
    np.testing.assert_array_equal(v["blue"], rgb[:, 2])
    assert v["x"].dtype == np.float32 and v["red"].dtype == np.uint8
    assert p.read_bytes().startswith(b"ply\nformat binary_little_endian 1.0\n")


def test_ply_empty_and_plain(tmp_path):
    p = write_ply(tmp_path / "e.ply", np.zeros((0, 3)))
    assert read_ply(p).vertex_count == 0
    xyz, _ = cloud(10)
    d = read_ply(write_ply(tmp_path / "x.ply", xyz.astype(np.float64)))
    assert d.rgb() is None and d.xyz().dtype == np.float32
    with pytest.raises(ValueError, match="uint8"):
        write_ply(tmp_path / "bad.ply", xyz, np.zeros((10, 3), np.float32))


def test_truncated_ply_detected(tmp_path):
    xyz, rgb = cloud(100)
    p = write_ply(tmp_path / "s.ply", xyz, rgb)
    p.write_bytes(p.read_bytes()[:-5])
    with pytest.raises(ValueError, match="truncated"):
        read_ply(p)


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "out.ply"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_write(target) as f:
        f.write(b"half")
        raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["out.ply"]  # no temporary left behind
    with pytest.raises(ValueError):  # bad input is caught before the file is touched
        write_ply(target, np.zeros((5, 2)))
    assert target.read_bytes() == b"old"


def test_writability_checks(tmp_path):
    assert check_writable(tmp_path / "new" / "deeper" / "s.ply") == tmp_path / "new" / "deeper" / "s.ply"
    assert not (tmp_path / "new").exists()  # the check creates nothing
    with pytest.raises(OutputError, match="is a folder"):
        check_writable(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_writable(tmp_path / "file" / "s.ply")
    with pytest.raises(OutputError, match="is a file"):
        check_writable_dir(tmp_path / "file")
    if os.geteuid() != 0:  # root may write anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            with pytest.raises(OutputError, match="permission denied"):
                check_writable(ro / "s.ply")
        finally:
            ro.chmod(0o700)


def test_frusta(tmp_path):
    E, K, sizes = cameras()
    verts, edges = frustum_lines(E, K, sizes, scale=0.5)
    assert verts.shape == (15, 3) and edges.shape == (24, 2)
    for s in range(3):
        R, t = E[s, :, :3], E[s, :, 3]
        np.testing.assert_allclose(verts[5 * s], -R.T @ t, atol=1e-5)  # apex = camera centre
        cam = R @ verts[5 * s + 3] + t  # bottom-right corner, back in camera coordinates
        assert abs(cam[2] - 0.5) < 1e-5
        np.testing.assert_allclose((K[s] @ cam)[:2] / cam[2], [640, 480], atol=1e-3)
    d = read_ply(write_frusta_ply(tmp_path / "cams.ply", E, K, sizes, comments=["model test"]))
    assert d.vertex_count == 15 and len(d.elements["edge"]) == 24
    assert d.elements["edge"]["vertex1"].max() < 15


def test_colmap_round_trip(tmp_path):
    E, K, sizes = cameras(4)
    xyz, rgb = cloud(5000)
    names = [f"img_{i}.jpg" for i in range(4)]
    out = write_colmap_text(
        tmp_path / "sparse", E, K, sizes, names, xyz, rgb, max_points=1000, comment="lite3r test"
    )
    m = read_colmap_text(out)
    assert sorted(os.listdir(out)) == ["cameras.txt", "images.txt", "points3D.txt"]
    assert m["cameras"][1][0] == "PINHOLE" and m["cameras"][1][1:3] == (640, 480)
    np.testing.assert_allclose(m["cameras"][2][3], [300, 310, 320, 240])
    for i in range(4):
        q, t, cam_id, name = m["images"][i + 1]
        assert name == names[i] and cam_id == i + 1 and q[0] >= 0
        np.testing.assert_allclose(qvec_to_rotation(q), E[i, :, :3], atol=1e-9)
        np.testing.assert_allclose(t, E[i, :, 3], atol=1e-9)
    pxyz, prgb = m["points"]
    assert pxyz.shape == (1000, 3)
    # every exported point is one of the inputs, with its colour
    lookup = {tuple(np.round(p, 4)): c for p, c in zip(xyz.astype(np.float64), rgb)}
    for p, c in zip(pxyz[:50], prgb[:50]):
        assert (lookup[tuple(np.round(p, 4))] == c).all()
    # a second export replaces the model; without points the file is empty but valid
    write_colmap_text(out, E, K, sizes, names)
    assert read_colmap_text(out)["points"][0].shape == (0, 3)


def test_colmap_quaternion_convention():
    R = Rotation.from_euler("z", 90, degrees=True).as_matrix()
    q = rotation_to_qvec(R)
    np.testing.assert_allclose(q, [np.sqrt(0.5), 0, 0, np.sqrt(0.5)], atol=1e-12)  # w, x, y, z
    q = rotation_to_qvec(Rotation.from_euler("x", 270, degrees=True).as_matrix())
    assert q[0] >= 0


def test_colmap_names(tmp_path):
    assert unique_image_names(["/a/x.jpg", "/a/y.jpg"]) == ["x.jpg", "y.jpg"]
    assert unique_image_names(["/a/p/x.jpg", "/a/q/x.jpg"]) == ["p/x.jpg", "q/x.jpg"]
    with pytest.raises(OutputError, match="spaces"):
        unique_image_names(["/a/my photo.jpg"])
