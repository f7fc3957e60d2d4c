"""Camera geometry: quaternions, pose encoding, SE(3) inverse, unprojection (torch and NumPy)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lite3r.geometry import (
    camera_centers,
    closed_form_inverse_se3,
    depth_to_camera_points,
    extri_intri_to_pose_encoding,
    mat_to_quat,
    pose_encoding_to_extri_intri,
    quat_to_mat,
    unproject_depth,
)


def _random_quats(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g, dtype=torch.float64)


def test_quat_to_mat_is_a_rotation_for_any_scale():
    q = _random_quats(64) * 3.0  # not unit length: normalised by 2/|q|²
    R = quat_to_mat(q)
    eye = torch.eye(3, dtype=torch.float64).expand_as(R)
    torch.testing.assert_close(R @ R.transpose(-1, -2), eye)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(64, dtype=torch.float64))


def test_quaternion_convention_is_xyzw():
    a = math.pi / 2  # +90° about z: x → y
    q = torch.tensor([0.0, 0.0, math.sin(a / 2), math.cos(a / 2)], dtype=torch.float64)
    R = quat_to_mat(q)
    torch.testing.assert_close(
        R @ torch.tensor([1.0, 0, 0], dtype=torch.float64), torch.tensor([0.0, 1, 0], dtype=torch.float64)
    )


def test_mat_to_quat_round_trip_and_sign():
    q = _random_quats(256, seed=1)
    q = q / q.norm(dim=-1, keepdim=True)
    q = torch.where(q[..., 3:] < 0, -q, q)
    back = mat_to_quat(quat_to_mat(q))
    assert (back[..., 3] >= 0).all()
    torch.testing.assert_close(back, q, atol=1e-10, rtol=0)


@pytest.mark.parametrize("axis", [(1.0, 0, 0), (0, 1.0, 0), (0, 0, 1.0), (1.0, 1.0, 0)])
def test_mat_to_quat_near_180_degrees(axis):
    """Trace ≈ −1: the w-based formula is ill-conditioned; the best-conditioned candidate is used."""
    ax = torch.tensor(axis, dtype=torch.float64)
    ax = ax / ax.norm()
    for angle in (math.pi, math.pi - 1e-6):
        q = torch.cat([ax * math.sin(angle / 2), torch.tensor([math.cos(angle / 2)], dtype=torch.float64)])
        back = mat_to_quat(quat_to_mat(q))
        torch.testing.assert_close(quat_to_mat(back), quat_to_mat(q), atol=1e-9, rtol=0)
        assert back[3] >= 0 and abs(back.norm() - 1) < 1e-12


def test_pose_encoding_round_trip_and_principal_point():
    q = _random_quats(6, seed=2)
    q = q / q.norm(dim=-1, keepdim=True)
    q = torch.where(q[..., 3:] < 0, -q, q)
    enc = torch.cat(
        [torch.randn(6, 3, dtype=torch.float64), q, torch.rand(6, 2, dtype=torch.float64) + 0.8], -1
    )
    enc = enc.reshape(2, 3, 9)
    ext, K = pose_encoding_to_extri_intri(enc, (42, 70))
    assert ext.shape == (2, 3, 3, 4) and K.shape == (2, 3, 3, 3)
    torch.testing.assert_close(K[..., 0, 2], torch.full((2, 3), 35.0, dtype=torch.float64))
    torch.testing.assert_close(K[..., 1, 2], torch.full((2, 3), 21.0, dtype=torch.float64))
    torch.testing.assert_close(K[..., 0, 0], 35.0 / torch.tan(enc[..., 8] / 2))
    torch.testing.assert_close(K[..., 1, 1], 21.0 / torch.tan(enc[..., 7] / 2))
    torch.testing.assert_close(extri_intri_to_pose_encoding(ext, K, (42, 70)), enc)


def test_min_tan_clamp():
    enc = torch.zeros(1, 1, 9)
    enc[..., 6] = 1.0  # identity rotation, zero FoV
    _, K = pose_encoding_to_extri_intri(enc, (10, 20), min_tan=1e-6)
    assert torch.isfinite(K).all() and K[0, 0, 0, 0] == pytest.approx(10.0 / 1e-6)


def test_se3_inverse_and_camera_centres():
    q = _random_quats(5, seed=3)
    R = quat_to_mat(q)
    t = torch.randn(5, 3, 1, dtype=torch.float64)
    E = torch.cat([R, t], -1)
    inv = closed_form_inverse_se3(E)
    torch.testing.assert_close(inv[..., :3] @ R, torch.eye(3, dtype=torch.float64).expand(5, 3, 3))
    E4 = torch.cat([E, torch.tensor([[[0, 0, 0, 1.0]]], dtype=torch.float64).expand(5, 1, 4)], -2)
    torch.testing.assert_close(
        closed_form_inverse_se3(E4) @ E4, torch.eye(4, dtype=torch.float64).expand(5, 4, 4)
    )
    C = camera_centers(E)
    torch.testing.assert_close((R @ C[..., None] + t)[..., 0], torch.zeros(5, 3, dtype=torch.float64))


def test_unprojection_uses_integer_pixel_grid_and_reprojects():
    H, W = 4, 6
    K = torch.tensor([[10.0, 0, W / 2], [0, 12.0, H / 2], [0, 0, 1]], dtype=torch.float64)
    depth = torch.rand(H, W, dtype=torch.float64) + 1.0
    cam = depth_to_camera_points(depth, K)
    torch.testing.assert_close(
        cam[0, 0],
        torch.tensor(
            [(0 - 3) * depth[0, 0] / 10, (0 - 2) * depth[0, 0] / 12, depth[0, 0]], dtype=torch.float64
        ),
    )
    R = quat_to_mat(torch.tensor([0.1, -0.2, 0.3, 0.9], dtype=torch.float64))
    t = torch.tensor([[0.5], [-1.0], [2.0]], dtype=torch.float64)
    E = torch.cat([R, t], -1)
    world = unproject_depth(depth[..., None], E, K)  # a trailing channel is accepted
    assert world.shape == (H, W, 3)
    back = (R @ world[..., None] + t)[..., 0]  # world → camera
    pix = (K @ back[..., None])[..., 0]
    u = pix[..., 0] / pix[..., 2]
    v = pix[..., 1] / pix[..., 2]
    vv, uu = torch.meshgrid(
        torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij"
    )
    torch.testing.assert_close(u, uu)
    torch.testing.assert_close(v, vv)
    torch.testing.assert_close(pix[..., 2], depth)


def test_batched_unprojection_matches_per_frame():
    B, S, H, W = 2, 3, 5, 7
    enc = torch.cat(
        [torch.randn(B, S, 3), _random_quats(B * S, 4).float().reshape(B, S, 4), torch.full((B, S, 2), 1.1)],
        -1,
    )
    E, K = pose_encoding_to_extri_intri(enc, (H, W))
    depth = torch.rand(B, S, H, W, 1) + 0.5
    pts = unproject_depth(depth, E, K)
    assert pts.shape == (B, S, H, W, 3) and pts.dtype == torch.float32
    torch.testing.assert_close(pts[1, 2], unproject_depth(depth[1, 2], E[1, 2], K[1, 2]))


def test_numpy_in_numpy_out():
    q = np.array([[0.1, 0.2, 0.3, 0.9]], dtype=np.float32)
    R = quat_to_mat(q)
    assert isinstance(R, np.ndarray) and R.dtype == np.float32 and R.shape == (1, 3, 3)
    enc = np.concatenate([np.array([[0.5, -1.0, 2.0]]), q, np.ones((1, 2))], -1).astype(np.float32)
    E, K = pose_encoding_to_extri_intri(enc, (8, 10))
    assert isinstance(E, np.ndarray) and isinstance(K, np.ndarray)
    pts = unproject_depth(np.ones((1, 8, 10), np.float32), E, K)
    assert isinstance(pts, np.ndarray) and pts.dtype == np.float32 and pts.shape == (1, 8, 10, 3)
    np.testing.assert_allclose(
        camera_centers(E), (-np.swapaxes(E[..., :3], -1, -2) @ E[..., 3:])[..., 0], atol=1e-6, rtol=0
    )
