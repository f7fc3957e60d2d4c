"""Where one end-to-end forward spends its time: torch.profiler over a few warm runs of one variant.

    python benchmarks/probes/profile_e2e.py --variant lite3r-fp8-compiled:fp8:sla0.1:compile --frames 8 [--out DIR]

Why: at 8 frames the Lite3R FP8 path is slower and far noisier than dense bf16 (H100, 2026-11-24:
p10-p90 135-209 ms against 108 ms), which the per-layer benchmarks do not explain. Writes the top CUDA
kernels and CPU ops by total time, the count of host synchronisations and device-to-host copies, and
the wall time of each profiled run (profile_e2e_<label>_f<frames>.json + .md, via provenance).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from probe_setup import add_model_arguments, build, forward_fn, output_dir
from provenance import markdown_table, write_result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    add_model_arguments(ap)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args(argv)
    out = output_dir(args, "profile")
    variant, rc = build(args)
    fn = forward_fn(rc, args.frames, args.image_size)
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
