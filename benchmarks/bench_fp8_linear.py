"""FP8 vs bf16 at VGGT shapes on the GPU: per layer, per producer+layer, and one whole block.

    python benchmarks/bench_fp8_linear.py [--frames 8 32] [--parts layers block] [--block-kinds frame]
                                          [--repeats 30] [--sweep-tiles] [--out DIR]

Layers (M = frames × 1374 tokens; qkv 1024→3072, proj 1024→1024, fc1 1024→4096, fc2 4096→1024):
bf16 ``F.linear`` · FP8 row-wise ``torch._scaled_mm`` alone (activation already FP8) · the same with
cuBLAS fast accumulation · FP8 including the standalone per-token quantiser (Triton) · FP8 including
eager PyTorch quantisation (the trap of performance.md §3.4) · the ``FP8Linear`` module · and, where
a producer exists, producer + GEMM: bf16 LayerNorm + GEMM vs LN→FP8 + FP8 GEMM (qkv, fc1), bf16 GELU +
GEMM vs GELU→FP8 + FP8 GEMM (fc2). Producer kernels alone are reported with their bandwidth.

Block (one VGGT aggregator block, dim 1024, 16 heads, qk-norm, RoPE, cuDNN SDPA): bf16 eager, bf16
compiled, fp8 unfused eager, fp8 fused eager, fp8 fused compiled; "frame" = [S, 1374, 1024],
"global" = [1, S·1374, 1024] with frame_len 1374.

Timing: CUDA events around each call, L2 flushed (256 MiB write) before each, warm-up first, median
of ``--repeats`` (≥ 20). ``gpu_ms``: a spin kernel is queued before the start event so the host has
enqueued all work first — pure GPU time, launch overhead hidden. The block part also reports
``host_ms`` (no pre-queue: includes launch gaps, what eager mode really costs). Results: JSON +
markdown via benchmarks/provenance.py in ``--out`` (default $OUT or benchmarks/results), written
after each part.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import markdown_table, write_result

TOKENS = 1374
LAYERS = {"qkv": (1024, 3072), "proj": (1024, 1024), "fc1": (1024, 4096), "fc2": (4096, 1024)}
PRODUCER = {"qkv": "layernorm", "fc1": "layernorm", "fc2": "gelu", "proj": None}
BF16 = torch.bfloat16


class Timer:
    """Median CUDA-event time of ``fn`` with the L2 flushed before every call."""

    def __init__(self, repeats: int, warmup: int = 5) -> None:
        self.repeats = max(20, repeats)
        self.warmup = warmup
        self.flush = torch.empty(256 * 2**20, dtype=torch.int8, device="cuda")

    def __call__(self, fn, queue: bool = True, step=None) -> float:
        for _ in range(self.warmup):
            if step:
                step()
            fn()
        torch.cuda.synchronize()
        events = []
        for _ in range(self.repeats):
            self.flush.zero_()
            if step:
                step()
            if queue:
                torch.cuda._sleep(3_000_000)  # ~2 ms of GPU spin: the host enqueues fn meanwhile
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            events.append((start, end))
            if not queue:
                torch.cuda.synchronize()
        torch.cuda.synchronize()
        return statistics.median(s.elapsed_time(e) for s, e in events)


def _tflops(M, K, N, ms):
    return 2 * M * K * N / (ms * 1e-3) / 1e12


def _gbps(nbytes, ms):
    return nbytes / (ms * 1e-3) / 1e9


# ---- per layer ------------------------------------------------------------------------------------


@torch.no_grad()
def bench_layers(frames: list[int], timer: Timer) -> tuple[list[dict], list[dict]]:
    from lite3r.kernels.fp8_quantize import fp8_quantize
    from lite3r.kernels.gelu_fp8 import gelu_fp8
    from lite3r.kernels.layernorm_fp8 import layernorm_fp8
    from lite3r.quant import FP8Linear, quantize_rowwise

    rows, producers = [], []
    for S in frames:
        M = S * TOKENS
        for name, (K, N) in LAYERS.items():
            torch.manual_seed(0)
            x = torch.randn(M, K, device="cuda", dtype=BF16)
            lin = torch.nn.Linear(K, N, device="cuda", dtype=BF16)
            w, b = lin.weight, lin.bias
            fp8 = FP8Linear.from_linear(lin)
            wq_t, sw, b8 = fp8.weight_fp8.t(), fp8.weight_scale, fp8.bias
            qx, sx = fp8_quantize(x)

            def gemm(q, s, fast=False, wq_t=wq_t, sw=sw, b8=b8):
                return torch._scaled_mm(
                    q, wq_t, scale_a=s, scale_b=sw, bias=b8, out_dtype=BF16, use_fast_accum=fast
                )

            def eager_quant(x=x):
                q, s = quantize_rowwise(x)
                return q, s

            t = {
                "bf16": timer(lambda x=x, w=w, b=b: F.linear(x, w, b)),
                "fp8_gemm": timer(lambda qx=qx, sx=sx, gemm=gemm: gemm(qx, sx)),
                "fp8_gemm_fast_accum": timer(lambda qx=qx, sx=sx, gemm=gemm: gemm(qx, sx, True)),
                "fp8_quant_gemm": timer(lambda x=x, gemm=gemm: gemm(*fp8_quantize(x))),
                "fp8_eager_quant_gemm": timer(lambda gemm=gemm, eq=eager_quant: gemm(*eq())),
                "fp8_module": timer(lambda x=x, fp8=fp8: fp8(x)),
            }
            row = {"frames": S, "layer": name, "M": M, "K": K, "N": N}
            row.update({f"{k}_ms": v for k, v in t.items()})
            row["bf16_TFLOPs"] = _tflops(M, K, N, t["bf16"])
            for k in (
                "fp8_gemm",
                "fp8_gemm_fast_accum",
                "fp8_quant_gemm",
                "fp8_eager_quant_gemm",
                "fp8_module",
            ):
                row[f"x_{k}"] = t["bf16"] / t[k]

            prod = PRODUCER[name]
            if prod is not None:
                if prod == "layernorm":
                    r = torch.randn(M, K, device="cuda", dtype=BF16) * 2
                    lw = torch.rand(K, device="cuda", dtype=BF16) + 0.5
                    lb = torch.randn(K, device="cuda", dtype=BF16) * 0.1
                    p_bf16 = lambda r=r, lw=lw, lb=lb, K=K: F.layer_norm(r, (K,), lw, lb, 1e-5)
                    p_fp8 = lambda r=r, lw=lw, lb=lb: layernorm_fp8(r, lw, lb, 1e-5)
                else:
                    r = torch.randn(M, K, device="cuda", dtype=BF16)
                    p_bf16 = lambda r=r: F.gelu(r)
                    p_fp8 = lambda r=r: gelu_fp8(r)
                tp = {
                    "bf16_producer": timer(p_bf16),
                    "fp8_producer": timer(p_fp8),
                    "bf16_producer_gemm": timer(lambda p=p_bf16, w=w, b=b: F.linear(p(), w, b)),
                    "fp8_producer_gemm": timer(lambda p=p_fp8, gemm=gemm: gemm(*p())),
                    "fp8_producer_gemm_fast_accum": timer(lambda p=p_fp8, gemm=gemm: gemm(*p(), True)),
                    "quant_only": timer(lambda r=r: fp8_quantize(r)),
                }
                row["producer"] = prod
                row.update({f"{k}_ms": v for k, v in tp.items()})
                row["x_fused_vs_bf16"] = tp["bf16_producer_gemm"] / tp["fp8_producer_gemm"]
                row["x_fused_fast_accum_vs_bf16"] = (
                    tp["bf16_producer_gemm"] / tp["fp8_producer_gemm_fast_accum"]
                )
                io_bf16 = M * K * 2 * 2  # read bf16 + write bf16
                io_fp8 = M * K * (2 + 1) + M * 4  # read bf16 + write fp8 + scales
                producers.append(
                    {
                        "frames": S,
                        "producer": prod,
                        "M": M,
                        "K": K,
                        "bf16_ms": tp["bf16_producer"],
                        "bf16_GBps": _gbps(io_bf16, tp["bf16_producer"]),
                        "fp8_fused_ms": tp["fp8_producer"],
                        "fp8_fused_GBps": _gbps(io_fp8, tp["fp8_producer"]),
                        "quant_only_ms": tp["quant_only"],
                        "quant_only_GBps": _gbps(io_fp8, tp["quant_only"]),
                    }
                )
            else:
                row["producer"] = "none (standalone quantiser)"
            print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
            rows.append(row)
            del x, lin, fp8, qx, sx
            torch.cuda.empty_cache()
    return rows, producers


def layers_table(rows: list[dict], producers: list[dict]) -> str:
    main = [
        {
            "frames": r["frames"],
            "layer": r["layer"],
            "bf16 ms": r["bf16_ms"],
            "bf16 TF/s": r["bf16_TFLOPs"],
            "fp8 gemm": f"{r['fp8_gemm_ms']:.3f} ({r['x_fp8_gemm']:.2f}×)",
            "fp8 gemm fast-acc": f"{r['fp8_gemm_fast_accum_ms']:.3f} ({r['x_fp8_gemm_fast_accum']:.2f}×)",
            "+ Triton quant": f"{r['fp8_quant_gemm_ms']:.3f} ({r['x_fp8_quant_gemm']:.2f}×)",
            "+ eager quant": f"{r['fp8_eager_quant_gemm_ms']:.3f} ({r['x_fp8_eager_quant_gemm']:.2f}×)",
            "FP8Linear": f"{r['fp8_module_ms']:.3f} ({r['x_fp8_module']:.2f}×)",
        }
        for r in rows
    ]
    fused = [
        {
            "frames": r["frames"],
            "layer": r["layer"],
            "producer": r["producer"],
            "bf16 producer+GEMM ms": r["bf16_producer_gemm_ms"],
            "FP8 fused producer+GEMM ms": r["fp8_producer_gemm_ms"],
            "speed-up": r["x_fused_vs_bf16"],
            "… fast-acc ms": r["fp8_producer_gemm_fast_accum_ms"],
            "speed-up fast-acc": r["x_fused_fast_accum_vs_bf16"],
        }
        for r in rows
        if "x_fused_vs_bf16" in r
    ]
    return (
        "### Per layer (GPU ms; speed-up vs bf16 F.linear)\n\n"
        + markdown_table(main)
        + "\n### Producer + GEMM (LN→qkv/fc1, GELU→fc2)\n\n"
        + markdown_table(fused)
        + "\n### Producer kernels alone\n\n"
        + markdown_table(producers)
    )


# ---- whole block ----------------------------------------------------------------------------------


def _vggt_block():
    from lite3r.attention.dense import set_sdpa_backend
    from lite3r.models.layers.block import Block
    from lite3r.models.layers.rope import RotaryPositionEmbedding2D

    torch.manual_seed(0)
    blk = Block(
        1024,
        16,
        qk_norm=True,
        norm_eps=1e-5,
        qk_norm_eps=1e-5,
        layer_scale_init=0.01,
        rope=RotaryPositionEmbedding2D(100.0),
    )
    with torch.no_grad():
        for p in blk.parameters():
            if p.dim() == 2:
                torch.nn.init.trunc_normal_(p, std=0.02)
    set_sdpa_backend(blk, "cudnn")
    return blk.to("cuda", BF16).eval().requires_grad_(False)


def _block_inputs(kind: str, S: int):
    from lite3r.models.layers.rope import RotaryPositionEmbedding2D, patch_positions

    torch.manual_seed(1)
    pos = patch_positions(S, 37, 37, num_special=5, device="cuda")
    if kind == "frame":
        x = torch.randn(S, TOKENS, 1024, device="cuda", dtype=BF16)
        frame_len = None
    else:
        x = torch.randn(1, S * TOKENS, 1024, device="cuda", dtype=BF16)
        pos = pos.reshape(1, S * TOKENS, 2)
        frame_len = TOKENS
    tables = RotaryPositionEmbedding2D(100.0).tables(pos, 64)
    return x, tables, frame_len


@torch.no_grad()
def bench_block(frames: list[int], kinds: list[str], timer: Timer, compile_mode: str) -> list[dict]:
    from lite3r.quant import apply_fp8_inference, compile_trunk, mark_step

    torch._dynamo.config.cache_size_limit = 64
    base = _vggt_block()
    variants = {}
    variants["bf16 eager"] = base
    variants["bf16 compiled"] = copy.deepcopy(base)
    variants["fp8 unfused eager"] = copy.deepcopy(base)
    variants["fp8 fused eager"] = copy.deepcopy(base)
    apply_fp8_inference(variants["fp8 unfused eager"], fuse=False)
    apply_fp8_inference(variants["fp8 fused eager"])
    variants["fp8 fused compiled"] = copy.deepcopy(variants["fp8 fused eager"])
    compiled = {"bf16 compiled", "fp8 fused compiled"}
    for name in compiled:
        compile_trunk(torch.nn.ModuleList([variants[name]]), compile_mode, dynamic=False)
    step = mark_step if compile_mode == "reduce-overhead" else None

    rows = []
    for kind in kinds:
        for S in frames:
            x, tables, frame_len = _block_inputs(kind, S)
            ref = None
            for name, blk in variants.items():
                fn = lambda blk=blk, x=x, t=tables, fl=frame_len: blk(x, pos=t, frame_len=fl)
                t0 = time.perf_counter()
                if step:
                    step()
                out = fn().clone()  # first call: compiles for this shape
                torch.cuda.synchronize()
                first_s = time.perf_counter() - t0
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
                if step:
                    step()
                fn()
                torch.cuda.synchronize()
                peak = torch.cuda.max_memory_allocated() - before
                gpu_ms = timer(fn, queue=True, step=step)
                host_ms = timer(fn, queue=False, step=step)
                delta = out.float() - x.float()
                if ref is None:
                    ref = delta
                rel = ((delta - ref).norm() / ref.norm()).item()
                row = {
                    "kind": kind,
                    "frames": S,
                    "variant": name,
                    "gpu_ms": gpu_ms,
                    "host_ms": host_ms,
                    "x_vs_bf16_eager_gpu": None,
                    "peak_act_MiB": peak / 2**20,
                    "first_call_s": first_s,
                    "rel_err_vs_bf16": rel,
                }
                rows.append(row)
                print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
            base_ms = next(
                r["gpu_ms"]
                for r in rows
                if r["kind"] == kind and r["frames"] == S and r["variant"] == "bf16 eager"
            )
            for r in rows:
                if r["kind"] == kind and r["frames"] == S:
                    r["x_vs_bf16_eager_gpu"] = base_ms / r["gpu_ms"]
            del x, tables
            torch.cuda.empty_cache()
    return rows


# ---- tile sweep (tuning the producer kernels) -----------------------------------------------------


def _tile_launcher(kname, tensors, grid, bm, bk, nw):
    from lite3r.kernels import fp8_quantize, gelu_fp8, layernorm_fp8

    x, w, q, s, M, K = tensors
    common = dict(BLOCK_M=bm, BLOCK_K=bk, EMULATE_RNE=False, num_warps=nw)
    if kname == "quantize":
        return lambda: fp8_quantize._fp8_quantize_rowwise_kernel[grid](x, q, s, M, K, K, **common)
    if kname == "layernorm":
        return lambda: layernorm_fp8._layernorm_fp8_kernel[grid](
            x, w, w, q, s, M, K, K, 1e-5, HAS_WEIGHT=True, HAS_BIAS=True, **common
        )
    return lambda: gelu_fp8._gelu_fp8_kernel[grid](x, x, q, s, M, K, K, HAS_BIAS=False, **common)


@torch.no_grad()
def sweep_tiles(timer: Timer, S: int = 32) -> list[dict]:
    import triton

    from lite3r.kernels.fp8_common import row_tiling

    rows = []
    M = S * TOKENS
    for kname, K in (("quantize", 1024), ("quantize", 4096), ("layernorm", 1024), ("gelu", 4096)):
        x = torch.randn(M, K, device="cuda", dtype=BF16)
        w = torch.rand(K, device="cuda", dtype=BF16)
        q = torch.empty(M, K, device="cuda", dtype=torch.float8_e4m3fn)
        s = torch.empty(M, 1, device="cuda", dtype=torch.float32)
        bk = triton.next_power_of_2(K)
        default = row_tiling(K)
        for bm in (1, 2, 4, 8, 16, 32):
            for nw in (2, 4, 8, 16):
                if bm * bk > 65536 or bm * bk < 32 * nw:
                    continue
                grid = (triton.cdiv(M, bm),)
                fn = _tile_launcher(kname, (x, w, q, s, M, K), grid, bm, bk, nw)
                ms = timer(fn)
                rows.append(
                    {
                        "kernel": kname,
                        "K": K,
                        "BLOCK_M": bm,
                        "num_warps": nw,
                        "ms": ms,
                        "GBps": _gbps(M * K * 3 + M * 4, ms),
                        "default": (bm, bk, nw) == default,
                    }
                )
                print(rows[-1], flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--parts", nargs="+", default=["layers", "block"], choices=["layers", "block"])
    ap.add_argument("--block-kinds", nargs="+", default=["frame"], choices=["frame", "global"])
    ap.add_argument(
        "--compile-mode",
        default="default",
        choices=["default", "max-autotune-no-cudagraphs", "reduce-overhead"],
    )
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--sweep-tiles", action="store_true", help="also time producer-kernel tile configs")
    ap.add_argument("--out", default=None, help="output folder (default $OUT or benchmarks/results)")
    args = ap.parse_args()

    from lite3r.quant import precision_support

    ok, reason = precision_support("cuda")["fp8"]
    if not ok:
        print(f"fp8 not supported here: {reason}", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    out = Path(args.out or os.environ.get("OUT") or "benchmarks/results")
    out.mkdir(parents=True, exist_ok=True)
    timer = Timer(args.repeats)
    if "layers" in args.parts:
        rows, producers = bench_layers(args.frames, timer)
        table = layers_table(rows, producers)
        write_result(out / "fp8_linear.json", {"layers": rows, "producers": producers}, table)
        print(table, flush=True)
    if "block" in args.parts:
        rows = bench_block(args.frames, args.block_kinds, timer, args.compile_mode)
        table = f"### One VGGT block (compile mode {args.compile_mode}; cuDNN SDPA)\n\n" + markdown_table(
            rows
        )
        write_result(out / "fp8_block.json", rows, table)
        print(table, flush=True)
    if args.sweep_tiles:
        rows = sweep_tiles(timer)
        write_result(out / "fp8_tiles.json", rows, markdown_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
