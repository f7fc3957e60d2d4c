"""How fast the VGGT-1B depth head (DPT) can run: fp32 vs bf16, channels-last, torch.compile.

    python benchmarks/probes/dpt_head_probe.py --frames 32 [--out DIR]

Why: with the trunk compiled and in FP8 the fp32 heads were ~100 of 355 ms at 32 frames (H100,
profile_e2e_lite3r-fp8-compiled_f32), while their convolutions are only ~2 TFLOP, so the head is
bound by memory traffic and layout changes, not math. This probe times the head alone on random
features (one 8-frame chunk at a time, as the engine runs it) and lists its top CUDA kernels.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from provenance import markdown_table, write_result

from lite3r.models import registry
from lite3r.models.vggt.dpt_head import DPTHead


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--image-size", type=int, default=518)
    ap.add_argument("--chunk", type=int, default=8)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    out = Path(args.out or os.environ.get("OUT") or "benchmarks/results") / "profile"
    cfg = registry.get_spec("vggt-1b").config()
    H = W = args.image_size
    start = 5  # camera + 4 registers
    P = (H // 14) * (W // 14) + start
    layers = {
        i: torch.randn(1, args.frames, P, cfg.depth_head.dim_in, device="cuda", dtype=torch.bfloat16)
        for i in cfg.depth_head.intermediate_layer_idx
    }
    rows = []

    def run(label, dtype, channels_last=False, compiled=False):
        torch.manual_seed(0)
        head = DPTHead(cfg.depth_head).cuda().eval().to(dtype)
        if channels_last:
            head = head.to(memory_format=torch.channels_last)
        if compiled:
            head._forward_frames = torch.compile(head._forward_frames, dynamic=False)
        fn = lambda: head(layers, (H, W), start, args.chunk)
        with torch.inference_mode():
            for _ in range(3):
                ref = fn()
            torch.cuda.synchronize()
            ev = [torch.cuda.Event(enable_timing=True) for _ in range(2)]
            ev[0].record()
            for _ in range(args.iters):
                fn()
            ev[1].record()
            torch.cuda.synchronize()
        ms = ev[0].elapsed_time(ev[1]) / args.iters
        rows.append({"variant": label, "frames": args.frames, "ms": ms})
        print(label, f"{ms:.2f} ms", flush=True)
        return head, fn, ref

    run("fp32", torch.float32)
    _, fn_bf16, _ref = run("bf16", torch.bfloat16)
    run("bf16 channels-last", torch.bfloat16, channels_last=True)
    run("bf16 compiled", torch.bfloat16, compiled=True)
    run("bf16 compiled channels-last", torch.bfloat16, channels_last=True, compiled=True)
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode(), profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn_bf16()
        torch.cuda.synchronize()
    kern = sorted(prof.key_averages(), key=lambda e: e.device_time_total, reverse=True)[:20]
    top = [{"kernel": e.key[:90], "calls": e.count, "ms": e.device_time_total / 1000} for e in kern]
    result = {"frames": args.frames, "image_size": H, "chunk": args.chunk, "timings": rows, "bf16_top": top}
    table = markdown_table(rows) + "\n### bf16 eager: top CUDA kernels\n\n" + markdown_table(top)
    write_result(out / f"dpt_head_probe_f{args.frames}.json", result, table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
