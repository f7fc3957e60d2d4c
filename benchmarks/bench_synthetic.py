"""SynthMV generator throughput (and, on CUDA, one lite3r-tiny training step for comparison).

    python benchmarks/bench_synthetic.py            # CPU: one scene per family, 8 views at 224 px
    python benchmarks/bench_synthetic.py --gpu      # CUDA: training-sized batches (48 views per batch)

CPU: ``single`` mode (per scene, bounding-sphere culling), 1 thread and all threads. CUDA: ``dense``
mode (the whole batch at once) for S in {2, 4, 8} with B = 48 // S scenes, supersample 1 and 2,
warm-up then the median of ``--repeats`` runs (CUDA-synchronised), plus the forward+backward time of
lite3r-tiny at the same batch so data and model cost can be compared. Writes JSON + markdown via
``benchmarks/provenance.py`` into ``$OUT`` (device) or ``benchmarks/results``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.provenance import markdown_table, write_result
from lite3r.training.data.synthetic import FAMILIES, SynthConfig, render_batch, train_step_seeds


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(fn, dev, repeats: int, warmup: int = 1) -> tuple[float, list[float]]:
    for _ in range(warmup):  # autotuning, allocator growth, compilation
        fn()
    times = []
    for _ in range(repeats):
        _sync(dev)
        t = time.perf_counter()
        fn()
        _sync(dev)
        times.append(time.perf_counter() - t)
    return statistics.median(times), times


def cpu_rows(repeats: int) -> list[dict]:
    rows = []
    dev = torch.device("cpu")
    all_threads = torch.get_num_threads()
    for threads in sorted({1, all_threads}):
        torch.set_num_threads(threads)
        for i, fam in enumerate(FAMILIES):
            med, _ = timed(
                lambda f=fam, s=20_000_000 + i: render_batch([s], 8, 224, dev, family=f), dev, repeats
            )
            rows.append({"device": "cpu", "threads": threads, "family": fam, "views": 8, "px": 224,
                         "supersample": 2, "s_per_scene": med, "views_per_s": 8 / med})  # fmt: skip
    torch.set_num_threads(all_threads)
    return rows


def _render_fn(seeds, S, dev, cfg):
    shift = iter(range(10**6))  # new scenes every call, as in training
    return lambda: render_batch([x + next(shift) for x in seeds], S, 224, dev, cfg)


def train_step_fn(model, data, opt, grad_clip: float | None = None):
    """One lite3r-tiny optimiser step on a fixed batch, as train_tiny runs it (bf16 autocast trunk)."""
    from lite3r.training.losses import LossConfig, targets_from_batch, vggt_loss

    device_type = next(model.parameters()).device.type

    def step():
        with torch.autocast(device_type, dtype=torch.bfloat16):
            preds = model(data["images"])
        loss, _ = vggt_loss(preds, targets_from_batch(data, LossConfig()))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()

    return step


def gpu_rows(repeats: int, views_per_batch: int) -> list[dict]:
    from lite3r.training.tiny import build_tiny

    dev = torch.device("cuda")
    rows = []
    model = build_tiny("tiny", point_head=True).to(dev).train()  # as train_tiny (auxiliary point head)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    for S in (2, 4, 8):
        B = views_per_batch // S
        seeds, _ = train_step_seeds(0, S, B, (S, S))
        for ss in (1, 2):
            med, _ = timed(_render_fn(seeds, S, dev, SynthConfig(supersample=ss)), dev, repeats)
            rows.append({"device": "cuda", "what": "render", "S": S, "B": B, "supersample": ss,
                         "ms": med * 1e3, "views_per_s": B * S / med})  # fmt: skip
        batch = render_batch(seeds, S, 224, dev, SynthConfig())
        data = {"images": batch.images, "depth": batch.depth, "valid": batch.valid,
                "extrinsics": batch.extrinsics, "intrinsics": batch.intrinsics}  # fmt: skip
        med, _ = timed(train_step_fn(model, data, opt), dev, repeats)
        rows.append({"device": "cuda", "what": "tiny fwd+bwd+step", "S": S, "B": B, "supersample": "-",
                     "ms": med * 1e3, "views_per_s": B * S / med})  # fmt: skip
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--gpu", action="store_true", help="CUDA batches (training sizes) instead of the CPU scenes"
    )
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--views-per-batch", type=int, default=48)
    a = p.parse_args(argv)
    if a.gpu:
        if not torch.cuda.is_available():
            raise SystemExit("--gpu needs CUDA")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        rows = gpu_rows(a.repeats, a.views_per_batch)
        cols = ["what", "S", "B", "supersample", "ms", "views_per_s"]
        name = "synthetic_gpu.json"
    else:
        rows = cpu_rows(a.repeats)
        cols = ["threads", "family", "views", "px", "supersample", "s_per_scene", "views_per_s"]
        name = "synthetic_cpu.json"
    text = markdown_table(rows, cols)
    print(text)
    out = Path(os.environ["OUT"]) if os.environ.get("OUT") else Path(__file__).resolve().parent / "results"
    write_result(out / name, rows, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
