"""What is alive at the peak of one forward: allocations by the code that made them.

    python benchmarks/probes/memory_peak.py --variant lite3r-lean:fp8:sla0.1:heads=bf16:feat=fp8 --frames 64

Why: issue #4 asks for a peak ≥ 1.5× below the memory-lean dense baseline, and both grow linearly with
the frame count (``max_frames.py``: ~63 vs ~72 MiB per frame), so the per-frame tensors alive at the peak
decide it. This replays the caching allocator's trace of one eager forward (``torch.cuda.memory``
history), finds the moment of the largest allocated total, and groups the live blocks by the innermost
lite3r (or torch) source line that allocated them, with their shapes' size per frame.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from probe_setup import add_model_arguments, build, output_dir
from provenance import markdown_table, write_result

from lite3r.eval.bench import make_inputs, model_forward


def _site(frames: list[dict]) -> str:
    """The innermost frame in our code (lite3r/, kernels/, training/), else the innermost Python frame."""
    ours = [f for f in frames if any(p in f["filename"] for p in ("lite3r", "/kernels/", "/training/"))]
    pick = ours[0] if ours else (frames[0] if frames else None)
    if pick is None:
        return "?"
    name = pick["filename"].split("site-packages/")[-1].split("/main/")[-1]
    return f"{name}:{pick['line']} {pick['name']}"


def _outer(frames: list[dict]) -> str:
    """A short chain of our frames (innermost first) so one line is readable in context."""
    ours = [f for f in frames if "lite3r" in f["filename"] or "/kernels/" in f["filename"]]
    return " < ".join(f"{Path(f['filename']).name}:{f['line']}" for f in ours[:4])


def live_at_peak(snapshot: dict, device: int = 0) -> tuple[int, int, list[dict]]:
    """(peak bytes over the traced baseline, trace index of the peak, live blocks at the peak)."""
    trace = snapshot["device_traces"][device]
    sizes: dict[int, int] = {}
    cur = peak = 0
    peak_i = -1
    for i, ev in enumerate(trace):
        if ev["action"] == "alloc":
            sizes[ev["addr"]] = ev["size"]
            cur += ev["size"]
            if cur > peak:
                peak, peak_i = cur, i
        elif ev["action"] == "free_requested" and ev["addr"] in sizes:
            cur -= sizes.pop(ev["addr"])
    live: dict[int, dict] = {}  # replay up to the peak for the live set itself
    for ev in trace[: peak_i + 1]:
        if ev["action"] == "alloc":
            live[ev["addr"]] = ev
        elif ev["action"] == "free_requested":
            live.pop(ev["addr"], None)
    return peak, peak_i, list(live.values())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    add_model_arguments(ap, frames=64)
    ap.add_argument("--top", type=int, default=30)
    args = ap.parse_args(argv)
    out = output_dir(args, "memory")
    variant, rc = build(args)
    hw = (args.image_size, args.image_size)
    images = make_inputs(args.frames, hw, rc.model.input_normalization, "cuda", 0)
    with torch.inference_mode():
        model_forward(rc, images, "cameras-depth")  # warm (autotuning, workspaces)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    torch.cuda.memory._record_memory_history(max_entries=1_000_000)
    with torch.inference_mode():
        model_forward(rc, images, "cameras-depth")
    torch.cuda.synchronize()
    snap = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    peak_reported = torch.cuda.max_memory_allocated()
    peak, peak_i, blocks = live_at_peak(snap)
    groups: dict[str, list] = defaultdict(lambda: [0, 0, ""])
    for b in blocks:
        frames = b.get("frames", [])
        g = groups[_site(frames)]
        g[0] += b["size"]
        g[1] += 1
        g[2] = g[2] or _outer(frames)
    rows = [
        {
            "allocated_at": site[:110],
            "blocks": n,
            "gib": size / 2**30,
            "mib_per_frame": size / 2**20 / args.frames,
            "via": via[:120],
        }
        for site, (size, n, via) in sorted(groups.items(), key=lambda kv: -kv[1][0])[: args.top]
    ]
    result = {
        "variant": args.variant,
        "frames": args.frames,
        "resident_before_forward_gib": base / 2**30,
        "peak_allocated_gib": peak_reported / 2**30,
        "traced_peak_over_resident_gib": peak / 2**30,
        "peak_event_index": peak_i,
        "events": len(snap["device_traces"][0]),
        "live_at_peak": rows,
    }
    md = (
        f"{args.frames} frames: resident before the forward (weights, caches) "
        f"{base / 2**30:.2f} GiB; peak allocated {peak_reported / 2**30:.2f} GiB; traced peak over resident "
        f"{peak / 2**30:.2f} GiB at event {peak_i} of {len(snap['device_traces'][0])}.\n\n"
        + markdown_table(rows)
    )
    write_result(out / f"memory_peak_{variant.label}_f{args.frames}.json", result, md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
