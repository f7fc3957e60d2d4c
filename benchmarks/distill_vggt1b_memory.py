"""A few distillation steps of VGGT-1B (random weights) to show the full-size model trains in memory.

    python benchmarks/distill_vggt1b_memory.py [--out DIR] [--views 8] [--steps 4]

Teacher = VGGT-1B with seeded random weights (no download), student = SLA on the global sites + FP8
fake quantisation, attention KD, bf16 autocast, 518×518 SynthMV scenes. Runs once with activation
checkpointing and once without (an out-of-memory there is recorded, not fatal). Reports peak GPU
memory, ms per step and the trainable-parameter count. Writes distill_vggt1b_memory.json/.md under
$OUT/distill_vggt1b (or benchmarks/results/distill_vggt1b).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import markdown_table, write_result


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None)
    p.add_argument("--views", type=int, default=8)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--image-size", type=int, default=518)
    p.add_argument("--keep", type=float, default=0.1)
    p.add_argument("--modes", nargs="+", default=["checkpointing", "no-checkpointing"])
    return p.parse_args(argv)


def main(argv=None) -> int:
    import torch

    from lite3r.training.config import DistillRunConfig
    from lite3r.training.distill import run_distillation

    args = parse_args(argv)
    out = Path(args.out or Path(os.environ.get("OUT", "benchmarks/results")) / "distill_vggt1b")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for mode in args.modes:
        cfg = DistillRunConfig.from_dict(
            {
                "name": f"vggt1b-{mode}",
                "output_dir": str(out / mode),
                "seed": 0,
                "device": "cuda",
                "steps": args.steps,
                "log_every": 1,
                "model": {"name": "vggt-1b", "random_init": True},
                "conversion": {"sites": ["global"], "keep_ratio": args.keep},
                "optim": {"warmup_steps": 1},
                "precision": {"autocast": "bf16", "activation_checkpointing": mode == "checkpointing"},
                "data": {"image_size": args.image_size, "views": [args.views, args.views], "batch_size": 1},
                "eval": {"every": 0, "at_end": False},
                "checkpoint": {"every": 0},
            }
        )
        torch.cuda.reset_peak_memory_stats()
        events: list[dict] = []
        row = {"mode": mode, "views": args.views, "image_size": args.image_size}
        t0 = time.perf_counter()
        try:
            run_distillation(cfg, emit=events.append)
            steps = [e for e in events if e["event"] == "step"]
            row.update(
                {
                    "status": "ok",
                    "ms_per_step": 1000 / steps[-1]["steps_per_s"],
                    "final_loss": steps[-1]["loss"],
                    "trainable_parameters": events[0]["trainable_parameters"],
                    "total_parameters": events[0]["total_parameters"],
                    "checkpointed_blocks": events[0]["checkpointed_blocks"],
                }
            )
        except torch.OutOfMemoryError as exc:
            row.update({"status": "out of memory", "error": str(exc).splitlines()[0]})
        row["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        row["wall_s"] = time.perf_counter() - t0
        rows.append(row)
        print(row, flush=True)
        del events
        gc.collect()
        torch.cuda.empty_cache()
    cols = [
        "mode",
        "status",
        "views",
        "image_size",
        "peak_memory_gib",
        "ms_per_step",
        "trainable_parameters",
        "checkpointed_blocks",
        "wall_s",
    ]
    table = markdown_table(rows, cols)
    write_result(out / "distill_vggt1b_memory.json", {"args": vars(args), "runs": rows}, table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
