"""Render the bundled demo scene into ``assets/demo/``: one SynthMV test-split scene, 8 views.

    python -m lite3r.training.make_demo [--out assets/demo] [--seed 20000027] [--size 280]

Writes ``view_00.png`` … ``view_07.png``, ``ground_truth.npz`` (depth, valid, K, extrinsics, the
scene metadata) and ``README.md``; the files are written atomically and kept under 3 MB in total.
"""

from __future__ import annotations

import argparse
import io
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

DEFAULT_SEED = 20_000_042  # test split: an orbit around textured objects on a checkered ground
DEFAULT_SIZE = 224
MAX_BYTES = 3_000_000


def _atomic_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


README = """# Demo scene (SynthMV, test split)

Eight views of one procedural scene rendered by Lite3R's own generator
(`lite3r.training.data.synthetic`, SynthMV-v0), with exact ground truth. It is a held-out **test-split**
scene: no training run renders test seeds.

| | |
|---|---|
| seed | {seed} (split `{split}`, family `{family}`, tier `{tier}`) |
| views | {views} at {size}x{size} px |
| command | `python -m lite3r.training.make_demo --seed {seed} --size {size}` |

Files
- `view_00.png` ... `view_{last:02d}.png`: RGB images (8-bit, sRGB-like, per-view exposure/white balance/noise).
- `ground_truth.npz` (float32 unless noted):
  - `depth` [S,H,W]: z-depth in scene units, 0 = invalid (the sky);
  - `valid` [S,H,W] bool;
  - `intrinsics` [S,3,3] in pixels of the PNGs (principal point (W/2, H/2); pixel (row v, column u)
    is the ray through image coordinates (u, v), integer coordinates at pixel centres, as in VGGT);
  - `extrinsics` [S,3,4] world-to-camera [R | t], OpenCV axes (x right, y down, z forward), in the
    scene's world frame (+y up, ground at y = 0; view 0 is *not* the identity);
  - `covisibility` [S]: fraction of each view's pixels also visible in view 0;
  - `metadata` (JSON string): generator metadata.
  World points: X_world = R^T (d * K^-1 [u, v, 1]^T - t).

Regenerate with the command above (deterministic from the seed on a given device; the PNGs here were
rendered on a CPU). Licence: Apache-2.0 (generated data).
"""


def make_demo(out: str | Path, seed: int = DEFAULT_SEED, size: int = DEFAULT_SIZE, views: int = 8) -> dict:
    from .data.synthetic import render_scene

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    s = render_scene(seed, views, size, device="cpu")
    files = {}
    for i in range(views):
        img = (s.images[i].permute(1, 2, 0).numpy() * 255.0 + 0.5).clip(0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG", optimize=True)
        files[f"view_{i:02d}.png"] = buf.getvalue()
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        depth=s.depth.numpy().astype(np.float32),
        valid=s.valid.numpy(),
        intrinsics=s.intrinsics.numpy().astype(np.float32),
        extrinsics=s.extrinsics.numpy().astype(np.float32),
        covisibility=s.covisibility.numpy().astype(np.float32),
        metadata=np.array(json.dumps(s.metadata)),
    )
    files["ground_truth.npz"] = buf.getvalue()
    m = s.metadata
    files["README.md"] = README.format(seed=seed, split=m["split"], family=m["family"], tier=m["tier"],
                                       views=views, size=size, last=views - 1).encode()  # fmt: skip
    total = sum(len(b) for b in files.values())
    if total > MAX_BYTES:
        raise ValueError(
            f"demo assets would take {total / 1e6:.2f} MB (> {MAX_BYTES / 1e6:.0f} MB): use a smaller --size"
        )
    for name, data in files.items():
        _atomic_bytes(out / name, data)
    return {"folder": str(out), "bytes": total, "metadata": m}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m lite3r.training.make_demo", description=__doc__.splitlines()[0]
    )
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "assets" / "demo"))
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.add_argument("--size", type=int, default=DEFAULT_SIZE, help="square image size (a multiple of 14)")
    p.add_argument("--views", type=int, default=8)
    a = p.parse_args(argv)
    if a.size % 14:
        p.error("--size must be a multiple of 14 (the models' patch size)")
    info = make_demo(a.out, a.seed, a.size, a.views)
    print(json.dumps({k: v for k, v in info.items() if k != "metadata"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
