"""Reconstruct a scene: photos → coloured point cloud (PLY), optionally cameras (COLMAP text, frusta PLY).

Everything that can be checked cheaply is checked before the model is loaded: the photos are decoded
(truncated or unreadable files are named), the output paths are tested for writability. Outputs are
written atomically, so a failure or Ctrl-C leaves no half-written file.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

MODELS = ("vggt-1b", "da3-large", "lite3r-tiny")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("photos", nargs="*", help="a folder of photos, or photo files")
    p.add_argument(
        "--model", choices=MODELS, default=None, help="backbone (default vggt-1b; lite3r-tiny with --demo)"
    )
    p.add_argument(
        "--weights", metavar="PATH", help="checkpoint file or folder (default: the registry's location)"
    )
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16", "fp8"),
        default=None,
        help="default: bf16 on a GPU, fp32 on the CPU",
    )
    p.add_argument("--attention", choices=("dense", "sla"), default="dense", help="cross-view attention path")
    p.add_argument(
        "--keep", type=float, metavar="F", help="SLA: fraction of attention blocks computed exactly"
    )
    p.add_argument("--adapter", metavar="PATH", help="SLA: a trained Lite3R adapter file")
    p.add_argument("-o", "--output", metavar="scene.ply", help="point cloud to write (binary PLY)")
    p.add_argument(
        "--colmap", metavar="DIR", help="also write a COLMAP text model (cameras, images, points3D)"
    )
    p.add_argument("--cameras-ply", metavar="PATH", help="also write the camera frusta as a PLY of edges")
    p.add_argument(
        "--points",
        choices=("depth", "points"),
        default="depth",
        help="geometry: depth + cameras, or the point head",
    )
    p.add_argument(
        "--conf-percentile",
        type=float,
        default=None,
        metavar="P",
        help="drop points below this confidence percentile",
    )
    p.add_argument(
        "--conf-threshold", type=float, default=None, metavar="T", help="drop points below this confidence"
    )
    p.add_argument("--ply-confidence", action="store_true", help="store each point's confidence in the PLY")
    p.add_argument("--device", choices=("cuda", "cpu"), default=None, help="default: cuda when available")
    p.add_argument(
        "--chunk", type=int, default=8, metavar="N", help="frames per head chunk (lower = less memory)"
    )
    p.add_argument(
        "--input-size", type=int, default=None, metavar="PX", help="model input size (default: the model's)"
    )
    p.add_argument(
        "--features",
        choices=("native", "fp8"),
        default="native",
        help="storage of the trunk features kept for the heads (fp8: about half the memory)",
    )
    p.add_argument(
        "--heads-precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="precision of the depth/point heads with --precision bf16/fp8 (bf16: faster; camera head "
        "stays fp32)",
    )
    p.add_argument(
        "--mlp-chunk",
        type=int,
        default=None,
        metavar="TOKENS",
        help="run the trunk MLPs on at most TOKENS tokens at a time (less memory; e.g. 16384)",
    )
    p.add_argument(
        "--compile",
        choices=("none", "default", "max-autotune-no-cudagraphs", "reduce-overhead"),
        default="none",
        help="torch.compile the trunk",
    )
    p.add_argument(
        "--poses",
        choices=("auto", "camera-head", "matches"),
        default="auto",
        help="camera poses: the camera head, or a PnP read-out of the global attention's cross-view matches "
        "(auto: what the weights declare; lite3r-tiny reads matches, then bundle-adjusts them over all views)",
    )
    p.add_argument("--save", metavar="PATH.npz", help="also save the full reconstruction (depth, cameras, …)")
    p.add_argument("--allow-single", action="store_true", help="accept one photo (monocular depth)")
    p.add_argument("--demo", action="store_true", help="reconstruct the bundled demo scene with lite3r-tiny")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def demo_folder() -> Path:
    from lite3r.assets import asset_path

    root = Path(str(asset_path("demo")))
    for candidate in (root / "images", root):
        if candidate.is_dir() and any(candidate.iterdir()):
            return candidate
    return root


def run(args: argparse.Namespace) -> int:
    from lite3r.errors import InputError, OutputError, UnsupportedError
    from lite3r.io.atomic import check_writable, check_writable_dir
    from lite3r.io.colmap import unique_image_names
    from lite3r.io.images import require_views, resolve_sources

    # ---- arguments and inputs, before anything expensive ------------------------------------------
    if args.demo:
        if args.photos:
            raise InputError(
                "--demo reconstructs the bundled scene; do not also pass photos", "drop the photo arguments"
            )
        folder = demo_folder()
        if not folder.is_dir():
            raise InputError(
                f"the demo scene is not in this installation ({folder})", "reinstall Lite3R, or pass photos"
            )
        args.photos = [str(folder)]
        args.model = args.model or "lite3r-tiny"
        args.output = args.output or "demo.ply"
    model_name = args.model or "vggt-1b"
    if not args.photos:
        raise InputError("no photos given", "pass a folder of photos or photo files (or --demo)")
    if not args.output:
        raise OutputError("no output file given", "add -o scene.ply")
    if args.attention == "dense" and (args.keep is not None or args.adapter):
        raise UnsupportedError(
            "--keep and --adapter belong to sparse-linear attention", "add --attention sla"
        )
    if args.keep is not None and args.adapter:
        raise UnsupportedError(
            "--adapter brings the keep ratio it was trained with", "drop --keep when using --adapter"
        )
    if args.keep is not None and not 0 < args.keep <= 1:
        raise UnsupportedError(f"--keep must be in (0, 1], got {args.keep}", "e.g. --keep 0.1")
    if args.adapter and not Path(args.adapter).is_file():
        raise InputError(f"{args.adapter}: adapter file not found", "check the path given with --adapter")
    if args.conf_percentile is not None and not 0 <= args.conf_percentile < 100:
        raise UnsupportedError(
            f"--conf-percentile must be in [0, 100), got {args.conf_percentile}", "e.g. 50"
        )
    if args.chunk < 1:
        raise UnsupportedError(f"--chunk must be ≥ 1, got {args.chunk}", "e.g. --chunk 4")

    output = check_writable(args.output, "point cloud")
    colmap_dir = check_writable_dir(args.colmap, "COLMAP folder") if args.colmap else None
    cameras_ply = check_writable(args.cameras_ply, "camera PLY") if args.cameras_ply else None
    save_npz = check_writable(args.save, "reconstruction file") if args.save else None

    paths = resolve_sources(args.photos)
    require_views(paths, 1 if args.allow_single else 2, "or pass --allow-single for a monocular depth map")
    if colmap_dir is not None:
        unique_image_names(paths)

    # ---- photos: decoded and resized once, before the (slow) model load ---------------------------
    from lite3r.engine.policy import preflight
    from lite3r.io.preprocess import get_rule
    from lite3r.models.registry import get_spec

    spec = get_spec(model_name)
    device = args.device or ("cuda" if _cuda_available() else "cpu")
    precision = args.precision or ("bf16" if device == "cuda" else "fp32")
    preflight(precision, device, args.attention, feature_storage=args.features)
    rule = get_rule(spec.preprocessing, args.input_size or spec.default_input_size)
    bar = None if args.no_progress else _progress_bar()
    try:
        return _load_and_run(
            args, model_name, paths, rule, precision, device, bar, output, colmap_dir, cameras_ply, save_npz
        )
    finally:
        if bar:
            bar.close()


def _load_and_run(
    args, model_name, paths, rule, precision, device, bar, output, colmap_dir, cameras_ply, save_npz
) -> int:
    from lite3r.errors import UnsupportedError
    from lite3r.io.preprocess import preprocess

    progress = bar.update if bar else None
    pre = preprocess(
        paths,
        rule,
        progress=(lambda i, n: progress("preprocess", 0.1 * i / n, f"photo {i}/{n}")) if bar else None,
    )

    # ---- model ----------------------------------------------------------------------------------
    from lite3r.engine.reconstructor import Reconstructor

    sla = None
    if args.attention == "sla":
        sla = None if args.keep is None else {"keep_ratio": args.keep}
    t_load = time.perf_counter()
    rc = Reconstructor.from_name(
        model_name,
        args.weights,
        precision=precision,
        device=device,
        attention=args.attention,
        sla=sla,
        adapter=args.adapter,
        compile=args.compile,
        frames_chunk_size=args.chunk,
        preprocess_rule=rule,
        feature_storage=args.features,
        mlp_chunk_tokens=args.mlp_chunk,
        head_precision=args.heads_precision,
        poses=args.poses,
    )
    load_s = time.perf_counter() - t_load
    if args.points == "points" and not rc.has_point_head:
        raise UnsupportedError(f"{model_name} with these weights has no point head", "use --points depth")

    # ---- run ------------------------------------------------------------------------------------
    cancel = threading.Event()
    try:
        rec = rc.reconstruct(pre, progress=progress, cancel=cancel)
    except KeyboardInterrupt:
        cancel.set()
        raise
    if bar:
        bar.close()

    # ---- outputs (each atomic) ------------------------------------------------------------------
    from lite3r.io.ply import write_frusta_ply, write_ply

    xyz, rgb, conf = rec.point_cloud(args.points, args.conf_percentile, args.conf_threshold)
    comments = [
        "generated by lite3r",
        f"model {rec.model_name}",
        f"precision {rec.precision}",
        f"attention {rec.attention}",
        f"poses {rc.poses.describe()}",
        f"views {rec.num_views} at {rec.image_size[0]}x{rec.image_size[1]}",
        f"points from {args.points}; conf percentile {args.conf_percentile}; conf threshold {args.conf_threshold}",
    ]
    write_ply(output, xyz, rgb, confidence=conf if args.ply_confidence else None, comments=comments)
    if colmap_dir is not None:
        from lite3r.io.colmap import unique_image_names, write_colmap_text

        write_colmap_text(
            colmap_dir,
            rec.extrinsics,
            rec.intrinsics_original,
            rec.original_sizes,
            unique_image_names(rec.image_paths),
            xyz,
            rgb,
            comment=f"lite3r {rec.model_name} {rec.precision} {rec.attention}",
        )
    if cameras_ply is not None:
        write_frusta_ply(
            cameras_ply, rec.extrinsics, rec.intrinsics_original, rec.original_sizes, comments=comments[:5]
        )
    if save_npz is not None:
        rec.save(save_npz)
    if len(xyz) == 0:
        print(
            "warning: no points passed the confidence filter; lower --conf-percentile/--conf-threshold",
            file=sys.stderr,
        )

    peak = "n/a (CPU)" if rec.peak_memory_bytes is None else f"{rec.peak_memory_bytes / 2**30:.2f} GiB"
    extra = "".join(f", {p}" for p in (colmap_dir, cameras_ply, save_npz) if p is not None)
    print(
        f"{rec.num_views} views at {rec.image_size[0]}×{rec.image_size[1]} → {len(xyz):,} points → {output}{extra} · "
        f"{rec.timings_ms['total'] / 1000:.2f} s (trunk {rec.timings_ms.get('trunk', 0):.0f} ms; model load {load_s:.1f} s) · "
        f"peak memory {peak} · {rec.model_name} · {rec.precision} · {rec.attention} · poses: "
        f"{rc.poses.describe()} · {rec.device}"
    )
    _, pose_warning = rec.pose_summary()
    if pose_warning:
        print(f"warning: {pose_warning}", file=sys.stderr)
    return 0


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


class _progress_bar:
    """tqdm on stderr, driven by the engine's overall fraction."""

    def __init__(self) -> None:
        from tqdm import tqdm

        self.bar = tqdm(
            total=1000,
            file=sys.stderr,
            bar_format="{percentage:3.0f}%|{bar:24}| {desc}",
            leave=False,
        )
        self.done = 0

    def update(self, stage: str, fraction: float, message: str) -> None:
        target = round(1000 * fraction)
        self.bar.set_description_str(f"{stage}: {message}"[:60], refresh=False)
        if target > self.done:
            self.bar.update(target - self.done)
            self.done = target
        else:
            self.bar.refresh()

    def close(self) -> None:
        self.bar.close()
