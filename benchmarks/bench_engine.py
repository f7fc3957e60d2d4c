"""End-to-end engine latency and peak memory (Reconstructor.reconstruct), VGGT-1B-sized, random weights.

Measures the whole user-facing path — preprocessing of uint8 photos, trunk, chunked heads,
unprojection, copies to numpy — per precision and frame count, with the engine's own CUDA-synchronised
stage timings. Not a kernel benchmark: it answers "how long does the app wait, and how much GPU memory
does it need". Random weights: no checkpoint needed (speed and memory do not depend on the values).

    python benchmarks/bench_engine.py --frames 2 8 32 --precisions bf16 fp32 --repeats 5 [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import markdown_table, write_result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, nargs="+", default=[2, 8, 32])
    ap.add_argument("--precisions", nargs="+", default=["bf16", "fp32"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--height", type=int, default=392, help="photo height (width 518)")
    ap.add_argument("--chunk", type=int, default=8)
    ap.add_argument("--out", default=os.environ.get("OUT") or "benchmarks/results")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2

    from lite3r.engine.reconstructor import Reconstructor
    from lite3r.errors import Lite3RError
    from lite3r.models.vggt.config import VGGTConfig
    from lite3r.models.vggt.model import VGGT

    rng = np.random.default_rng(0)
    photos = [rng.integers(0, 256, (args.height, 518, 3), dtype=np.uint8) for _ in range(max(args.frames))]
    rows = []
    for precision in args.precisions:
        with torch.device("cuda"):
            model = VGGT(VGGTConfig.vggt_1b()).eval()
        rc = Reconstructor(model, precision=precision, device="cuda", frames_chunk_size=args.chunk)
        for n in args.frames:
            try:
                rc.reconstruct(photos[:n])  # warm-up (cuDNN plans, allocator)
                runs = [rc.reconstruct(photos[:n]) for _ in range(args.repeats)]
            except Lite3RError as e:
                rows.append({"precision": precision, "frames": n, "error": str(e)})
                print(rows[-1], flush=True)
                continue
            med = {k: statistics.median(r.timings_ms[k] for r in runs) for k in runs[0].timings_ms}
            row = {
                "precision": rc.precision,
                "attention": rc.attention,
                "frames": n,
                "size": "x".join(map(str, runs[0].image_size)),
                "total_ms": med["total"],
                "preprocess_ms": med["preprocess"],
                "trunk_ms": med["trunk"],
                "heads_ms": med["heads"],
                "postprocess_ms": med["postprocess"],
                "peak_gib": max(r.peak_memory_bytes for r in runs) / 2**30,
                "weights_gib": runs[0].metadata["weights_bytes"] / 2**30,
                "tf32": runs[0].metadata["tf32"],
                "repeats": args.repeats,
            }
            rows.append(row)
            print(row, flush=True)
        del rc, model
        torch.cuda.empty_cache()
    cols = ["precision", "attention", "frames", "size", "total_ms", "trunk_ms", "heads_ms", "preprocess_ms",
            "postprocess_ms", "peak_gib", "weights_gib"]  # fmt: skip
    out = write_result(
        Path(args.out) / "engine_e2e.json", rows, markdown_table([r for r in rows if "error" not in r], cols)
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
