"""Tiny dataset folders in the real on-disk formats (MVSNet cams, pair.txt, PFM, BlendedMVS, DTU),
written into a temporary directory by the evaluation tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from lite3r.eval.datasets.blendedmvs import BLENDEDMVS_VALIDATION_PIDS
from lite3r.eval.datasets.mvsnet import write_cam_file, write_pair_file, write_pfm


def look_at(center, target=(0.0, 0.0, 0.0)) -> np.ndarray:
    c = np.asarray(center, float)
    z = np.asarray(target, float) - c
    z /= np.linalg.norm(z)
    x = np.cross(z, [0.0, 1.0, 0.3])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])
    return np.concatenate([R, (-R @ c)[:, None]], axis=1)


def ring_extrinsics(n: int, radius: float = 500.0, height: float = 50.0) -> list[np.ndarray]:
    out = []
    for i in range(n):
        a = 2 * np.pi * i / max(n, 1) * 0.3
        out.append(look_at([radius * np.sin(a), height, -radius * np.cos(a)]))
    return out


def write_image(path: Path, value: int, hw=(16, 20), fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((*hw, 3), value % 256, np.uint8)
    arr[0, 0] = (255, 0, 0)
    Image.fromarray(arr).save(path, format=fmt)
    return path


def make_blendedmvs(root: Path, pids=None, views: int = 4, hw=(16, 20), depth_value=500.0) -> Path:
    """Scenes with ``views`` views each; depths ≈ ``depth_value`` (far above DEPTH_NUM = 192, as in
    real large-scale BlendedMVS scenes) and a 4-number depth line whose third number is 192."""
    pids = list(BLENDEDMVS_VALIDATION_PIDS) if pids is None else pids
    H, W = hw
    K = np.array([[10.0, 0, (W - 1) / 2], [0, 10.0, (H - 1) / 2], [0, 0, 1]])
    for s, pid in enumerate(pids):
        base = root / pid
        exts = ring_extrinsics(views)
        pairs = {}
        for v in range(views):
            write_image(base / "blended_images" / f"{v:08d}.jpg", 20 * v + s, hw)
            write_image(base / "blended_images" / f"{v:08d}_masked.jpg", 0, hw)
            write_cam_file(
                base / "cams" / f"{v:08d}_cam.txt", exts[v], K, (400.0, 1.0, 192, depth_value * 1.2)
            )
            depth = np.full(hw, depth_value, np.float32) + np.arange(W, dtype=np.float32)[None, :]
            depth[0, 0] = 0.0  # no surface
            write_pfm(base / "rendered_depth_maps" / f"{v:08d}.pfm", depth)
            pairs[v] = [(u, 1.0 / (1 + abs(u - v))) for u in range(views) if u != v][:2]  # fewer than 10
        write_pair_file(base / "cams" / "pair.txt", pairs)
    return root


def make_dtu_train(root: Path, scans=(1,), views: int = 4, hw=(16, 24)) -> Path:
    H, W = hw
    Kd = np.array([[5.0, 0, (W / 4 - 1) / 2], [0, 5.0, (H / 4 - 1) / 2], [0, 0, 1]])  # for the 1/4 depth map
    exts = ring_extrinsics(views)
    write_pair_file(root / "Cameras" / "pair.txt", {v: [((v + 1) % views, 9.0)] for v in range(views)})
    for v in range(views):
        write_cam_file(root / "Cameras" / "train" / f"{v:08d}_cam.txt", exts[v], Kd, (425.0, 2.5))
    for scan in scans:
        for v in range(views):
            for light in (0, 3):
                write_image(
                    root / "Rectified" / f"scan{scan}_train" / f"rect_{v + 1:03d}_{light}_r5000.png",
                    10 * (v + 1) + light,
                    hw,
                )
            d = np.full((H // 4, W // 4), 600.0 + v, np.float32)
            write_pfm(
                root / "Depths" / f"scan{scan}_train" / f"depth_map_{v:04d}.pfm", d, little_endian=False
            )
    return root


def make_dtu64(root: Path, scans=(24,), ids=(0, 1, 2, 33, 40), hw=(16, 20)) -> Path:
    H, W = hw
    K = np.array([[10.0, 0, W / 2], [0, 10.0, H / 2], [0, 0, 1]])
    for i in ids:
        write_cam_file(root / "Cameras" / f"{i:08d}_cam.txt", look_at([i * 10.0, 0, -500]), K, (425.0, 2.5))
    for scan in scans:
        for i in ids:
            write_image(root / f"scan{scan}" / "image" / f"{i:06d}.png", i, hw)
    return root


def make_dtu_test(root: Path, scans=(1,), views: int = 3, hw=(16, 20)) -> Path:
    H, W = hw
    K = np.array([[10.0, 0, W / 2], [0, 10.0, H / 2], [0, 0, 1]])
    exts = ring_extrinsics(views)
    for scan in scans:
        base = root / f"scan{scan}"
        for v in range(views):
            write_image(base / "images" / f"{v:08d}.jpg", v * 30, hw)
            write_cam_file(base / "cams" / f"{v:08d}_cam.txt", exts[v], K, (425.0, 2.5, 192, 935.0))
        write_pair_file(base / "pair.txt", {v: [] for v in range(views)})
    return root
