"""Latency and peak-memory sweep over frame counts, dense vs Lite3R variants in one process.

Example (H100)::

    lite3r bench --model vggt-1b --frames 8 32 128 --variant dense:bf16 --variant lite3r:fp8:sla0.1 --out OUT

Rules (docs performance.md §7): every variant is built through the engine (precision by
``lite3r.quant.precision``, attention by ``lite3r.convert``) from the same base weights, measured on
the same inputs with the same heads, one variant after the other in this process; ratios are computed
against the first variant from numbers of this run. Timing: ``--warmup`` runs, then the median (and
p10/p90) of ``--iters`` ≥ 20 runs timed with CUDA events (on the CPU: ``time.perf_counter`` wall clock,
labelled as such). Memory: ``torch.cuda.max_memory_allocated`` — weights (allocated after the model is
set up) and activations (peak during one forward minus what was allocated before it) separately. The
TF32 state, the attention path that ran and the compile mode are recorded with every row.

What is timed is the model: ``encode`` (trunk) + camera head + depth head (+ point head with
``--heads all``), heads in frame chunks exactly as the engine runs them, on device tensors — no image
decoding, no host copies. Without ``--weights`` the weights are random (built on the device directly).
"""

from __future__ import annotations

import argparse
import functools
import gc
import logging
import os
import statistics
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="vggt-1b", help="registry name or a reference config JSON")
    p.add_argument("--weights", help="checkpoint (default: random weights, seeded)")
    p.add_argument("--variant", action="append", metavar="SPEC",
                   help="LABEL[:fp32|bf16|fp8][:dense|sla<keep>][:compile[=MODE]|cudagraphs][:sdpa=B][:chunk=N]"
                   "[:feat=native|fp8][:mlpchunk=N][:heads=fp32|bf16][:qk=torch|triton][:keys=tma|gather]; "
                   "repeat; the first is the baseline (default: dense:bf16 and lite3r:bf16:sla)")  # fmt: skip
    p.add_argument("--frames", type=int, nargs="+", default=[2, 8, 32, 64, 128], help="frame counts S")
    p.add_argument("--image-size", type=int, nargs="+", default=None, metavar="PX",
                   help="H W (or one value for square); default: the model's input size, square")  # fmt: skip
    p.add_argument("--heads", choices=("all", "cameras-depth"), default="all", help="which heads run")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=20, help="timed runs (≥ 20 for published numbers)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out", default=None, help="output folder (default: $OUT if set, else benchmarks/results)"
    )
    p.add_argument("--name", default=None, help="file stem of the results (default: bench_<model>_<H>x<W>)")
    p.add_argument("--no-plot", action="store_true")


# ---- measurement --------------------------------------------------------------------------------------


def model_forward(rc, images, heads: str = "all") -> None:
    """The engine's inference on device tensors: trunk, cameras, depth (and points) in frame chunks."""
    model = rc.model
    S, H, W = images.shape[1], images.shape[-2], images.shape[-1]
    feats = rc.encode(images)
    model.decode_cameras(rc.camera_features(feats), (H, W))
    chunk = rc.frames_chunk_size
    for a in range(0, S, chunk):
        b = min(S, a + chunk)
        model.decode_depth(rc.frame_features(feats, a, b, S), images[:, a:b], frames_chunk_size=chunk)
    if heads == "all":
        for a in range(0, S, chunk):
            b = min(S, a + chunk)
            if (
                model.decode_points(
                    rc.frame_features(feats, a, b, S), images[:, a:b], frames_chunk_size=chunk
                )
                is None
            ):
                break


def time_runs(fn, warmup: int, iters: int, cuda: bool) -> list[float]:
    """Milliseconds of ``iters`` calls after ``warmup`` calls (CUDA events on GPU, perf_counter on CPU)."""
    import torch

    for _ in range(warmup):
        fn()
    if cuda:
        torch.cuda.synchronize()
        times = []
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(float(start.elapsed_time(end)))
        return times
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        times.append(1000.0 * (time.perf_counter() - t))
    return times


def latency_stats(times: list[float]) -> dict:
    s = sorted(times)
    q = statistics.quantiles(s, n=10, method="inclusive") if len(s) >= 2 else [s[0]] * 9
    return {
        "median": statistics.median(s),
        "mean": statistics.fmean(s),
        "p10": q[0],
        "p90": q[-1],
        "min": s[0],
        "max": s[-1],
        "runs": len(s),
    }


def make_inputs(S: int, hw: tuple[int, int], normalization: str, device, seed: int):
    """The same random images for every variant: [1, S, 3, H, W] float32 ([0,1] or ImageNet-normalised)."""
    import torch

    from lite3r.io.preprocess import IMAGENET_MEAN, IMAGENET_STD

    g = torch.Generator(device="cpu").manual_seed(seed * 1000 + S)
    x = torch.rand(1, S, 3, *hw, generator=g)
    if normalization == "imagenet":
        mean = torch.tensor(IMAGENET_MEAN).view(1, 1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 1, 3, 1, 1)
        x = (x - mean) / std
    return x.to(device)


def measure_variant(source, variant, frames, hw, args, device) -> list[dict]:
    import torch

    from lite3r.engine.policy import tf32_state
    from lite3r.eval.variants import build_reconstructor

    cuda = device.startswith("cuda")
    if cuda:
        # Anything of the previous variant still held by reference cycles is collected now, not during
        # this build, where freeing it made the weights look smaller (the third variant of
        # e2e/bench_vggt-1b_f8-32_tma: 0.81 GiB allocated for 1.78 GiB of state dict).
        gc.collect()
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    rc = build_reconstructor(source, variant, device)
    weights_alloc = torch.cuda.memory_allocated() - before if cuda else None
    common = {
        "variant": variant.label,
        "spec": variant.text or variant.label,
        "precision": rc.precision,
        "attention": rc.attention,
        "qk_kernel": getattr(rc, "qk_kernel", "torch"),
        "compile": rc.compile,
        "memory": rc.memory.description,
        "feature_storage": rc.memory.feature_storage,
        "mlp_chunk_tokens": rc.memory.mlp_chunk_tokens,
        "tf32": bool(rc.precision_setup.tf32) if cuda else None,
        "weights_bytes": rc.weights_bytes,
        "weights_allocated_bytes": weights_alloc,
        "timer": "cuda_events" if cuda else "wall_clock_cpu (time.perf_counter)",
    }
    rows, oom_at = [], None
    for S in frames:
        row = {**common, "frames": S, "image_size": list(hw)}
        if oom_at is not None:
            rows.append({**row, "status": f"skipped (out of memory at {oom_at} frames)"})
            continue
        images = make_inputs(S, hw, rc.model.input_normalization, device, args.seed)
        fn = functools.partial(model_forward, rc, images, args.heads)
        try:
            with torch.inference_mode(), tf32_state(rc.precision_setup.tf32 if cuda else None):
                if cuda:
                    torch.cuda.synchronize()
                    fn()  # first call: compilation / autotuning outside the memory measurement
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                    base = torch.cuda.memory_allocated()
                    fn()
                    torch.cuda.synchronize()
                    peak = torch.cuda.max_memory_allocated()
                    row.update(
                        peak_bytes=int(peak),
                        activation_peak_bytes=int(peak - base),
                        input_bytes=images.numel() * images.element_size(),
                    )
                times = time_runs(fn, args.warmup, args.iters, cuda)
            row.update(status="ok", latency_ms=latency_stats(times))
        except torch.OutOfMemoryError:
            oom_at = S
            row.update(status="oom")
        finally:
            fn = images = None  # free the inputs before the next frame count
            if cuda:
                torch.cuda.empty_cache()
        rows.append(row)
        lat = row.get("latency_ms", {}).get("median")
        print(
            f"[{variant.label}] S={S}: {row['status']}" + (f" {lat:.2f} ms" if lat else ""),
            file=sys.stderr,
            flush=True,
        )
    del rc
    return rows


def add_ratios(rows: list[dict], baseline: str) -> None:
    """speedup = baseline median / variant median; memory ratios variant / baseline (same frames)."""
    base = {r["frames"]: r for r in rows if r["variant"] == baseline and r.get("status") == "ok"}
    for r in rows:
        b = base.get(r["frames"])
        if r["variant"] == baseline or b is None or r.get("status") != "ok":
            continue
        r["speedup_vs_baseline"] = b["latency_ms"]["median"] / r["latency_ms"]["median"]
        if r.get("peak_bytes") and b.get("peak_bytes"):
            r["peak_memory_ratio_vs_baseline"] = r["peak_bytes"] / b["peak_bytes"]
            r["activation_memory_ratio_vs_baseline"] = r["activation_peak_bytes"] / max(
                b["activation_peak_bytes"], 1
            )


def table_markdown(rows: list[dict]) -> str:
    gib = 2**30

    def num(x, fmt):
        return "–" if x is None else fmt.format(x)

    lines = [
        "| variant | frames | median ms | p10–p90 ms | speed-up | peak GiB | peak ratio | weights GiB "
        "| activations GiB | attention | precision | memory options |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        head = f"| {r['variant']} | {r['frames']} | "
        qk = " · qk-norm/RoPE kernel" if r.get("qk_kernel") == "triton" else ""
        tail = f" | {r['attention']}{qk} | {r['precision']} | {r.get('memory', '?')} |"
        if r.get("status") != "ok":
            lines.append(head + " | ".join([r["status"]] + [""] * 6) + tail)
            continue
        lat = r["latency_ms"]
        pk, wb, ab = r.get("peak_bytes"), r.get("weights_allocated_bytes"), r.get("activation_peak_bytes")
        cells = [
            f"{lat['median']:.2f}",
            f"{lat['p10']:.2f}–{lat['p90']:.2f}",
            num(r.get("speedup_vs_baseline"), "{:.2f}×"),
            num(None if pk is None else pk / gib, "{:.2f}"),
            num(r.get("peak_memory_ratio_vs_baseline"), "{:.2f}×"),
            num(None if wb is None else wb / gib, "{:.2f}"),
            num(None if ab is None else ab / gib, "{:.2f}"),
        ]
        lines.append(head + " | ".join(cells) + tail)
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for label in dict.fromkeys(r["variant"] for r in rows):
        ok = [r for r in rows if r["variant"] == label and r.get("status") == "ok"]
        if not ok:
            continue
        x = [r["frames"] for r in ok]
        axes[0].plot(x, [r["latency_ms"]["median"] for r in ok], marker="o", label=label)
        if all(r.get("peak_bytes") for r in ok):
            axes[1].plot(x, [r["peak_bytes"] / 2**30 for r in ok], marker="o", label=label)
    timer = rows[0]["timer"] if rows else ""
    frames = sorted({r["frames"] for r in rows})
    axes[0].set(yscale="log", ylabel=f"median latency (ms, {timer.split()[0]})")
    axes[1].set(ylabel="peak memory (GiB)")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(frames, [str(f) for f in frames])
        ax.minorticks_off()
        ax.set_xlabel("frames")
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    if not axes[1].lines:
        axes[1].text(
            0.5, 0.5, "peak memory is measured on CUDA only", ha="center", transform=axes[1].transAxes
        )
    fig.suptitle(title)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def run(args) -> int:
    import torch

    from lite3r.errors import InputError
    from lite3r.eval.variants import ModelSource, parse_variants

    variants = parse_variants(args.variant or ["dense:bf16", "lite3r:bf16:sla"])
    if args.iters < 1 or args.warmup < 0:
        raise InputError("--iters must be ≥ 1 and --warmup ≥ 0")
    if args.iters < 20:
        log.warning(
            "--iters %d < 20: fine for a check, not for published numbers (performance.md §7)", args.iters
        )
    compiles = {v.compile for v in variants}
    if len(compiles) > 1:
        log.warning(
            "variants use different compile settings %s: ratios are not like for like", sorted(compiles)
        )
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    source = ModelSource(args.model, args.weights, random_weights=args.weights is None, seed=args.seed)
    hw = _image_size(args, source)
    frames = sorted(set(args.frames))

    out = Path(args.out or os.environ.get("OUT") or "benchmarks/results")
    stem = args.name or f"bench_{Path(args.model).stem}_{hw[0]}x{hw[1]}"
    title = f"{Path(args.model).stem} · {hw[0]}×{hw[1]} · {device}"
    header = {
        "model": source.describe(),
        "device": device,
        "image_size": list(hw),
        "heads": args.heads,
        "warmup": args.warmup,
        "iters": args.iters,
        "untimed_runs_before_warmup": 2 if device.startswith("cuda") else 0,
        "baseline": variants[0].label,
        "variants": [v.to_dict() for v in variants],
        "tf32_global": {
            "matmul": torch.backends.cuda.matmul.allow_tf32,
            "cudnn": torch.backends.cudnn.allow_tf32,
        },
    }
    rows: list[dict] = []
    for i, v in enumerate(variants):
        try:
            rows += measure_variant(source, v, frames, hw, args, device)
        except Exception as e:  # recorded in the table and logged; the other variants still run
            log.exception("variant %s failed", v.label)
            msg = f"error: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
            rows += [
                {"variant": v.label, "spec": v.text or v.label, "frames": S, "status": msg,
                 "attention": "?", "precision": "?"}
                for S in frames
            ]  # fmt: skip
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
        add_ratios(rows, variants[0].label)
        # written after every variant, so a run stopped by a time limit keeps what it measured
        md = _write(
            out,
            stem,
            title,
            {**header, "complete": i == len(variants) - 1, "rows": rows},
            rows,
            plot_png=not args.no_plot,
        )
    print(md)
    print(f"wrote {out / (stem + '.json')}")
    return 0


def _write(out: Path, stem: str, title: str, results: dict, rows: list[dict], plot_png: bool) -> str:
    """JSON (with provenance) + markdown (+ PNG) of the rows so far; returns the markdown."""
    import json

    from lite3r.eval.cli import _load_provenance

    md = f"### {title}\n\n" + table_markdown(rows)
    if not results.get("complete"):
        md += "\n(partial: not every variant has run yet)\n"
    out.mkdir(parents=True, exist_ok=True)
    prov = _load_provenance()
    if prov is not None:
        prov.write_result(out / f"{stem}.json", results, md)
    else:
        log.warning("benchmarks/provenance.py not found: writing results without provenance")
        (out / f"{stem}.json").write_text(
            json.dumps({"provenance": None, "results": results}, indent=2, default=float)
        )
        (out / f"{stem}.md").write_text(md)
    if plot_png:
        plot(rows, out / f"{stem}.png", title)
    return md


def _image_size(args, source) -> tuple[int, int]:
    from lite3r.errors import InputError

    if args.image_size:
        if len(args.image_size) not in (1, 2):
            raise InputError("--image-size takes one value (square) or two (H W)")
        h = args.image_size[0]
        w = args.image_size[-1]
    else:
        size = 518
        if not source.is_reference_config:
            from lite3r.models import registry

            size = registry.get_spec(source.name).default_input_size
        h = w = size
    if h % 14 or w % 14:
        raise InputError(f"image size {h}×{w} is not a multiple of the patch size 14")
    return h, w
