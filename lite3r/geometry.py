"""Camera geometry shared by the models, the engine and the evaluation (architectures.md §0, §1.10).

Conventions: extrinsics are world→camera [R | t] (OpenCV: x right, y down, z forward), [..., 3, 4]
(a [..., 4, 4] input is accepted where noted); intrinsics are pixels [..., 3, 3]; quaternions are
**xyzw** (scalar last). The pose encoding "absT_quaR_FoV" is [T(3), q(4), fov_h, fov_w] (radians).

Every function takes torch tensors or NumPy arrays and returns the same kind (NumPy in, NumPy out,
same float dtype); the arithmetic runs in torch, vectorised over any leading dimensions.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

Array = torch.Tensor | np.ndarray


def _numpy_compatible(fn: Callable) -> Callable:
    """Let a torch function accept NumPy arrays (converted in, converted back out)."""

    def wrapper(*args, **kwargs):
        if not any(isinstance(a, np.ndarray) for a in (*args, *kwargs.values())):
            return fn(*args, **kwargs)
        args = tuple(torch.from_numpy(np.asarray(a)) if isinstance(a, np.ndarray) else a for a in args)
        kwargs = {
            k: torch.from_numpy(np.asarray(v)) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()
        }
        out = fn(*args, **kwargs)
        if isinstance(out, tuple):
            return tuple(o.numpy() if isinstance(o, torch.Tensor) else o for o in out)
        return out.numpy()

    wrapper.__name__ = fn.__name__
    wrapper.__qualname__ = fn.__qualname__
    wrapper.__doc__ = fn.__doc__
    return wrapper


@_numpy_compatible
def quat_to_mat(quat: Array) -> Array:
    """Quaternions [..., 4] (xyzw, not necessarily unit length: normalised by 2/|q|²) → rotations
    [..., 3, 3]."""
    i, j, k, r = torch.unbind(quat, -1)
    two_s = 2.0 / (quat * quat).sum(-1)
    o = torch.stack(
        (
            1 - two_s * (j * j + k * k),
            two_s * (i * j - k * r),
            two_s * (i * k + j * r),
            two_s * (i * j + k * r),
            1 - two_s * (i * i + k * k),
            two_s * (j * k - i * r),
            two_s * (i * k - j * r),
            two_s * (j * k + i * r),
            1 - two_s * (i * i + j * j),
        ),
        -1,
    )
    return o.reshape((*quat.shape[:-1], 3, 3))


def _sqrt_positive_part(x: torch.Tensor) -> torch.Tensor:
    """sqrt(max(x, 0)) with a zero (not NaN) gradient at x ≤ 0."""
    ret = torch.zeros_like(x)
    positive = x > 0
    ret[positive] = torch.sqrt(x[positive])
    return ret


@_numpy_compatible
def mat_to_quat(matrix: Array) -> Array:
    """Rotations [..., 3, 3] → unit quaternions [..., 4] (xyzw, w ≥ 0).

    Of the four candidate formulas the best-conditioned one is taken (argmax of the diagonal terms
    |q_i|, denominators floored at 0.1), then the sign is flipped so that w ≥ 0 — the reference's
    conditioning, so poses round-trip bit-for-bit in spirit and exactly within float tolerance.
    """
    batch = matrix.shape[:-2]
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = torch.unbind(matrix.reshape((*batch, 9)), dim=-1)
    q_abs = _sqrt_positive_part(
        torch.stack(
            [
                1.0 + m00 + m11 + m22,
                1.0 + m00 - m11 - m22,
                1.0 - m00 + m11 - m22,
                1.0 - m00 - m11 + m22,
            ],
            dim=-1,
        )
    )
    # Candidate rows: quaternions (r, i, j, k) scaled by 2·q_abs of the respective component.
    cand = torch.stack(
        [
            torch.stack([q_abs[..., 0] ** 2, m21 - m12, m02 - m20, m10 - m01], dim=-1),
            torch.stack([m21 - m12, q_abs[..., 1] ** 2, m10 + m01, m02 + m20], dim=-1),
            torch.stack([m02 - m20, m10 + m01, q_abs[..., 2] ** 2, m12 + m21], dim=-1),
            torch.stack([m10 - m01, m20 + m02, m21 + m12, q_abs[..., 3] ** 2], dim=-1),
        ],
        dim=-2,
    )
    floor = torch.tensor(0.1, dtype=q_abs.dtype, device=q_abs.device)
    cand = cand / (2.0 * q_abs[..., None].max(floor))
    best = q_abs.argmax(dim=-1)
    rijk = torch.gather(cand, -2, best[..., None, None].expand(*batch, 1, 4)).squeeze(-2)
    xyzw = rijk[..., [1, 2, 3, 0]]
    return torch.where(xyzw[..., 3:4] < 0, -xyzw, xyzw)


@_numpy_compatible
def pose_encoding_to_extri_intri(
    pose_enc: Array, image_hw: tuple[int, int], min_tan: float | None = None
) -> tuple[Array, Array]:
    """absT_quaR_FoV [..., 9] → (extrinsics [..., 3, 4], intrinsics [..., 3, 3]).

    fx = (W/2)/tan(fov_w/2), fy = (H/2)/tan(fov_h/2), principal point exactly (W/2, H/2). ``min_tan``
    clamps tan(·) from below (DA3 uses 1e-6; VGGT does not clamp: ``None``).
    """
    T = pose_enc[..., :3]
    R = quat_to_mat(pose_enc[..., 3:7])
    extrinsics = torch.cat([R, T[..., None]], dim=-1)
    H, W = image_hw
    tan_h = torch.tan(pose_enc[..., 7] / 2.0)
    tan_w = torch.tan(pose_enc[..., 8] / 2.0)
    if min_tan is not None:
        tan_h, tan_w = tan_h.clamp(min=min_tan), tan_w.clamp(min=min_tan)
    intrinsics = torch.zeros((*pose_enc.shape[:-1], 3, 3), dtype=pose_enc.dtype, device=pose_enc.device)
    intrinsics[..., 0, 0] = (W / 2.0) / tan_w
    intrinsics[..., 1, 1] = (H / 2.0) / tan_h
    intrinsics[..., 0, 2] = W / 2
    intrinsics[..., 1, 2] = H / 2
    intrinsics[..., 2, 2] = 1.0
    return extrinsics, intrinsics


@_numpy_compatible
def extri_intri_to_pose_encoding(extrinsics: Array, intrinsics: Array, image_hw: tuple[int, int]) -> Array:
    """(extrinsics [..., 3 or 4, 4], intrinsics [..., 3, 3]) → absT_quaR_FoV [..., 9].

    The principal point is not encoded (assumed at the image centre)."""
    R = extrinsics[..., :3, :3]
    T = extrinsics[..., :3, 3]
    H, W = image_hw
    fov_h = 2 * torch.atan((H / 2) / intrinsics[..., 1, 1])
    fov_w = 2 * torch.atan((W / 2) / intrinsics[..., 0, 0])
    return torch.cat([T, mat_to_quat(R), fov_h[..., None], fov_w[..., None]], dim=-1)


@_numpy_compatible
def closed_form_inverse_se3(extrinsics: Array) -> Array:
    """Inverse of rigid transforms [..., 3, 4] or [..., 4, 4] (same form out): [Rᵀ | −Rᵀt]."""
    R = extrinsics[..., :3, :3]
    t = extrinsics[..., :3, 3:]
    Rt = R.transpose(-1, -2)
    inv = torch.cat([Rt, -Rt @ t], dim=-1)
    if extrinsics.shape[-2] == 4:
        bottom = torch.zeros_like(extrinsics[..., 3:, :])
        bottom[..., 3] = 1
        inv = torch.cat([inv, bottom], dim=-2)
    return inv


@_numpy_compatible
def camera_centers(extrinsics: Array) -> Array:
    """Camera centres in world coordinates, −Rᵀt, [..., 3] from world→camera [..., 3|4, 4]."""
    R = extrinsics[..., :3, :3]
    t = extrinsics[..., :3, 3:]
    return (-R.transpose(-1, -2) @ t)[..., 0]


@_numpy_compatible
def depth_to_camera_points(depth: Array, intrinsics: Array) -> Array:
    """Depth [..., H, W] → camera-frame points [..., H, W, 3] on the **integer** pixel grid
    (u = 0..W−1, v = 0..H−1, no +0.5): X = ((u − cx)·d/fx, (v − cy)·d/fy, d). Computed in float64,
    returned in depth's dtype."""
    H, W = depth.shape[-2:]
    d = depth.double()
    K = intrinsics.double()
    fx, fy = K[..., 0, 0, None, None], K[..., 1, 1, None, None]
    cx, cy = K[..., 0, 2, None, None], K[..., 1, 2, None, None]
    u = torch.arange(W, dtype=torch.float64, device=depth.device)
    v = torch.arange(H, dtype=torch.float64, device=depth.device)[:, None]
    pts = torch.stack([(u - cx) * d / fx, (v - cy) * d / fy, d], dim=-1)
    return pts.to(depth.dtype)


@_numpy_compatible
def unproject_depth(depth: Array, extrinsics: Array, intrinsics: Array) -> Array:
    """Depth [..., H, W] (a trailing singleton channel [..., H, W, 1] is accepted) with world→camera
    extrinsics [..., 3|4, 4] and intrinsics [..., 3, 3] → world points [..., H, W, 3].

    VGGT's ``unproject_depth_map_to_point_map``: integer pixel grid, then X_world = Rᵀ·X_cam − Rᵀ·t.
    """
    if depth.ndim == extrinsics.ndim + 1 and depth.shape[-1] == 1:
        depth = depth[..., 0]
    cam = depth_to_camera_points(depth, intrinsics)
    c2w = closed_form_inverse_se3(extrinsics[..., :3, :]).to(cam.dtype)
    R = c2w[..., None, None, :3, :3]
    t = c2w[..., None, None, :3, 3]
    # three broadcast multiply-adds, not a batched 3×3 matmul per pixel (a cuBLAS gemv per batch slice:
    # 8 ms of a lite3r-tiny training step in float64)
    return cam[..., 0:1] * R[..., 0] + cam[..., 1:2] * R[..., 1] + cam[..., 2:3] * R[..., 2] + t
