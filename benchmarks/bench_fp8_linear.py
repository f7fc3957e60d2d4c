"""FP8 vs bf16 at VGGT shapes on the GPU: per layer (time and accumulation error), per producer, and
whole VGGT blocks (eager / compiled, frame / global attention).

    python benchmarks/bench_fp8_linear.py [--frames 8 32] [--parts layers block] [--block-kinds frame global]
                                          [--repeats 30] [--sweep-tiles] [--out DIR]

Layers (M = frames × 1374 tokens; qkv 1024→3072, proj 1024→1024, fc1 1024→4096, fc2 4096→1024):
bf16 ``F.linear`` · FP8 row-wise ``torch._scaled_mm`` alone (activation already FP8) · the same with
fast accumulation · FP8 including the standalone per-token quantiser (Triton) · FP8 including eager
PyTorch quantisation (the trap of performance.md §3.4) · the ``FP8Linear`` module · and, where a
producer exists, producer + GEMM: bf16 LayerNorm + GEMM vs LN→FP8 + FP8 GEMM (qkv, fc1), bf16 GELU +
GEMM vs GELU→FP8 + FP8 GEMM (fc2). fc1 is also timed without its bias (the bias could move into the
GELU→FP8 kernel, which is timed with and without it).

Accumulation error (per layer, 8192 rows of a layer-typical input: LayerNorm-like with outlier
channels for qkv/fc1, Gaussian for proj, GELU output for fc2): ‖y − y_ref‖ / ‖y_ref‖ where y_ref is
the float64 GEMM of the *dequantised* FP8 operands (+ bias), so it isolates the GEMM's accumulation
(and bf16 output rounding) from quantisation; ``quant_err`` is the float64 dequantised GEMM vs the
float64 unquantised one, the error FP8 itself costs. Fast accumulation is worth it where its
``acc_err_fast`` stays small next to ``quant_err``.

Producer kernels alone are reported with their bandwidth, plus a small tile/warp sweep of the
GELU→FP8 (K=4096) and LN→FP8 (K=1024) kernels at the largest frame count (``--sweep-tiles``: all
kernels, more configurations).

Block (one VGGT aggregator block, dim 1024, 16 heads, qk-norm, RoPE, cuDNN SDPA): bf16 eager, bf16
compiled, fp8 unfused eager, fp8 fused eager (normal and fast accumulation), fp8 fused compiled
(normal and fast accumulation); "frame" = [S, 1374, 1024], "global" = [1, S·1374, 1024] with
frame_len 1374. Compiled = ``lite3r.quant.compile_trunk`` (per block, ``--compile-mode``, dynamic
shapes as the engine uses them). ``err_vs_fp32``: relative error of the block's update (output −
input) against the same block in float32 (memory-efficient SDPA) on the same input.

Timing: CUDA events around each call, L2 flushed (256 MiB write) before each, warm-up first, median
of ``--repeats`` (≥ 20). ``gpu_ms``: a spin kernel is queued before the start event so the host has
enqueued all work first — pure GPU time, launch overhead hidden. The block part also reports
``host_ms`` (no pre-queue: includes launch gaps, what eager mode really costs). Results: JSON +
markdown via benchmarks/provenance.py in ``--out`` (default $OUT or benchmarks/results), written
after each part. About 4 minutes on an H100 with the defaults (most of it block compilation).
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

DEV = "cuda"
DIM, HEADS, GRID = 1024, 16, 37  # VGGT-1B aggregator blocks at 518×518: 37×37 patches
TOKENS = GRID * GRID + 5  # + camera token + 4 registers = 1374
LAYERS = {"qkv": (1024, 3072), "proj": (1024, 1024), "fc1": (1024, 4096), "fc2": (4096, 1024)}
PRODUCER = {"qkv": "layernorm", "fc1": "layernorm", "fc2": "gelu", "proj": None}
ERR_ROWS = 8192
BF16 = torch.bfloat16
T0 = time.perf_counter()


def _elapsed() -> str:
    return f"[{time.perf_counter() - T0:6.1f} s]"


class Timer:
    """Median CUDA-event time of ``fn`` with the L2 flushed before every call."""

    def __init__(self, repeats: int, warmup: int = 5) -> None:
        self.repeats = max(20, repeats)
        self.warmup = warmup
        self.flush = torch.empty(256 * 2**20, dtype=torch.int8, device=DEV)

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


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    a, ref = a.double(), ref.double()
    return ((a - ref).norm() / ref.norm()).item()


def _round(row: dict) -> dict:
    return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in row.items()}


# ---- per layer ------------------------------------------------------------------------------------


def layer_input(name: str, M: int, K: int, seed: int = 0) -> torch.Tensor:
    """A layer-typical bf16 input: LN output with outlier channels (qkv, fc1), Gaussian (proj), GELU (fc2)."""
    g = torch.Generator(device=DEV).manual_seed(seed)
    x = torch.randn(M, K, device=DEV, generator=g)
    if name in ("qkv", "fc1"):
        x[:, :4] *= 20  # "massive activation" channels survive LayerNorm's affine weights
    elif name == "fc2":
        x = F.gelu(x * 1.5)
    return x.to(BF16)


@torch.no_grad()
def accumulation_errors(name: str, K: int, N: int) -> dict:
    """GEMM error vs the float64 dequantised GEMM (normal / fast accumulation) and FP8's own error."""
    from lite3r.kernels.fp8_quantize import fp8_quantize
    from lite3r.quant import FP8Linear, QuantizedActivation

    torch.manual_seed(1)
    lin = torch.nn.Linear(K, N, device=DEV)
    torch.nn.init.trunc_normal_(lin.weight, std=0.02)
    torch.nn.init.normal_(lin.bias, std=0.02)
    lin = lin.to(BF16)
    x = layer_input(name, ERR_ROWS, K, seed=2)
    fp8 = FP8Linear.from_linear(lin)
    q, s = fp8_quantize(x)
    a = QuantizedActivation(q, s, x.shape)
    w_deq = fp8.weight_fp8.double() * fp8.weight_scale.double().t()
    b = fp8.bias.double()
    ref = torch.addmm(b, q.double() * s.double(), w_deq.t())
    exact = torch.addmm(lin.bias.double(), x.double(), lin.weight.double().t())
    out = {"acc_err": rel_err(fp8(a), ref)}
    fp8.use_fast_accum = True
    out["acc_err_fast"] = rel_err(fp8(a), ref)
    out["bf16_out_rounding"] = rel_err(ref.to(BF16), ref)  # the floor for a bf16-output GEMM
    out["quant_err"] = rel_err(ref, exact)
    out["bf16_err"] = rel_err(F.linear(x, lin.weight, lin.bias), exact)  # the bf16 GEMM's own error
    return out


@torch.no_grad()
def bench_layers(frames: list[int], timer: Timer) -> tuple[list[dict], list[dict]]:
    from lite3r.kernels.fp8_quantize import fp8_quantize
    from lite3r.kernels.gelu_fp8 import gelu_fp8
    from lite3r.kernels.layernorm_fp8 import layernorm_fp8
    from lite3r.quant import FP8Linear, quantize_rowwise

    errors = {name: accumulation_errors(name, K, N) for name, (K, N) in LAYERS.items()}
    print(_elapsed(), "accumulation errors:", {k: _round(v) for k, v in errors.items()}, flush=True)
    rows, producers = [], []
    for S in frames:
        M = S * TOKENS
        seen_producers = set()
        for name, (K, N) in LAYERS.items():
            torch.manual_seed(0)
            x = torch.randn(M, K, device=DEV, dtype=BF16)
            lin = torch.nn.Linear(K, N, device=DEV, dtype=BF16)
            w, b = lin.weight, lin.bias
            fp8 = FP8Linear.from_linear(lin)
            wq_t, sw, b8 = fp8.weight_fp8.t(), fp8.weight_scale, fp8.bias
            qx, sx = fp8_quantize(x)

            def gemm(q, s, fast=False, bias=True, wq_t=wq_t, sw=sw, b8=b8):
                return torch._scaled_mm(
                    q,
                    wq_t,
                    scale_a=s,
                    scale_b=sw,
                    bias=b8 if bias else None,
                    out_dtype=BF16,
                    use_fast_accum=fast,
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
            if name == "fc1":
                t["fp8_gemm_no_bias"] = timer(lambda qx=qx, sx=sx, gemm=gemm: gemm(qx, sx, bias=False))
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
            row.update(errors[name])

            prod = PRODUCER[name]
            if prod is not None:
                if prod == "layernorm":
                    r = torch.randn(M, K, device=DEV, dtype=BF16) * 2
                    lw = torch.rand(K, device=DEV, dtype=BF16) + 0.5
                    lb = torch.randn(K, device=DEV, dtype=BF16) * 0.1
                    p_bf16 = lambda r=r, lw=lw, lb=lb, K=K: F.layer_norm(r, (K,), lw, lb, 1e-5)
                    p_fp8 = lambda r=r, lw=lw, lb=lb: layernorm_fp8(r, lw, lb, 1e-5)
                else:
                    r = torch.randn(M, K, device=DEV, dtype=BF16)
                    hb = torch.randn(K, device=DEV, dtype=BF16) * 0.1
                    p_bf16 = lambda r=r: F.gelu(r)
                    p_fp8 = lambda r=r: gelu_fp8(r)
                    p_fp8_bias = lambda r=r, hb=hb: gelu_fp8(r, hb)
                tp = {
                    "bf16_producer_gemm": timer(lambda p=p_bf16, w=w, b=b: F.linear(p(), w, b)),
                    "fp8_producer_gemm": timer(lambda p=p_fp8, gemm=gemm: gemm(*p())),
                    "fp8_producer_gemm_fast_accum": timer(lambda p=p_fp8, gemm=gemm: gemm(*p(), True)),
                }
                row["producer"] = prod
                row.update({f"{k}_ms": v for k, v in tp.items()})
                row["x_fused_vs_bf16"] = tp["bf16_producer_gemm"] / tp["fp8_producer_gemm"]
                row["x_fused_fast_accum_vs_bf16"] = (
                    tp["bf16_producer_gemm"] / tp["fp8_producer_gemm_fast_accum"]
                )
                if prod not in seen_producers:  # qkv and fc1 share the LayerNorm shape: time it once
                    seen_producers.add(prod)
                    io_bf16 = M * K * 2 * 2  # read bf16 + write bf16
                    io_fp8 = M * K * (2 + 1) + M * 4  # read bf16 + write fp8 + scales
                    tk = {
                        "bf16": timer(p_bf16),
                        "fp8_fused": timer(p_fp8),
                        "quant_only": timer(lambda r=r: fp8_quantize(r)),
                    }
                    prow = {"frames": S, "producer": prod, "M": M, "K": K}
                    for k, ms in tk.items():
                        prow[f"{k}_ms"] = ms
                        prow[f"{k}_GBps"] = _gbps(io_bf16 if k == "bf16" else io_fp8, ms)
                    if prod == "gelu":
                        prow["fp8_fused_bias_ms"] = timer(p_fp8_bias)
                    prow["x_fused_vs_bf16"] = tk["bf16"] / tk["fp8_fused"]
                    producers.append(prow)
                    print(_elapsed(), _round(prow), flush=True)
            else:
                row["producer"] = "none (standalone quantiser)"
            print(_elapsed(), _round(row), flush=True)
            rows.append(row)
            del x, lin, fp8, qx, sx
            torch.cuda.empty_cache()
    return rows, producers


def layers_table(rows: list[dict], producers: list[dict], tiles: list[dict]) -> str:
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
    errs = [
        {
            "layer": r["layer"],
            "K": r["K"],
            "acc err (normal)": r["acc_err"],
            "acc err (fast-acc)": r["acc_err_fast"],
            "bf16 output rounding": r["bf16_out_rounding"],
            "FP8 quant err": r["quant_err"],
            "bf16 GEMM err": r["bf16_err"],
            "fast-acc err / quant err": r["acc_err_fast"] / r["quant_err"],
        }
        for r in rows
        if r["frames"] == rows[0]["frames"]
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
    bias = [
        {
            "frames": r["frames"],
            "fc1 gemm (bias in epilogue) ms": r["fp8_gemm_ms"],
            "fc1 gemm (no bias) ms": r["fp8_gemm_no_bias_ms"],
        }
        for r in rows
        if "fp8_gemm_no_bias_ms" in r
    ]
    for b, p in zip(bias, [p for p in producers if p["producer"] == "gelu"], strict=False):
        b["GELU→FP8 ms"] = p["fp8_fused_ms"]
        b["GELU→FP8 + bias ms"] = p["fp8_fused_bias_ms"]
    return (
        "### Per layer (GPU ms; speed-up vs bf16 F.linear)\n\n"
        + markdown_table(main)
        + f"\n### GEMM accumulation error ({ERR_ROWS} rows; relative Frobenius error)\n\n"
        "acc err: vs the float64 GEMM of the dequantised FP8 operands (accumulation + bf16 output "
        "rounding); FP8 quant err: float64 dequantised vs float64 unquantised GEMM; bf16 GEMM err: "
        "bf16 F.linear vs float64.\n\n"
        + markdown_table(errs)
        + "\n### Producer + GEMM (LN→qkv/fc1, GELU→fc2)\n\n"
        + markdown_table(fused)
        + "\n### Producer kernels alone (GB/s: bytes read + written)\n\n"
        + markdown_table(producers)
        + "\n### fc1 bias: in the GEMM epilogue or in GELU→FP8\n\n"
        + markdown_table(bias)
        + "\n### Producer tile sweep\n\n"
        + markdown_table(tiles)
    )


# ---- tile sweep (tuning the producer kernels) -----------------------------------------------------


def _tile_launcher(kname, tensors, grid, bm, bk, nw):
    from lite3r.kernels import fp8_quantize, gelu_fp8, layernorm_fp8

    x, w, q, s, M, K = tensors
    common = dict(BLOCK_M=bm, BLOCK_K=bk, EVEN_K=bk == K, EMULATE_RNE=False, num_warps=nw)
    if kname == "quantize":
        return lambda: fp8_quantize._fp8_quantize_rowwise_kernel[grid](x, q, s, M, K, K, **common)
    if kname == "layernorm":
        return lambda: layernorm_fp8._layernorm_fp8_kernel[grid](
            x, w, w, q, s, M, K, K, 1e-5, HAS_WEIGHT=True, HAS_BIAS=True, **common
        )
    return lambda: gelu_fp8._gelu_fp8_kernel[grid](x, x, q, s, M, K, K, HAS_BIAS=False, **common)


@torch.no_grad()
def sweep_tiles(timer: Timer, S: int, full: bool) -> list[dict]:
    import triton

    from lite3r.kernels.fp8_common import row_tiling

    dim, hidden = LAYERS["fc2"][1], LAYERS["fc2"][0]
    kernels = (("layernorm", dim), ("gelu", hidden))
    if full:
        kernels = (("quantize", dim), ("quantize", hidden), *kernels)
    block_ms = (1, 2, 4, 8, 16, 32) if full else (1, 2, 4, 8, 16)
    warps = (2, 4, 8, 16) if full else (4, 8, 16)
    rows = []
    M = S * TOKENS
    for kname, K in kernels:
        x = torch.randn(M, K, device=DEV, dtype=BF16)
        w = torch.rand(K, device=DEV, dtype=BF16)
        q = torch.empty(M, K, device=DEV, dtype=torch.float8_e4m3fn)
        s = torch.empty(M, 1, device=DEV, dtype=torch.float32)
        bk = triton.next_power_of_2(K)
        default = row_tiling(K)
        for bm in block_ms:
            for nw in warps:
                per_thread = bm * bk // (32 * nw)
                if bm * bk > 65536 or per_thread < 8 or (not full and not 16 <= per_thread <= 64):
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
                        "elems/thread": per_thread,
                        "ms": ms,
                        "GBps": _gbps(M * K * 3 + M * 4, ms),
                        "default": (bm, bk, nw) == default,
                    }
                )
                print(_elapsed(), rows[-1], flush=True)
        del x, q
        torch.cuda.empty_cache()
    return rows


# ---- whole block ----------------------------------------------------------------------------------


def _vggt_block():
    from lite3r.attention.dense import set_sdpa_backend
    from lite3r.models.layers.block import Block
    from lite3r.models.layers.rope import RotaryPositionEmbedding2D

    torch.manual_seed(0)
    blk = Block(
        DIM,
        HEADS,
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
        for (
            m
        ) in blk.modules():  # trained blocks have layer scales of very different sizes; 1 shows the update
            if hasattr(m, "gamma"):
                m.gamma.fill_(1.0)
    set_sdpa_backend(blk, "cudnn")
    return blk.to(DEV).eval().requires_grad_(False)


def _block_inputs(kind: str, S: int):
    from lite3r.models.layers.rope import RotaryPositionEmbedding2D, patch_positions

    torch.manual_seed(1)
    pos = patch_positions(S, GRID, GRID, num_special=5, device=DEV)
    if kind == "frame":
        x = torch.randn(S, TOKENS, DIM, device=DEV, dtype=BF16)
        frame_len = None
    else:
        x = torch.randn(1, S * TOKENS, DIM, device=DEV, dtype=BF16)
        pos = pos.reshape(1, S * TOKENS, 2)
        frame_len = TOKENS
    tables = RotaryPositionEmbedding2D(100.0).tables(pos, DIM // HEADS)
    return x, tables, frame_len


@torch.no_grad()
def bench_block(frames: list[int], kinds: list[str], timer: Timer, compile_mode: str) -> list[dict]:
    from lite3r.attention.dense import set_sdpa_backend
    from lite3r.quant import apply_fp8_inference, compile_trunk, mark_step

    for knob in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, knob):
            setattr(torch._dynamo.config, knob, 64)
    fp32 = _vggt_block()
    set_sdpa_backend(fp32, "efficient")  # cuDNN has no float32 kernel
    base = copy.deepcopy(fp32).to(BF16)
    set_sdpa_backend(base, "cudnn")
    variants = {"bf16 eager": base, "bf16 compiled": copy.deepcopy(base)}
    variants["fp8 unfused eager"] = copy.deepcopy(base)
    apply_fp8_inference(variants["fp8 unfused eager"], fuse=False)
    variants["fp8 fused eager"] = copy.deepcopy(base)
    apply_fp8_inference(variants["fp8 fused eager"])
    variants["fp8 fused eager fast-acc"] = copy.deepcopy(base)
    apply_fp8_inference(variants["fp8 fused eager fast-acc"], fast_accum=True)
    variants["fp8 fused compiled"] = copy.deepcopy(variants["fp8 fused eager"])
    variants["fp8 fused compiled fast-acc"] = copy.deepcopy(variants["fp8 fused eager fast-acc"])
    for name in variants:
        if "compiled" in name:
            compile_trunk(torch.nn.ModuleList([variants[name]]), compile_mode, dynamic=True)
    step = mark_step if compile_mode == "reduce-overhead" else None

    rows = []
    for kind in kinds:
        for S in frames:
            x, tables, frame_len = _block_inputs(kind, S)
            ref = fp32(x.float(), pos=tables, frame_len=frame_len) - x.float()
            torch.cuda.synchronize()
            for name, blk in variants.items():
                fn = lambda blk=blk, x=x, t=tables, fl=frame_len: blk(x, pos=t, frame_len=fl)
                t0 = time.perf_counter()
                if step:
                    step()
                out = fn().clone()  # first call: compiles for this shape (compiled variants)
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
                row = {
                    "kind": kind,
                    "frames": S,
                    "variant": name,
                    "gpu_ms": gpu_ms,
                    "host_ms": host_ms,
                    "x_vs_bf16_eager_gpu": None,
                    "x_vs_bf16_compiled_gpu": None,
                    "peak_act_MiB": peak / 2**20,
                    "first_call_s": first_s,
                    "err_vs_fp32": rel_err(out.float() - x.float(), ref),
                }
                rows.append(row)
                print(_elapsed(), _round(row), flush=True)
            here = [r for r in rows if r["kind"] == kind and r["frames"] == S]
            ms = {r["variant"]: r["gpu_ms"] for r in here}
            for r in here:
                r["x_vs_bf16_eager_gpu"] = ms["bf16 eager"] / r["gpu_ms"]
                r["x_vs_bf16_compiled_gpu"] = ms["bf16 compiled"] / r["gpu_ms"]
            del x, tables, ref
            torch.cuda.empty_cache()
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--parts", nargs="+", default=["layers", "block"], choices=["layers", "block"])
    ap.add_argument("--block-kinds", nargs="+", default=["frame", "global"], choices=["frame", "global"])
    ap.add_argument(
        "--compile-mode",
        default="default",
        choices=["default", "max-autotune-no-cudagraphs", "reduce-overhead"],
    )
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--sweep-tiles", action="store_true", help="the full producer tile sweep (all kernels)")
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
        tiles = sweep_tiles(timer, max(args.frames), full=args.sweep_tiles)
        table = layers_table(rows, producers, tiles)
        write_result(out / "fp8_linear.json", {"layers": rows, "producers": producers, "tiles": tiles}, table)
        print(table, flush=True)
    if "block" in args.parts:
        rows = bench_block(args.frames, args.block_kinds, timer, args.compile_mode)
        table = (
            f"### One VGGT block (compile mode {args.compile_mode}, dynamic shapes; cuDNN SDPA; "
            "err_vs_fp32 = relative error of the block update vs float32)\n\n" + markdown_table(rows)
        )
        write_result(out / "fp8_block.json", rows, table)
        print(table, flush=True)
    print(_elapsed(), "done", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
