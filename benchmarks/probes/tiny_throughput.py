"""lite3r-tiny training throughput against batch size, compilation and model depth (CUDA).

    python benchmarks/probes/tiny_throughput.py --views-per-step 48 192 384 [--compile] [--depths 4 8]

Why: the shipped lite3r-tiny ran 1,375 steps of 48 views in 9.5 minutes (~3 steps/s, ~140 views/s).
That is about 3 TFLOP/s on an H100 for a 15 M-parameter model: the step is bound by kernel launches
and Python, not by the GPU. This probe separates the data cost (SynthMV rendering) from the model
step and measures how views/s grows with the batch, so that the long training run picks its batch
from measurements. Rows: render (supersample 1 and 2) and fwd+bwd+AdamW at S = 2 and 8 views per
scene. Writes tiny_throughput.json + .md via provenance.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_synthetic import timed, train_step_fn
from provenance import markdown_table, write_result

from lite3r.training.data.synthetic import SynthConfig, render_batch, train_step_seeds


def _batch(S: int, B: int, dev, ss: int, shift: int = 0):
    seeds, _ = train_step_seeds(0, 1000 + shift, max(B, 48), (S, S))
    b = render_batch(seeds[:B], S, 224, dev, SynthConfig(supersample=ss))
    return {"images": b.images, "depth": b.depth, "valid": b.valid, "extrinsics": b.extrinsics,
            "intrinsics": b.intrinsics}  # fmt: skip


def _render_fn(S: int, B: int, dev, ss: int):
    shift = iter(range(10**6))  # new scenes every call, as in training
    return lambda: _batch(S, B, dev, ss, next(shift))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--views-per-step", type=int, nargs="+", default=[48, 192, 384])
    p.add_argument("--views", type=int, nargs="+", default=[2, 8], help="views per scene (S)")
    p.add_argument("--depths", type=int, nargs="+", default=[4], help="aggregator depths to time")
    p.add_argument("--compile", action="store_true", help="also time compiled frame/global blocks")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out")
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("tiny_throughput needs CUDA")
    from lite3r.training.tiny import build_tiny

    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    dev = torch.device("cuda")
    rows = []
    for vps in a.views_per_step:
        for S in a.views:
            B = vps // S
            for ss in (1, 2):
                ms = 1e3 * timed(_render_fn(S, B, dev, ss), dev, a.repeats, warmup=2)[0]
                rows.append({"what": f"render ss={ss}", "depth": "-", "vps": B * S, "S": S, "compiled": "-",
                             "ms": round(ms, 1), "views_per_s": round(B * S / ms * 1e3), "peak_gib": "-"})  # fmt: skip
    for depth in a.depths:
        for compiled in (False, True) if a.compile else (False,):
            model = build_tiny("tiny", point_head=True, depth=depth).to(dev).train()
            if compiled:
                for blk in [*model.aggregator.frame_blocks, *model.aggregator.global_blocks]:
                    blk.compile(dynamic=False)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
            for vps in a.views_per_step:
                for S in a.views:
                    data = _batch(S, vps // S, dev, 2)
                    step = train_step_fn(model, data, opt, grad_clip=1.0)
                    torch.cuda.reset_peak_memory_stats()
                    try:
                        ms = 1e3 * timed(step, dev, a.repeats, warmup=2)[0]
                    except torch.OutOfMemoryError:
                        rows.append({"what": "train step", "depth": depth, "vps": vps, "S": S,
                                     "compiled": compiled, "ms": "OOM", "views_per_s": 0, "peak_gib": "-"})  # fmt: skip
                        del data
                        torch.cuda.empty_cache()
                        continue
                    n = data["images"].shape[0] * S
                    rows.append({"what": "train step", "depth": depth, "vps": n, "S": S, "compiled": compiled,
                                 "ms": round(ms, 1), "views_per_s": round(n / ms * 1e3),
                                 "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)})  # fmt: skip
                    print(rows[-1], flush=True)
                    del data, step
            del model, opt
            torch.cuda.empty_cache()
    cols = ["what", "depth", "vps", "S", "compiled", "ms", "views_per_s", "peak_gib"]
    text = markdown_table(rows, cols)
    print(text)
    out = Path(a.out or os.environ.get("OUT") or "benchmarks/results")
    write_result(out / "tiny_throughput.json", rows, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
