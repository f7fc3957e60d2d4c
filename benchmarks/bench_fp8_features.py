"""Can the features kept for the heads be stored in FP8? VGGT-1B (random weights) on the GPU.

    python benchmarks/bench_fp8_features.py [--frames 8] [--weights PATH] [--out DIR]

The trunk runs in bf16 (the reference here); its four head-feeding layers are then (a) kept in bf16,
(b) stored as FP8 with per-token scales and dequantised for the heads (``quantize_features`` /
``dequantize_features``). For scale, two other sources of difference are measured the same way:
(c) an fp32 trunk and (d) an FP8-GEMM trunk (``apply_fp8_inference``). The heads always run in fp32.
For each variant, against (a): relative feature error per layer, depth (median / p95 relative
difference), depth confidence, world points, and cameras (rotation angle, translation, focal length).
Also the bytes held by the kept features. FP8 storage is acceptable where its differences are well
below (c)/(d), the differences the product already accepts.

Random weights by default (VGGT-1B init; no download on the device); ``--weights`` loads a real
checkpoint through the registry. Images: the repository's test photos (crops), or noise without Pillow.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import markdown_table, write_result

REPO = Path(__file__).resolve().parent.parent


def _images(S: int, size: int = 518) -> tuple[torch.Tensor, str]:
    try:
        import numpy as np
        from PIL import Image
    except ImportError:
        return torch.rand(1, S, 3, size, size), "uniform noise"
    photos = sorted((REPO / "tests" / "data" / "photos").glob("*.jpg"))
    if not photos:
        return torch.rand(1, S, 3, size, size), "uniform noise"
    frames = []
    for i in range(S):
        img = Image.open(photos[i % len(photos)]).convert("RGB")
        scale = (size + 40 + 20 * (i // len(photos))) / min(img.size)
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BICUBIC)
        dx = (7 * i) % max(1, img.width - size)
        dy = (5 * i) % max(1, img.height - size)
        arr = np.asarray(img.crop((dx, dy, dx + size, dy + size)), dtype=np.float32) / 255.0
        frames.append(torch.from_numpy(arr).permute(2, 0, 1))
    return torch.stack(frames)[None], f"crops of {', '.join(p.name for p in photos)}"


def _rot_deg(Ra: torch.Tensor, Rb: torch.Tensor) -> torch.Tensor:
    c = ((Ra.transpose(-1, -2) @ Rb).diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2
    return torch.rad2deg(torch.arccos(c.clamp(-1, 1)))


def _rel(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    return (a - b).abs() / b.abs().clamp_min(eps)


def _finite_max(t: torch.Tensor) -> float:
    """Max over finite entries (a random-weight camera head can emit NaN focal lengths); NaN if none."""
    t = t[torch.isfinite(t)]
    return t.max().item() if t.numel() else float("nan")


@torch.no_grad()
def heads(model, feats, images) -> dict:
    cams = model.decode_cameras(feats)
    depth, dconf = model.decode_depth(feats, images, frames_chunk_size=8)
    pts = model.decode_points(feats, images, frames_chunk_size=8)
    out = {
        "ext": cams.extrinsics.float(),
        "intr": cams.intrinsics.float(),
        "depth": depth.float(),
        "depth_conf": dconf.float(),
    }
    if pts is not None:
        out["points"] = pts[0].float()
    return out


def compare(name: str, feats, ref_feats, out, ref) -> dict:
    row = {"variant": name}
    for i, t in feats.layers.items():
        r = ref_feats.layers[i].float()
        row[f"feat{i}_rel_l2"] = ((t.float() - r).norm() / r.norm()).item()
    d = _rel(out["depth"], ref["depth"])
    row["depth_rel_median"] = d.median().item()
    row["depth_rel_p95"] = d.flatten().float().quantile(0.95).item() if d.numel() < 2**24 else float("nan")
    row["depth_conf_rel_median"] = _rel(out["depth_conf"], ref["depth_conf"]).median().item()
    if "points" in out:
        pe = (out["points"] - ref["points"]).norm(dim=-1) / ref["points"].norm(dim=-1).clamp_min(1e-12)
        row["points_rel_median"] = pe.median().item()
    rot = _rot_deg(out["ext"][..., :3, :3], ref["ext"][..., :3, :3])
    row["rot_err_deg_max"] = _finite_max(rot)
    t, tr = out["ext"][..., :3, 3], ref["ext"][..., :3, 3]
    trans = (t - tr).norm(dim=-1) / tr.norm(dim=-1).clamp_min(1e-12)
    row["trans_rel_max"] = _finite_max(trans[:, 1:]) if t.shape[1] > 1 else 0.0  # camera 0 is the origin
    row["focal_rel_max"] = _finite_max(_rel(out["intr"][..., 0, 0], ref["intr"][..., 0, 0]))
    row["nonfinite_cameras_ref"] = int((~torch.isfinite(ref["intr"])).any(-1).any(-1).sum())
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--weights", default=None, help="a VGGT-1B checkpoint (default: random weights)")
    ap.add_argument("--out", default=None, help="output folder (default $OUT or benchmarks/results)")
    args = ap.parse_args()

    from lite3r.models.vggt import VGGT, VGGTConfig
    from lite3r.quant import apply_fp8_inference, dequantize_features, feature_bytes, quantize_features

    dev = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    if args.weights:
        from lite3r.models.registry import load_model

        model = load_model("vggt-1b", weights=args.weights, device=dev).eval()
        weights = args.weights
    else:
        with dev:
            model = VGGT(VGGTConfig.vggt_1b()).eval()
        weights = "random (VGGT-1B init)"
    model.requires_grad_(False).float()
    images, image_source = _images(args.frames)
    images = images.to(dev)

    agg_fp32 = model.aggregator
    with torch.no_grad():
        feats_fp32 = model.encode(images)
    agg_bf16 = copy.deepcopy(agg_fp32).bfloat16()
    model.aggregator = agg_bf16
    with torch.no_grad():
        feats_bf16 = model.encode(images.bfloat16())
    agg_fp8 = copy.deepcopy(agg_bf16)
    fp8_report = apply_fp8_inference(agg_fp8)
    model.aggregator = agg_fp8
    with torch.no_grad():
        feats_fp8_trunk = model.encode(images.bfloat16())
    model.aggregator = agg_bf16
    del agg_fp32

    stored = quantize_features(feats_bf16)
    feats_fp8_store = dequantize_features(stored, torch.bfloat16)

    ref = heads(model, feats_bf16, images)
    rows = [
        compare(
            "fp8 storage of bf16 features",
            feats_fp8_store,
            feats_bf16,
            heads(model, feats_fp8_store, images),
            ref,
        ),
        compare("fp32 trunk (for scale)", feats_fp32, feats_bf16, heads(model, feats_fp32, images), ref),
        compare(
            "fp8-GEMM trunk (for scale)",
            feats_fp8_trunk,
            feats_bf16,
            heads(model, feats_fp8_trunk, images),
            ref,
        ),
    ]
    memory = {
        "frames": args.frames,
        "kept_layers": sorted(feats_bf16.layers),
        "bf16_bytes": feature_bytes(feats_bf16.layers),
        "fp8_bytes": feature_bytes(stored.layers),
    }
    memory["ratio"] = memory["fp8_bytes"] / memory["bf16_bytes"]
    for r in rows:
        print({k: (f"{v:.3g}" if isinstance(v, float) else v) for k, v in r.items()}, flush=True)
    print(memory)
    out = Path(args.out or os.environ.get("OUT") or "benchmarks/results")
    out.mkdir(parents=True, exist_ok=True)
    table = (
        f"Weights: {weights}; images: {image_source}; {args.frames} frames at 518×518; differences vs the "
        "bf16-trunk reference (heads fp32).\n\n"
        + markdown_table(rows)
        + f"\nKept features: bf16 {memory['bf16_bytes'] / 2**20:.1f} MiB → FP8 {memory['fp8_bytes'] / 2**20:.1f} MiB "
        f"({memory['ratio']:.3f}×). FP8 trunk: {fp8_report.summary()}\n"
    )
    write_result(
        out / "fp8_features.json",
        {"rows": rows, "memory": memory, "weights": weights, "images": image_source},
        table,
    )
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
