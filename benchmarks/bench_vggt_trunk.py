"""VGGT-1B trunk (aggregator) and heads on the GPU: time and peak memory per frame count.

Random weights (timing does not depend on them), bf16 trunk weights + fp32 heads, dense SDPA with the
chosen backend, memory-lean ``encode`` (only layers 4, 11, 17, 23 kept). CUDA events, warm-up, median.

    python benchmarks/bench_vggt_trunk.py --frames 8 32 128 [--backend cudnn] [--size 518 518]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import markdown_table, write_result


def _time(fn, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


@torch.no_grad()
def measure(model, S: int, size: tuple[int, int], repeats: int) -> dict:
    images = torch.rand(1, S, 3, *size, device="cuda", dtype=torch.bfloat16)
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    trunk_ms = _time(lambda: model.encode(images), 2, repeats)
    trunk_peak = torch.cuda.max_memory_allocated() - base
    feats = model.encode(images)
    kept = sum(t.numel() * t.element_size() for t in feats.layers.values())
    cam_ms = _time(lambda: model.decode_cameras(feats), 1, repeats)
    depth_ms = _time(lambda: model.decode_depth(feats, images, frames_chunk_size=8), 1, 3)
    return {
        "frames": S,
        "tokens_per_frame": feats.layers[23].shape[2],
        "trunk_ms": trunk_ms,
        "camera_head_ms": cam_ms,
        "depth_head_ms": depth_ms,
        "trunk_peak_GiB": trunk_peak / 2**30,
        "kept_layers_GiB": kept / 2**30,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--frames", type=int, nargs="+", default=[8, 32, 128])
    ap.add_argument("--size", type=int, nargs=2, default=[518, 518], metavar=("H", "W"))
    ap.add_argument("--backend", default="cudnn", choices=["auto", "cudnn", "flash", "efficient", "math"])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", default=None, help="output folder (default $OUT or benchmarks/results)")
    args = ap.parse_args()

    from lite3r.attention.dense import set_sdpa_backend
    from lite3r.models.vggt import VGGT, VGGTConfig

    dev = torch.device("cuda")
    torch.manual_seed(0)
    with dev:
        model = VGGT(VGGTConfig.vggt_1b()).eval()
    model.aggregator.to(torch.bfloat16)
    set_sdpa_backend(model, args.backend)
    H, W = args.size
    rows = []
    for S in args.frames:
        torch.cuda.empty_cache()
        try:
            row = measure(model, S, (H, W), args.repeats)
        except torch.OutOfMemoryError as e:
            row = {"frames": S, "error": f"OOM: {str(e).splitlines()[0]}"}
        print(row, flush=True)
        rows.append(row)
    out = Path(args.out or os.environ.get("OUT") or "benchmarks/results")
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(rows)
    write_result(out / "vggt_trunk.json", rows, table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
