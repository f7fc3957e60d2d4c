"""Where one end-to-end forward spends its time: torch.profiler over a few warm runs of one variant.

    python benchmarks/probes/profile_e2e.py --variant lite3r-fp8-compiled:fp8:sla0.1:compile --frames 8 [--out DIR]

Why: at 8 frames the Lite3R FP8 path is slower and far noisier than dense bf16 (H100, 2026-11-24:
p10-p90 135-209 ms against 108 ms), which the per-layer benchmarks do not explain. Writes the top CUDA
kernels and CPU ops by total time, the count of host synchronisations and device-to-host copies, and
the wall time of each profiled run (profile_e2e_<label>_f<frames>.json + .md, via provenance).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from provenance import markdown_table, write_result

from lite3r.eval.bench import make_inputs, model_forward
from lite3r.eval.variants import ModelSource, build_reconstructor, parse_variant


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--model", default="vggt-1b")
    ap.add_argument("--variant", required=True)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--image-size", type=int, default=518)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    out = Path(args.out or os.environ.get("OUT") or "benchmarks/results") / "profile"
    variant = parse_variant(args.variant)
    rc = build_reconstructor(ModelSource(args.model, None, random_weights=True), variant, "cuda")
    hw = (args.image_size, args.image_size)
    images = make_inputs(args.frames, hw, rc.model.input_normalization, "cuda", 0)
    fn = functools.partial(model_forward, rc, images, "cameras-depth")
    with torch.inference_mode():
        for _ in range(3):  # compile, autotune, warm
            fn()
        torch.cuda.synchronize()
        walls = []
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(args.runs):
                t0 = time.perf_counter()
                fn()
                torch.cuda.synchronize()
                walls.append(1000 * (time.perf_counter() - t0))
    events = prof.key_averages()

    def rows(key: str):
        ranked = sorted(events, key=lambda e: getattr(e, key), reverse=True)[: args.top]
        return [
            {
                "name": e.key[:90],
                "calls": e.count // args.runs,
                "total_ms_per_run": getattr(e, key) / 1000 / args.runs,
            }
            for e in ranked
        ]

    syncs = {
        e.key: e.count // args.runs
        for e in events
        if any(
            s in e.key for s in ("Synchronize", "synchronize", "Memcpy DtoH", "item", "_local_scalar_dense")
        )
    }
    result = {
        "variant": args.variant,
        "frames": args.frames,
        "wall_ms_per_run": walls,
        "cuda_kernels": rows(
            "device_time_total" if hasattr(events[0], "device_time_total") else "cuda_time_total"
        ),
        "cpu_ops": rows("cpu_time_total"),
        "host_syncs_per_run": syncs,
    }
    label = variant.label
    md = f"wall ms per run: {', '.join(f'{w:.1f}' for w in walls)}\n\nhost syncs per run: {syncs}\n\n"
    md += "### CUDA kernels\n\n" + markdown_table(result["cuda_kernels"]) + "\n\n### CPU ops\n\n"
    md += markdown_table(result["cpu_ops"])
    write_result(out / f"profile_e2e_{label}_f{args.frames}.json", result, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
