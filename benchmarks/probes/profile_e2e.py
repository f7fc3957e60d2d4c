"""Where one end-to-end forward spends its time: torch.profiler over a few warm runs of one variant.

    python benchmarks/probes/profile_e2e.py --variant lite3r-fp8-compiled:fp8:sla0.1:compile --frames 8 [--out DIR]

Why: at 8 frames the Lite3R FP8 path is slower and far noisier than dense bf16 (H100, 2026-11-24:
p10-p90 135-209 ms against 108 ms), which the per-layer benchmarks do not explain. Writes the top CUDA
kernels and CPU ops by total time, the count of host synchronisations and device-to-host copies, and
the wall time of each profiled run (profile_e2e_<label>_f<frames>.json + .md, via provenance).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from probe_setup import add_model_arguments, build, forward_fn, output_dir
from provenance import markdown_table, write_result

# Leaf GPU kernels by what they do (first match wins), so a profile says where the time goes without
# the nesting of compiled regions and custom ops that the per-op table double counts.
KERNEL_CATEGORIES = [
    ("sla sparse kernel", r"_sla_forward_kernel"),
    ("sla selection/prepare/sums", r"_sla_|topk_rows|complement_map|sla_"),
    ("fp8 quantisation kernels", r"layernorm_fp8|gelu_fp8|fp8_quantize|_quantize"),
    ("dense attention (sdpa)", r"fmha|flash|sdpa|attention|attn"),
    ("convolution", r"conv|fprop|dgrad|wgrad|implicit_gemm"),
    ("fp8 gemm", r"qqtst|e4m3|f8f8|fp8"),
    ("gemm (bf16/fp32)", r"nvjet|gemm|cutlass|xmma|ampere_|sm90_"),
    ("upsampling", r"upsample|interp"),
    ("inductor triton (fused elementwise/reductions)", r"^triton_"),
    ("aten elementwise/reduce", r"elementwise|reduce_kernel|vectorized|unrolled"),
    ("copies/memset", r"[Mm]emcpy|[Mm]emset|copy"),
]


def kernel_breakdown(prof, runs: int) -> tuple[list[dict], list[dict]]:
    """(per-category ms per run, top leaf kernels ms per run) over the device-side kernel events."""
    from torch.autograd import DeviceType

    per_name: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for e in prof.events():
        if e.device_type != DeviceType.CUDA:
            continue
        t = getattr(e, "device_time", None)
        if t is None:
            t = e.cuda_time
        per_name[e.name][0] += t / 1000 / runs
        per_name[e.name][1] += 1
    cats: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for name, (ms, n) in per_name.items():
        cat = next((c for c, rx in KERNEL_CATEGORIES if re.search(rx, name)), "other")
        cats[cat] += ms
        counts[cat] += n // runs
    total = sum(cats.values())
    cat_rows = [
        {"category": c, "kernels_per_run": counts[c], "ms_per_run": ms, "pct": 100 * ms / (total or 1.0)}
        for c, ms in sorted(cats.items(), key=lambda kv: -kv[1])
    ]
    cat_rows.append(
        {
            "category": "total GPU busy",
            "kernels_per_run": sum(counts.values()),
            "ms_per_run": total,
            "pct": 100.0,
        }
    )
    top = sorted(per_name.items(), key=lambda kv: -kv[1][0])[:40]
    top_rows = [{"kernel": n[:100], "calls": c // runs, "ms_per_run": ms} for n, (ms, c) in top]
    return cat_rows, top_rows


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
    categories, leaf = kernel_breakdown(prof, args.runs)
    result = {
        "variant": args.variant,
        "kernel_categories": categories,
        "leaf_kernels": leaf,
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
    md += "### GPU time by kernel category (leaf kernels)\n\n" + markdown_table(categories) + "\n\n"
    md += "### Top leaf kernels\n\n" + markdown_table(leaf) + "\n\n"
    md += "### CUDA kernels\n\n" + markdown_table(result["cuda_kernels"]) + "\n\n### CPU ops\n\n"
    md += markdown_table(result["cpu_ops"])
    write_result(out / f"profile_e2e_{label}_f{args.frames}.json", result, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
