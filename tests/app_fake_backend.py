"""A torch-free stand-in for the engine, for testing the app's worker protocol and GUI quickly.

``make_reconstruction`` builds a synthetic scene (a textured sphere cap seen by cameras on an arc) that
the 3D-view tests draw; ``FakeBackend`` serves it through the real worker process
(``python -m lite3r.app.worker --backend app_fake_backend:FakeBackend``), with progress, partial results
and a configurable delay so that cancel can be tested.
"""

from __future__ import annotations

import time

import numpy as np

from lite3r.engine.reconstruction import Reconstruction


def look_at_extrinsic(center: np.ndarray, target: np.ndarray) -> np.ndarray:
    """World→camera [3,4] (OpenCV axes) for a camera at ``center`` looking at ``target`` (y down)."""
    z = target - center
    z = z / np.linalg.norm(z)
    x = np.cross(np.array([0.0, -1.0, 0.0]), z)
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])  # rows: camera axes in world coordinates
    return np.concatenate([R, (-R @ center)[:, None]], axis=1)


def make_reconstruction(
    S: int = 4,
    H: int = 42,
    W: int = 56,
    seed: int = 0,
    offset=(0.0, 0.0, 0.0),
    noise: float = 0.0,
    images: np.ndarray | None = None,
    name: str = "fake",
) -> Reconstruction:
    """Cameras on an arc looking at a sphere of radius 1 at (0, 0, 4); depth by ray casting."""
    rng = np.random.default_rng(seed)
    sphere_c = np.array([0.0, 0.0, 4.0])
    f = 0.9 * W
    K = np.array([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1]], dtype=np.float64)
    angles = np.linspace(-0.35, 0.35, S)
    ext = []
    for a in angles:
        c = sphere_c + 4.0 * np.array([np.sin(a), 0.0, -np.cos(a)])
        ext.append(look_at_extrinsic(c, sphere_c))
    ext = np.stack(ext)
    # make camera 0 the world frame, as the models do
    R0, t0 = ext[0, :, :3], ext[0, :, 3]
    T0 = np.eye(4)
    T0[:3, :3], T0[:3, 3] = R0, t0
    T0inv = np.linalg.inv(T0)
    ext = np.stack([(np.vstack([e, [0, 0, 0, 1]]) @ T0inv)[:3] for e in ext])
    sphere_w = (T0 @ np.r_[sphere_c, 1])[:3]
    u, v = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    rays_cam = np.stack([(u - K[0, 2]) / f, (v - K[1, 2]) / f, np.ones_like(u)], -1)
    depth = np.full((S, H, W), np.nan, np.float32)
    pts = np.full((S, H, W, 3), np.nan, np.float32)
    for s in range(S):
        R, t = ext[s, :, :3], ext[s, :, 3]
        c = -R.T @ t
        d = rays_cam @ R  # world directions (not normalised), z_cam = 1
        oc = c - sphere_w
        a = (d * d).sum(-1)
        b = 2 * (d @ oc)
        cc = oc @ oc - 1.0
        disc = b * b - 4 * a * cc
        hit = disc > 0
        tz = (-b - np.sqrt(np.where(hit, disc, 0))) / (2 * a)
        tz = np.where(hit, tz, 8.0)  # background plane at depth 8
        tz = tz * (1 + noise * rng.standard_normal(tz.shape))
        depth[s] = tz
        pts[s] = c + d * tz[..., None]
    pts = pts + np.asarray(offset, dtype=np.float32)
    if images is None:
        img = np.zeros((S, H, W, 3), np.uint8)
        img[..., 0] = (u / W * 255).astype(np.uint8)
        img[..., 1] = (v / H * 255).astype(np.uint8)
        img[..., 2] = 120
    else:
        img = images
    conf = (1.0 + rng.random((S, H, W))).astype(np.float32) * 3
    return Reconstruction(
        images=img,
        depth=depth,
        depth_conf=conf,
        extrinsics=ext.astype(np.float32),
        intrinsics=np.repeat(K[None], S, 0).astype(np.float32),
        points_from_depth=pts.astype(np.float32),
        world_points=pts.astype(np.float32),
        world_points_conf=conf.copy(),
        image_paths=[f"view{i}.png" for i in range(S)],
        original_sizes=[(H, W)] * S,
        model_name=name,
        precision="fp32",
        attention="dense (math)",
        device="cpu",
        timings_ms={"total": 12.0},
        peak_memory_bytes=123 << 20,
    )


class FakeBackend:
    """Reconstructs any photos as the synthetic sphere scene, with real photo decoding and errors."""

    delay_s = 0.05

    def __init__(self, threads: int = 0) -> None:
        self.threads = threads

    def capabilities(self) -> dict:
        return {
            "device": "cpu (fake)",
            "devices": ["cpu"],
            "precision": {
                "fp32": {"ok": True, "reason": None},
                "bf16": {"ok": True, "reason": None},
                "fp8": {
                    "ok": False,
                    "reason": "fp8 needs a GPU with FP8 tensor cores (SM 8.9+); this is a CPU",
                },
            },
            "models": {
                "lite3r-tiny": {"weights_found": True, "weights_path": "(fake)", "hint": None},
                "vggt-1b": {
                    "weights_found": False,
                    "weights_path": None,
                    "hint": "download VGGT-1B weights and set their path in Preferences",
                },
                "da3-large": {
                    "weights_found": False,
                    "weights_path": None,
                    "hint": "set the path in Preferences",
                },
            },
        }

    def reconstruct(self, images, settings, progress, partial) -> Reconstruction:
        from lite3r.io.images import load_image

        progress("loading photos", 0.0)
        arrays = [load_image(p) for p in images]  # raises InputError for bad files, like the engine
        S = len(arrays)
        H, W = 42, 56
        from PIL import Image

        imgs = np.stack([np.asarray(Image.fromarray(a).resize((W, H))) for a in arrays])
        time.sleep(self.delay_s)
        progress("encoding", 0.3)
        time.sleep(self.delay_s)
        kept = settings.get("kept_fraction", 0.1)
        sla = settings.get("attention") == "sla"
        recon = make_reconstruction(
            S=S, H=H, W=W, images=imgs, noise=0.01 if sla else 0.0, name=settings.get("backbone", "fake")
        )
        recon.image_paths = [str(p) for p in images]
        recon.precision = settings.get("precision", "fp32")
        recon.attention = f"sla keep={kept:.2f} (reference)" if sla else "dense (math)"
        cams_only = Reconstruction(**{**recon.__dict__})
        cams_only.depth = np.full_like(recon.depth, np.nan)
        cams_only.points_from_depth = np.full_like(recon.points_from_depth, np.nan)
        cams_only.depth_conf = np.full_like(recon.depth_conf, np.nan)  # as the engine's partial results
        cams_only.world_points = None
        cams_only.world_points_conf = None
        progress("cameras", 0.5)
        partial(cams_only, "cameras")
        for s in range(S):
            time.sleep(self.delay_s)
            progress("depth", 0.5 + 0.5 * (s + 1) / S)
        recon.timings_ms = {"total": 1000 * self.delay_s * (S + 2)}
        return recon


class SlowFakeBackend(FakeBackend):
    delay_s = 1.0


class CrashingFakeBackend(FakeBackend):
    """Dies like a worker killed by the out-of-memory killer, in the middle of a reconstruction."""

    def reconstruct(self, images, settings, progress, partial):
        import os
        import signal

        progress("trunk", 0.2)
        os.kill(os.getpid(), signal.SIGKILL)
