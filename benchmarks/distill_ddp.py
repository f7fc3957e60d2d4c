"""Distillation on 2 GPUs (torchrun, NCCL) vs 1 GPU at the same global batch: adapters and throughput.

    NCCL_NVLS_ENABLE=0 python benchmarks/distill_ddp.py [--out DIR] [--steps 100] [--nproc 2]

Runs the training worker twice with identical data: once on one GPU with gradient accumulation
(``grad_accum = nproc``), once under ``torchrun --nproc_per_node nproc`` (``grad_accum = 1``); both
see the same global micro-batches (the data order is a function of the micro-batch id only). Reports
samples/s per GPU for each, the scaling efficiency, and the largest difference between the two
adapters (bf16 autocast and non-deterministic reductions make it small but non-zero).
Writes distill_ddp.json/.md under $OUT/distill_ddp (or benchmarks/results/distill_ddp).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import markdown_table, write_result


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None)
    p.add_argument("--model", default="lite3r-tiny")
    p.add_argument("--weights", default=None)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch", type=int, default=4, help="scenes per micro-batch per process")
    p.add_argument("--views", type=int, nargs=2, default=[8, 8])
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--keep", type=float, default=0.1)
    p.add_argument("--timeout", type=int, default=280, help="seconds per run")
    p.add_argument("--device", default="cuda", help="cuda (NCCL) or cpu (gloo, a dry run)")
    p.add_argument("--block", type=int, nargs=2, default=None, metavar=("Q", "K"))
    return p.parse_args(argv)


def write_config(args, path: Path, out_dir: Path, accum: int) -> Path:
    from lite3r.training.config import DistillRunConfig

    cfg = DistillRunConfig.from_dict(
        {
            "name": out_dir.name,
            "output_dir": str(out_dir),
            "seed": 0,
            "device": args.device,
            "steps": args.steps,
            "threads": 1 if args.device == "cpu" else None,
            "log_every": 5,
            "model": {"name": args.model, "weights": args.weights},
            "conversion": {
                "sites": ["global"],
                "keep_ratio": args.keep,
                **({"block_q": args.block[0], "block_k": args.block[1]} if args.block else {}),
            },
            "optim": {"grad_accum": accum, "warmup_steps": 5},
            "precision": {"autocast": "bf16" if args.device == "cuda" else "fp32"},
            "data": {"image_size": args.image_size, "views": list(args.views), "batch_size": args.batch},
            "eval": {"every": 0, "at_end": False},
            "checkpoint": {"every": 0},
        }
    )
    return cfg.save(path)


def run(cmd: list[str], timeout: int) -> tuple[list[dict], float, str]:
    env = {**os.environ, "NCCL_NVLS_ENABLE": "0", "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return events, time.perf_counter() - t0, proc.stderr[-2000:]


def steady_rate(events: list[dict]) -> dict:
    steps = [e for e in events if e["event"] == "step"]
    last = steps[-1]
    return {
        "steps_per_s": last["steps_per_s"],
        "samples_per_s": last["samples_per_s"],
        "samples_per_s_per_gpu": last["samples_per_s_per_process"],
        "final_loss": last["loss"],
    }


def main(argv=None) -> int:
    import torch
    from safetensors.torch import load_file

    args = parse_args(argv)
    out = Path(args.out or Path(os.environ.get("OUT", "benchmarks/results")) / "distill_ddp")
    out.mkdir(parents=True, exist_ok=True)
    worker = [sys.executable, "-m", "lite3r.training.worker", "--no-stdin", "--config"]
    one_cfg = write_config(args, out / "one_gpu.yaml", out / "one_gpu", accum=args.nproc)
    multi_cfg = write_config(args, out / "multi_gpu.yaml", out / "multi_gpu", accum=1)

    one, one_s, _ = run([*worker, str(one_cfg)], args.timeout)
    multi, multi_s, _ = run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(args.nproc),
            "-m",
            "lite3r.training.worker",
            "--no-stdin",
            "--config",
            str(multi_cfg),
        ],
        args.timeout,
    )
    a = load_file(out / "one_gpu" / "adapter.safetensors")
    b = load_file(out / "multi_gpu" / "adapter.safetensors")
    diffs = {k: float((a[k] - b[k]).abs().max()) for k in a}
    scale = max(float(t.abs().max()) for t in a.values())
    r1, rn = steady_rate(one), steady_rate(multi)
    results = {
        "args": vars(args),
        "global_batch": args.batch * args.nproc,
        "one_gpu": {**r1, "wall_s": one_s},
        "multi_gpu": {**rn, "wall_s": multi_s, "world_size": multi[0]["world_size"]},
        "scaling_efficiency": rn["samples_per_s"] / (args.nproc * r1["samples_per_s"]),
        "adapter_max_abs_diff": max(diffs.values()),
        "adapter_max_abs": scale,
        "adapter_max_rel_diff": max(diffs.values()) / scale,
        "gpus": torch.cuda.device_count(),
    }
    rows = [{"run": "1 GPU, accum " + str(args.nproc), **r1}, {"run": f"{args.nproc} GPUs (DDP)", **rn}]
    table = markdown_table(rows) + (
        f"\nscaling efficiency {results['scaling_efficiency']:.3f}; adapter max |Δ| "
        f"{results['adapter_max_abs_diff']:.3g} (max |w| {scale:.3g})\n"
    )
    write_result(out / "distill_ddp.json", results, table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
