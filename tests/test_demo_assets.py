"""The bundled demo scene (assets/demo): present, small, and with self-consistent ground truth."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from lite3r.assets import asset_path


def test_demo_scene_files_and_ground_truth():
    folder = asset_path("demo")
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["README.md", "ground_truth.npz", *[f"view_{i:02d}.png" for i in range(8)]]
    assert sum(p.stat().st_size for p in folder.iterdir()) <= 3_000_000
    gt = np.load(folder / "ground_truth.npz")
    depth, K, E = gt["depth"], gt["intrinsics"], gt["extrinsics"]
    S, H, W = depth.shape
    assert S == 8 and K.shape == (8, 3, 3) and E.shape == (8, 3, 4) and H % 14 == 0 and W % 14 == 0
    meta = json.loads(str(gt["metadata"]))
    assert meta["split"] == "test" and meta["num_views"] == 8
    for i in range(S):
        img = np.asarray(Image.open(folder / f"view_{i:02d}.png"))
        assert img.shape == (H, W, 3) and img.dtype == np.uint8
    assert np.array_equal(gt["valid"], depth > 0) and gt["valid"][0].mean() > 0.4
    assert np.allclose(K[:, 0, 2], W / 2) and np.allclose(K[:, 1, 2], H / 2)
    # view-0 points seen from view j land where view j's depth says (for the covisible ones)
    v, u = np.nonzero(depth[0] > 0)
    d = depth[0, v, u].astype(np.float64)
    cam0 = np.stack([(u - K[0, 0, 2]) * d / K[0, 0, 0], (v - K[0, 1, 2]) * d / K[0, 1, 1], d], 1)
    world = (cam0 - E[0, :, 3]) @ E[0, :, :3]
    for j in range(1, S):
        cam = world @ E[j, :, :3].T + E[j, :, 3]
        z = cam[:, 2]
        uj, vj = (
            np.round(K[j, 0, 0] * cam[:, 0] / z + K[j, 0, 2]),
            np.round(K[j, 1, 1] * cam[:, 1] / z + K[j, 1, 2]),
        )
        ok = (z > 0) & (uj >= 0) & (uj < W) & (vj >= 0) & (vj < H)
        zj = depth[j, vj[ok].astype(int), uj[ok].astype(int)]
        agree = np.abs(zj - z[ok]) < 0.03 * z[ok]
        assert agree.sum() / (H * W) >= 0.25 - 1e-3  # the generator's covisibility guarantee
