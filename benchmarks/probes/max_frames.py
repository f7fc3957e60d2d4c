"""How many frames fit: one forward per frame count, peak device memory, until out of memory.

    python benchmarks/probes/max_frames.py --variant lite3r-lean:fp8:sla0.1:heads=bf16:feat=fp8 \
        --frames 128 256 512 1000 [--budget-s 400] [--out DIR]

Why: issue #4 asks for the largest frame count that fits in 80 GB for the dense baseline and for
Lite3R. A dense forward at ~1,000 VGGT frames takes minutes (global attention is quadratic), so the
probe measures the peak at the frame counts it can afford within ``--budget-s`` (stopping at the
first out-of-memory), fits peak = a + b·frames through the measured points (memory is linear in the
frame count: attention is computed block-wise, never as a score matrix) and reports the predicted
largest count for the GPU's memory, marked as predicted unless a measured run reached it. Engine path:
``model_forward`` (trunk, cameras, depth heads in chunks), eager, random weights, 518 px.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from probe_setup import add_model_arguments, build, output_dir
from provenance import markdown_table, write_result

from lite3r.eval.bench import make_inputs, model_forward


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    add_model_arguments(ap, frames=None)
    ap.add_argument("--frames", type=int, nargs="+", required=True)
    ap.add_argument("--budget-s", type=float, default=400.0, help="skip frame counts predicted to overrun")
    args = ap.parse_args(argv)
    out = output_dir(args, "memory")
    _variant, rc = build(args)
    total = torch.cuda.get_device_properties(0).total_memory
    hw = (args.image_size, args.image_size)
    rows, t_start = [], time.perf_counter()
    for n in sorted(args.frames):
        if rows and rows[-1]["status"] == "ok":  # runtime grows at most quadratically with frames
            last = rows[-1]
            predicted = last["seconds"] * (n / last["frames"]) ** 2
            if time.perf_counter() - t_start + predicted > args.budget_s:
                rows.append(
                    {
                        "frames": n,
                        "status": f"skipped (≈{predicted:.0f} s)",
                        "peak_gib": None,
                        "seconds": None,
                    }
                )
                continue
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        try:
            images = make_inputs(n, hw, rc.model.input_normalization, "cuda", 0)
            t0 = time.perf_counter()
            with torch.inference_mode():
                model_forward(rc, images, "cameras-depth")
            torch.cuda.synchronize()
            row = {"frames": n, "status": "ok", "seconds": time.perf_counter() - t0}
        except torch.cuda.OutOfMemoryError:
            row = {"frames": n, "status": "out of memory", "seconds": None}
        row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        images = None
        rows.append(row)
        print(row, flush=True)
        if row["status"] != "ok":
            break
    ok = [r for r in rows if r["status"] == "ok"]
    fit = None
    if len(ok) >= 2:
        (n0, p0), (n1, p1) = (ok[-2]["frames"], ok[-2]["peak_gib"]), (ok[-1]["frames"], ok[-1]["peak_gib"])
        b = (p1 - p0) / (n1 - n0)
        a = p0 - b * n0
        cap = total / 2**30
        fit = {
            "gib_per_frame": b,
            "fixed_gib": a,
            "device_gib": cap,
            "predicted_max_frames": int((cap - a) / b),
        }
    result = {
        "variant": args.variant,
        "rows": rows,
        "linear_fit": fit,
        "largest_measured": max((r["frames"] for r in ok), default=0),
    }
    label = args.variant.split(":")[0]
    table = markdown_table(rows)
    if fit:
        table += (
            f"\nLinear fit through the last two measured points: {fit['fixed_gib']:.2f} GiB + "
            f"{fit['gib_per_frame'] * 1000:.1f} MiB/frame → predicted largest frame count in "
            f"{fit['device_gib']:.1f} GiB: **{fit['predicted_max_frames']}** (predicted, not run).\n"
        )
    write_result(out / f"max_frames_{label}.json", result, table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
