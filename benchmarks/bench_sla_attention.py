"""Sparse-linear attention vs dense cuDNN SDPA at VGGT global-attention shapes (GPU).

    python benchmarks/bench_sla_attention.py [--frames 8 32 64 128] [--keeps 0.05 0.1 0.2]
        [--backward-frames 8 32 64] [--backward-breakdown] [--select-frames 1000] [--repeats 20]
        [--select-repeats 5]
        [--deadline-s 330] [--out DIR]

Shapes: B = 1, 16 heads × 64, 1,374 tokens per frame (5 special tokens each), bf16; q, k, v are the
strided views ``MultiHeadAttention.project_qkv`` produces (no copies); blocks 128 × 64; ELU+1
complement linear branch with the fused projection (the inference path).

Per frame count and kept fraction:
- ``dense_ms``: cuDNN SDPA forward; ``sla_ms``: the SLA module's ``attend`` (prepare + select + fused
  kernel, everything the module runs); ``speedup``;
- ``key_loads``: how the module reads the selected key blocks (``SLAConfig.key_loads``: "tma" on a
  Hopper-class GPU, as ``lite3r.convert`` chooses; ``sla_gather_ms`` is the module with "gather");
- ``kernel_ms`` / ``kernel_tflops``: the fused sparse-linear forward kernel alone as the module runs it
  (complement states summed per query block beforehand: ``SLAConfig.complement_states="summed"``; the
  TMA kernel on the H100), with FLOPs counted on the blocks it computes (4·BM·BN·D per selected block
  pair); variants of the gather kernel: ``kernel_gather`` (the same inputs), ``kernel_stored`` (the selected blocks' states read back in the loop), ``kernel_recomputed`` (the
  states recomputed from K/V in the loop), ``kernel_all`` (linear branch over all tokens: no per-block
  states) and ``sparse_only`` (no linear branch);
  ``outside_ms`` / ``outside_pct``: module time outside the kernel, split into ``prepare_ms`` (with the
  virtual K/V copies under TMA key loads; ``prepare_gather_ms`` without),
  ``select_ms`` (``select_dense_map_ms``: the same selection through a dense score map + torch.topk, for
  comparison) and ``sums_ms`` (the complement sums, one batched GEMM over the augmented state rows
  [S_j | z_j]; ``sums_split_ms``: the same from separate float32 z_j, gathered by the map kernel, as
  the module summed them before); ``sla_stored_ms`` /
  ``sla_recomputed_ms``, ``speedup_stored`` / ``speedup_recomputed`` / ``outside_recomputed_pct``: the
  module with the other ``complement_states``;
- the same module/kernel split without launch gaps: ``sla_pipelined_ms`` / ``outside_pipelined_pct``
  (20 back-to-back calls, one synchronisation: eager inside a model) and ``sla_graph_ms`` /
  ``outside_graph_pct`` / ``speedup_graph`` (CUDA-graph replays: the deployed Lite3R path), each
  against the kernel alone timed the same way (``kernel_graph_tflops``: its FLOPs over that device time);
  ``gpu_kernels_us``: device time per kernel of one
  module call (torch.profiler) and ``gpu_busy_ms`` their sum (``sla_ms`` minus it is idle GPU time),
  ``outside_profiled_pct``: the share of that device time outside the sparse kernel (one measurement,
  so no clock drift between module and kernel);
- ``speedup_interleaved`` (median of per-round ratios, ``speedup_interleaved_range`` min/max) with
  ``dense_interleaved_ms`` / ``sla_interleaved_ms``: dense SDPA and the module as CUDA graphs, timed in
  alternating blocks of back-to-back replays (~40 ms per block, six rounds), so both run at the same
  power and clock state (the H100 sits at its 700 W cap and its clock drifts by ~20 % over a run);
- with TMA key loads, the fused-qk path (``sla_attention_fused_qk``, the module's inference path when
  its qk-norm/RoPE runs as the Triton kernel): from the qkv projection's raw q/k, the qk kernel also
  pools the queries and writes k in virtual order. ``outside_fused_profiled_pct`` is its time outside
  the sparse kernel with the plain qk-norm/RoPE device time (``qk_plain_us``, which dense pays too)
  subtracted; ``outside_unfused_profiled_pct`` the same for plain qk + ``attend``; ``fused_saving_us``
  the device time it saves outside the sparse kernel; ``speedup_fused_interleaved`` dense (plain qk + SDPA) over it, interleaved;
- backward (``--backward-frames``): dense SDPA backward vs the SLA backward (autograd of the module,
  dQ + dK/dV kernels, inverse LUT), forward not included; ``--backward-breakdown`` adds the time of
  each piece of the backward op (complement sums, dQ kernel, inverse LUT, dK/dV kernel) with the
  kernels' TFLOP/s (``backward_parts``).
Block selection at ``--select-frames`` (default 1,000): time and peak extra device memory of pooling +
streamed selection (the LUT included), and of the linear-branch block states separately.

Timing: CUDA events, warm-up first (covers Triton compilation and autotuning), median of ``--repeats``
(≥ 20) runs; the 1,000-frame selection, whose headline is its memory, uses ``--select-repeats``.
Expected wall time on an H100 with the defaults: about 3–4 minutes, a minute or more of it compiling
(≈ 25 kernel compiles: 2–3 configs per variant) on a cold Triton cache. ``--deadline-s`` (from the start
of the script) is checked before every measured point: points that would start later are listed under
``skipped``, not measured. ``autotune`` records the config each kernel variant chose per work bucket.
Results: JSON + markdown via benchmarks/provenance.py in ``--out`` (default $OUT or
benchmarks/results), rewritten after every point so a time-out keeps what was measured.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import markdown_table, write_result

from lite3r.attention.sla import SLAConfig, SparseLinearAttention
from lite3r.convert import Lite3RConfig, default_key_loads
from lite3r.kernels import (
    sla_backward_dkdv,
    sla_backward_dq,
    sla_forward,
    sla_linear_domain,
    sla_ops,
)

TOKENS, SPECIAL, HEADS, HEAD_DIM = 1374, 5, 16, 64
BLOCK_Q, BLOCK_K = 128, 64
DEVICE, DTYPE = "cuda", torch.bfloat16
TARGETS = {
    "outside_pct_at_32_frames_max": 15.0,
    "speedup_at_64_frames_10pct_min": 8.0,
    "kernel_tflops_min": 380.0,
    "backward_speedup_at_64_frames_10pct_min": 5.0,
    "select_extra_gb_at_1000_frames_max": 2.0,
}


class Budget:
    """Wall-clock deadline from the start of the script; points that would start after it are skipped."""

    def __init__(self, deadline_s: float) -> None:
        self.start = time.perf_counter()
        self.deadline_s = deadline_s
        self.skipped: list[str] = []

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def allows(self, point: str) -> bool:
        if self.elapsed() < self.deadline_s:
            return True
        self.skipped.append(point)
        print(f"[{self.elapsed():.0f} s] skipped (deadline): {point}", flush=True)
        return False


def median_ms(fn, repeats: int, warmup: int = 3, before=None, min_repeats: int = 20) -> float:
    """Median CUDA-event time of ``fn()``; ``before()`` runs untimed ahead of every call."""
    for _ in range(warmup):
        if before:
            before()
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(max(min_repeats, repeats)):
        if before:
            before()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def pipelined_ms(fn, calls: int = 20, warmup: int = 3) -> float:
    """Mean time per call of ``calls`` back-to-back calls (one synchronisation at the end): the CPU
    runs ahead as it does inside a model, so launch and dispatch gaps are hidden behind the GPU work."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(calls):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / calls


def capture_graph(fn) -> torch.cuda.CUDAGraph:
    """``fn`` captured in a CUDA graph, after three warm-up calls on a side stream (compilation and
    autotuning stay outside the capture)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


def graph_ms(fn, repeats: int) -> float:
    """Median replay time of ``fn`` captured in a CUDA graph (how the deployed model runs it)."""
    graph = capture_graph(fn)
    ms = median_ms(graph.replay, repeats)
    del graph
    return ms


def interleaved_ms(fn_a, fn_b, calls_a: int, calls_b: int, rounds: int = 6) -> tuple[list, list]:
    """Per-call times of ``fn_a`` and ``fn_b`` measured in alternating blocks of CUDA-graph replays
    issued back to back (``calls_a`` / ``calls_b`` per block; the first of each pair alternates), so
    both see the same power and clock state: the H100 caps at 700 W and its SM clock drifts between
    ~1.98 and ~1.53 GHz over a run (benchmarks/results/sla/sla_timing_probe_a9112a2), which moves
    separately timed numbers by ±5 %."""
    graphs = [capture_graph(fn_a), capture_graph(fn_b)]
    times: list[list[float]] = [[], []]
    for r in range(rounds):
        order = (0, 1) if r % 2 == 0 else (1, 0)
        for which in order:
            calls = (calls_a, calls_b)[which]
            graphs[which].replay()  # the block starts from a running GPU
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(calls):
                graphs[which].replay()
            end.record()
            end.synchronize()
            times[which].append(start.elapsed_time(end) / calls)
    del graphs
    return times[0], times[1]


def gpu_kernel_us(fn, calls: int = 5) -> dict:
    """Device time per call of every kernel ``fn`` launches, in µs (torch.profiler), largest first."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    totals: dict[str, float] = {}
    for e in prof.events():
        if e.device_type != torch.autograd.DeviceType.CUDA:
            continue
        us = getattr(e, "device_time", None)
        if us is None:
            us = e.cuda_time
        name = e.name if len(e.name) <= 80 else e.name[:77] + "..."
        totals[name] = totals.get(name, 0.0) + us / calls
    return {k: round(v, 1) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}


def qkv_views(frames: int, requires_grad: bool = False):
    """q, k, v [1, H, N, D] as strided views of one [1, N, 3, H, D] tensor, like the model's."""
    n = frames * TOKENS
    qkv = torch.randn(1, n, 3, HEADS, HEAD_DIM, device=DEVICE, dtype=DTYPE, requires_grad=requires_grad)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    return qkv, q, k, v


def sla_module(
    keep: float,
    linear: str = "complement",
    complement_states: str = "summed",
    special: int = SPECIAL,
    key_loads: str | None = None,
) -> SparseLinearAttention:
    """The module as the product builds it (``key_loads`` None: lite3r.convert's choice for this GPU)."""
    if key_loads is None:
        product = Lite3RConfig(linear=linear, complement_states=complement_states)
        key_loads = default_key_loads(product, "triton", torch.device(DEVICE))
    cfg = SLAConfig(
        keep_ratio=keep, block_q=BLOCK_Q, block_k=BLOCK_K, linear=linear, backend="triton",
        complement_states=complement_states, key_loads=key_loads,
    )  # fmt: skip
    m = SparseLinearAttention(HEADS * HEAD_DIM, HEADS, config=cfg, special_tokens_per_frame=special)
    m = m.to(DEVICE).eval()
    with torch.no_grad():
        if m.proj_lin is not None:
            m.proj_lin.weight.normal_(0, 0.02)
    return m


def dense_attention(q, k, v):
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        return F.scaled_dot_product_attention(q, k, v)


def _dense_map_select(pq, pk, km, geom):
    scores = pq @ (pk - km[:, :, None]).transpose(-1, -2)
    scores[..., : geom.n_forced] = float("inf")
    return scores.topk(geom.topk, dim=-1).indices.sort(-1).values.to(torch.int16)


def _forward_one(frames: int, keep: float, q, k, v, dense_ms: float, repeats: int) -> dict:
    n = frames * TOKENS
    m = sla_module(keep)
    geom = m.geometry(n, TOKENS)
    g = sla_ops.geom_to_list(geom)
    eps, scale, w = m.config.eps, m.scale, m.proj_lin.weight
    none = q.new_empty(0, dtype=torch.float32)
    tma = m.config.key_loads == "tma"
    row = {"key_loads": m.config.key_loads}
    with torch.no_grad():
        row["sla_ms"] = median_ms(partial(m.attend, q, k, v, frame_len=TOKENS), repeats)
        m_ga = sla_module(keep, key_loads="gather")
        row["sla_gather_ms"] = median_ms(partial(m_ga.attend, q, k, v, frame_len=TOKENS), repeats)
        m_st = sla_module(keep, complement_states="stored")
        row["sla_stored_ms"] = median_ms(partial(m_st.attend, q, k, v, frame_len=TOKENS), repeats)
        m_re = sla_module(keep, complement_states="recomputed")
        row["sla_recomputed_ms"] = median_ms(partial(m_re.attend, q, k, v, frame_len=TOKENS), repeats)
        prepare = partial(sla_ops.sla_prepare_op, q, k, v, g, "elu", "complement", True)
        pq, pk, km, sb, zb, st, zt, *_ = prepare()
        # as the module runs it ("summed" complement states: no running totals; the virtual K/V copies
        # with TMA key loads), without the copies, and with the totals
        # (the states as augmented rows [S_j | z_j]: the module's "summed" path)
        lean = partial(sla_ops.sla_prepare_op, q, k, v, g, "elu", "complement", True, False)
        lean_out = lean(tma, True)
        kv_virt, s_aug = lean_out[7:], lean_out[3]
        row["prepare_ms"] = median_ms(partial(lean, tma, True), repeats)
        row["prepare_gather_ms"] = median_ms(partial(lean, False, True), repeats)
        row["prepare_totals_ms"] = median_ms(prepare, repeats)
        row["prepare_no_states_ms"] = median_ms(
            partial(sla_ops.sla_prepare_op, q, k, v, g, "elu", "complement", False), repeats
        )
        select = partial(sla_ops.sla_block_select_op, pq, pk, km, g)
        lut = select()
        row["select_ms"] = median_ms(select, repeats)  # the module's selection (SLAConfig.select)
        row["select_streamed_ms"] = median_ms(
            partial(sla_ops.sla_block_select_op, pq, pk, km, g, "streamed"), repeats
        )
        # For comparison only: a dense block-score map + torch.topk (what the streamed kernel avoids).
        row["select_dense_map_ms"] = median_ms(partial(_dense_map_select, pq, pk, km, geom), repeats)
        sums = partial(sla_linear_domain.complement_sums_augmented, lut, s_aug, geom.n_kblocks)
        s_q, z_q = sums(), none  # augmented: s_q holds both
        row["sums_ms"] = median_ms(sums, repeats)  # the complement sums of the "summed" states
        row["sums_split_ms"] = median_ms(  # the same sums from separate float32 z_j (map kernel gathers)
            partial(sla_linear_domain.complement_sums, lut, sb, zb, geom.n_kblocks, transpose=False), repeats
        )
        fwd = partial(sla_ops.sla_forward_op, q, k, v, lut)
        if tma:  # the kernel the module runs, alone
            kernel = partial(
                sla_ops.sla_forward_tma_op, q, *kv_virt, lut, s_q, z_q, w, g, "elu", "complement", eps, scale
            )
        else:
            kernel = partial(
                fwd, none, none, s_q, z_q, w, g, "elu", "complement", eps, scale, True, False, True
            )
        row["kernel_ms"] = median_ms(kernel, repeats)
        variants = {  # the fused gather kernel alone, per linear-branch variant
            "kernel_gather": (none, none, s_q, z_q, w, "complement", False, True),
            "kernel_stored": (sb, zb, st, zt, w, "complement", False, False),
            "kernel_recomputed": (none, none, st, zt, w, "complement", True, False),
            "kernel_all": (none, none, st, zt, w, "all", False, False),
            "sparse_only": (none, none, none, none, None, "none", False, False),
        }
        for name, (s_b, z_b, s_t, z_t, wt, lin, recompute, summed) in variants.items():
            call = partial(fwd, s_b, z_b, s_t, z_t, wt, g, "elu", lin, eps, scale, True, recompute, summed)
            row[f"{name}_ms"] = median_ms(call, repeats)
    flops = 4 * HEADS * geom.n_qblocks * geom.topk * geom.block_q * geom.block_k * HEAD_DIM
    for name in ("kernel", *variants):
        row[f"{name}_tflops"] = flops / row[f"{name}_ms"] / 1e9
    row["outside_ms"] = row["sla_ms"] - row["kernel_ms"]
    row["outside_pct"] = 100.0 * row["outside_ms"] / row["sla_ms"]
    with torch.no_grad():
        # The same split without the launch/dispatch gaps of a single synchronised call: back-to-back
        # calls (eager inside a model) and CUDA-graph replays (the deployed Lite3R path), each against
        # the kernel alone timed the same way; plus the device time of every kernel of one module call.
        module = partial(m.attend, q, k, v, frame_len=TOKENS)
        row["sla_pipelined_ms"] = pipelined_ms(module)
        row["kernel_pipelined_ms"] = pipelined_ms(kernel)
        row["outside_pipelined_pct"] = 100.0 * (1 - row["kernel_pipelined_ms"] / row["sla_pipelined_ms"])
        try:
            row["sla_graph_ms"] = graph_ms(module, repeats)
            row["kernel_graph_ms"] = graph_ms(kernel, repeats)
            row["outside_graph_pct"] = 100.0 * (1 - row["kernel_graph_ms"] / row["sla_graph_ms"])
            row["speedup_graph"] = dense_ms / row["sla_graph_ms"]
            # the kernel's device time alone (a single synchronised call also counts its launch latency)
            row["kernel_graph_tflops"] = flops / row["kernel_graph_ms"] / 1e9
        except RuntimeError as e:  # recorded, never hidden: the graph columns stay empty
            row["graph_error"] = f"{type(e).__name__}: {str(e)[:300]}"
        row["gpu_kernels_us"] = gpu_kernel_us(module)
        row["gpu_busy_ms"] = sum(row["gpu_kernels_us"].values()) / 1000.0
        # the sparse kernel's share of the module's own device time (same calls, same clocks)
        fwd_us = sum(us for name, us in row["gpu_kernels_us"].items() if name.startswith("_sla_forward"))
        row["outside_profiled_pct"] = 100.0 * (1 - fwd_us / 1000.0 / row["gpu_busy_ms"])
        # dense SDPA and the module timed in alternating blocks of back-to-back graph replays
        dense = partial(dense_attention, q, k, v)
        calls_dense = max(2, round(40.0 / dense_ms))
        calls_sla = max(10, round(40.0 / row["sla_graph_ms"])) if "sla_graph_ms" in row else 10
        try:
            d_t, s_t = interleaved_ms(dense, module, calls_dense, calls_sla)
            row["dense_interleaved_ms"] = statistics.median(d_t)
            row["sla_interleaved_ms"] = statistics.median(s_t)
            ratios = [a / b for a, b in zip(d_t, s_t)]  # per round: same power state on both sides
            row["speedup_interleaved"] = statistics.median(ratios)
            row["speedup_interleaved_range"] = [min(ratios), max(ratios)]
        except RuntimeError as e:  # recorded, never hidden
            row["interleaved_error"] = f"{type(e).__name__}: {str(e)[:300]}"
    row["outside_recomputed_pct"] = 100.0 * (1 - row["kernel_recomputed_ms"] / row["sla_recomputed_ms"])
    if tma:
        row.update(_fused_qk_columns(frames, m, geom, repeats))
    return {
        "frames": frames,
        "tokens": n,
        "keep": keep,
        "kept_blocks": f"{geom.topk}/{geom.n_kblocks}",
        "dense_ms": dense_ms,
        "dense_tflops": 4 * HEADS * n * n * HEAD_DIM / dense_ms / 1e9,
        "speedup": dense_ms / row["sla_ms"],
        "speedup_recomputed": dense_ms / row["sla_recomputed_ms"],
        "speedup_stored": dense_ms / row["sla_stored_ms"],
        **row,
    }


def _fused_qk_columns(frames: int, m: SparseLinearAttention, geom, repeats: int) -> dict:
    """The fused-qk path (``sla_attention_fused_qk``: the qk-norm/RoPE kernel also pools the queries and
    writes k in virtual key order, so prepare reads neither) against qk-norm/RoPE + the module's
    ``attend``, both from the qkv projection's raw q/k (LayerNorm with unit weight, VGGT's 2-D RoPE).

    The qk-norm/RoPE that every path runs (dense too) is not the module's: ``outside_fused_profiled_pct``
    is the share of the fused path's device time outside the sparse kernel *after subtracting the plain
    qk-norm/RoPE kernels' device time* (``qk_plain_us``), so any extra cost of pooling and the virtual
    layout counts as outside time. ``fused_saving_us``: device time outside the sparse kernel of plain
    qk + attend minus the fused path's (the runs up to 3330f6c recorded the whole-call difference);
    ``speedup_fused_interleaved``: dense (plain qk + cuDNN SDPA) over the fused path, both as CUDA
    graphs in alternating blocks."""
    from lite3r.kernels.qk_norm_rope import qk_norm_rope
    from lite3r.models.layers.rope import RotaryPositionEmbedding2D, patch_positions

    n = frames * TOKENS
    qkv = torch.randn(1, n, 3, HEADS, HEAD_DIM, device=DEVICE, dtype=DTYPE) * 2 + 0.3
    q_raw, k_raw, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    side = round((TOKENS - SPECIAL) ** 0.5)
    pos = patch_positions(1, side, side, SPECIAL).repeat(1, frames, 1).to(DEVICE)
    t = RotaryPositionEmbedding2D().tables(pos, HEAD_DIM)
    norm = (torch.ones(HEAD_DIM, device=DEVICE), torch.zeros(HEAD_DIM, device=DEVICE), 1e-6)
    tables = (t.cos, t.sin)
    cfg = m.config
    plain_qk = partial(qk_norm_rope, q_raw, k_raw, norm, norm, tables, DTYPE)
    fused = partial(
        sla_ops.sla_attention_fused_qk, q_raw, k_raw, v, norm, norm, tables, m.proj_lin.weight, geom,
        feature=cfg.feature_map, linear=cfg.linear, eps=cfg.eps, scale=m.scale, select=cfg.select,
    )  # fmt: skip

    def unfused():
        q, k = plain_qk()
        return m.attend(q, k, v, frame_len=TOKENS)

    def dense():
        q, k = plain_qk()
        return dense_attention(q, k, v)

    row = {}
    with torch.no_grad():
        a, b = fused().float(), unfused().float()
        row["fused_vs_unfused_rel_err"] = ((a - b).norm() / b.norm()).item()
        del a, b
        qk_us = sum(gpu_kernel_us(plain_qk).values())
        row["unfused_kernels_us"] = gpu_kernel_us(unfused)
        row["fused_kernels_us"] = gpu_kernel_us(fused)
        qk_us = (qk_us + sum(gpu_kernel_us(plain_qk).values())) / 2  # before and after: clock drift
        row["qk_plain_us"] = round(qk_us, 1)
        busy = {k: sum(row[f"{k}_kernels_us"].values()) for k in ("fused", "unfused")}
        outside = {}
        for k in ("fused", "unfused"):
            fwd_us = sum(us for name, us in row[f"{k}_kernels_us"].items() if name.startswith("_sla_forward"))
            outside[k] = busy[k] - fwd_us
            row[f"outside_{k}_profiled_pct"] = 100.0 * (outside[k] - qk_us) / (busy[k] - qk_us)
        # the sparse kernel left out: its clock drift between the two profiles is larger than the saving
        row["fused_saving_us"] = round(outside["unfused"] - outside["fused"], 1)
        try:
            row["fused_graph_ms"] = graph_ms(fused, repeats)
            row["unfused_graph_ms"] = graph_ms(unfused, repeats)
            d_t, f_t = interleaved_ms(dense, fused, 2, max(10, round(40.0 / row["fused_graph_ms"])))
            ratios = [x / y for x, y in zip(d_t, f_t)]
            row["dense_with_qk_interleaved_ms"] = statistics.median(d_t)
            row["fused_interleaved_ms"] = statistics.median(f_t)
            row["speedup_fused_interleaved"] = statistics.median(ratios)
            row["speedup_fused_interleaved_range"] = [min(ratios), max(ratios)]
        except RuntimeError as e:  # recorded, never hidden
            row["fused_graph_error"] = f"{type(e).__name__}: {str(e)[:300]}"
    return row


def _show(row: dict, budget: Budget) -> None:
    shown = {key: (round(x, 3) if isinstance(x, float) else x) for key, x in row.items()}
    print(f"[{budget.elapsed():.0f} s]", shown, flush=True)


def forward_rows(rows, frames_list, keeps, repeats, budget: Budget, save):
    for frames in frames_list:
        if not budget.allows(f"forward {frames} frames"):
            continue
        _, q, k, v = qkv_views(frames)
        with torch.no_grad():
            dense_ms = median_ms(partial(dense_attention, q, k, v), repeats)
        for keep in keeps:
            if not budget.allows(f"forward {frames} frames keep {keep}"):
                continue
            rows.append(_forward_one(frames, keep, q, k, v, dense_ms, repeats))
            _show(rows[-1], budget)
            save()
        del q, k, v
        torch.cuda.empty_cache()


class _Backward:
    """Untimed forward (``prepare``), then the timed backward (``__call__``) of one attention call."""

    def __init__(self, qkv, q, k, v, attend, params=()) -> None:
        self.qkv, self.q, self.k, self.v, self.attend, self.params = qkv, q, k, v, attend, params
        self.grad = torch.randn_like(q)
        self.out = None

    def prepare(self) -> None:
        self.qkv.grad = None
        for p in self.params:
            p.grad = None
        self.out = self.attend(self.q, self.k, self.v)

    def __call__(self) -> None:
        self.out.backward(self.grad)


def backward_rows(rows, frames_list, keeps, repeats, budget: Budget, save):
    for frames in frames_list:
        if not budget.allows(f"backward {frames} frames"):
            continue
        qkv, q, k, v = qkv_views(frames, requires_grad=True)
        dense = _Backward(qkv, q, k, v, dense_attention)
        dense_ms = median_ms(dense, repeats, before=dense.prepare)
        for keep in keeps:
            if not budget.allows(f"backward {frames} frames keep {keep}"):
                continue
            m = sla_module(keep)
            m.proj_lin.weight.requires_grad_(True)
            sla = _Backward(qkv, q, k, v, partial(m.attend, frame_len=TOKENS), (m.proj_lin.weight,))
            sla_ms = median_ms(sla, repeats, before=sla.prepare)
            rows.append(
                {"frames": frames, "keep": keep, "dense_bwd_ms": dense_ms, "sla_bwd_ms": sla_ms,
                 "bwd_speedup": dense_ms / sla_ms}
            )  # fmt: skip
            _show(rows[-1], budget)
            save()
        del qkv, q, k, v, dense
        torch.cuda.empty_cache()


def _backward_parts(frames: int, keep: float, q, k, v, repeats: int) -> dict:
    """Per-piece times of ``sla_backward_op`` (complement linear branch, stored states), inputs from one
    untimed forward: the complement sums for dQ (``domain_q_ms``) and for dK/dV (``domain_k_ms``), the
    dQ kernel, the inverse LUT and the dK/dV kernel (its launcher builds the inverse LUT: ``dkdv_ms``
    excludes it), and the whole op; TFLOP/s over the MMAs each kernel runs per selected block pair
    (dQ 3, dK/dV 4 of 2·BM·BN·D)."""
    n = frames * TOKENS
    m = sla_module(keep)
    geom = m.geometry(n, TOKENS)
    g = sla_ops.geom_to_list(geom)
    eps, scale = m.config.eps, m.scale
    code = sla_ops.effective_linear_code("complement", geom)
    with torch.no_grad():
        q, k, v = q.detach(), k.detach(), v.detach()
        pq, pk, km, sb, zb, st, zt, *_ = sla_ops.sla_prepare_op(q, k, v, g, "elu", "complement", True)
        lut = sla_ops.sla_block_select_op(pq, pk, km, g)
        o_s, o_l, lse = sla_ops.sla_forward_op(
            q, k, v, lut, sb, zb, st, zt, None, g, "elu", "complement", eps, scale, False
        )
        do, do_l = torch.randn_like(o_s), torch.randn_like(o_l)
        dq, dk, dv = (torch.empty_like(o_s) for _ in range(3))
        domain_q = partial(sla_linear_domain.complement_sums, lut, sb, zb, geom.n_kblocks, transpose=False)
        s_q, z_q = domain_q()
        dq_call = partial(
            sla_backward_dq.sla_backward_dq, q, k, v, o_s, o_l, do, do_l, lse, lut, s_q, z_q, geom,
            feature="elu", linear_code=code, eps=eps, scale=scale, dq=dq, g_dtype=sb.dtype,
        )  # fmt: skip
        delta, g_blk, dz_blk = dq_call()
        domain_k = partial(
            sla_linear_domain.complement_sums, lut, g_blk, dz_blk, geom.n_kblocks, transpose=True
        )
        ds_k, dz_k = domain_k()
        dkdv_call = partial(
            sla_backward_dkdv.sla_backward_dkdv, q, k, v, do, lse, delta, lut, ds_k, dz_k, geom,
            feature="elu", linear_code=code, scale=scale, dk=dk, dv=dv,
        )  # fmt: skip
        whole = partial(
            sla_ops.sla_backward_op, q, k, v, o_s, o_l, lse, do, do_l, lut, sb, zb, st, zt, g, "elu",
            "complement", eps, scale,
        )  # fmt: skip
        row = {"frames": frames, "keep": keep, "kept_blocks": f"{geom.topk}/{geom.n_kblocks}"}
        row["backward_op_ms"] = median_ms(whole, repeats)
        row["domain_q_ms"] = median_ms(domain_q, repeats)
        row["dq_ms"] = median_ms(dq_call, repeats)
        row["domain_k_ms"] = median_ms(domain_k, repeats)
        row["inverse_lut_ms"] = median_ms(
            partial(sla_backward_dkdv.inverse_lut, lut, geom.n_kblocks), repeats
        )
        row["dkdv_ms"] = median_ms(dkdv_call, repeats) - row["inverse_lut_ms"]
    pair_mma = 2 * HEADS * geom.n_qblocks * geom.topk * geom.block_q * geom.block_k * HEAD_DIM
    row["dq_tflops"] = 3 * pair_mma / row["dq_ms"] / 1e9
    row["dkdv_tflops"] = 4 * pair_mma / row["dkdv_ms"] / 1e9
    return row


def _sweep(rows, frames_list, keeps, budget: Budget, save, what: str, measure) -> None:
    """One row per (frames, keep) from ``measure(frames, keep, q, k, v)``, within the time budget; the
    q/k/v views of a frame count are made once and freed before the next count."""
    for frames in frames_list:
        if not budget.allows(f"{what} {frames} frames"):
            continue
        _, q, k, v = qkv_views(frames)
        for keep in keeps:
            if not budget.allows(f"{what} {frames} frames keep {keep}"):
                continue
            rows.append(measure(frames, keep, q, k, v))
            _show(rows[-1], budget)
            save()
        del q, k, v
        torch.cuda.empty_cache()


def backward_parts_rows(rows, frames_list, keeps, repeats, budget: Budget, save):
    def measure(frames, keep, q, k, v):
        return _backward_parts(frames, keep, q, k, v, repeats)

    _sweep(rows, frames_list, keeps, budget, save, "backward parts", measure)


def _peak_extra_bytes(fn):
    """(result, peak device memory allocated by ``fn`` beyond what was allocated before)."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    result = fn()
    torch.cuda.synchronize()
    return result, torch.cuda.max_memory_allocated() - base


def _select(q, k, v, g, method="gemm"):
    pq, pk, km, *_ = sla_ops.sla_prepare_op(q, k, v, g, "elu", "none")
    return sla_ops.sla_block_select_op(pq, pk, km, g, method)


def _selection_one(frames: int, keep: float, q, k, v, repeats: int) -> dict:
    n = frames * TOKENS
    geom = sla_module(keep).geometry(n, TOKENS)
    g = sla_ops.geom_to_list(geom)
    with torch.no_grad():
        lut, select_extra = _peak_extra_bytes(partial(_select, q, k, v, g))
        lut_bytes = lut.numel() * lut.element_size()
        del lut
        ms = median_ms(partial(_select, q, k, v, g), repeats, warmup=1, min_repeats=1)
        _, streamed_extra = _peak_extra_bytes(partial(_select, q, k, v, g, "streamed"))
        streamed_ms = median_ms(partial(_select, q, k, v, g, "streamed"), repeats, warmup=0, min_repeats=1)
        _, states_extra = _peak_extra_bytes(partial(sla_ops.sla_prepare_op, q, k, v, g, "elu", "complement"))
    dense_map = geom.n_qblocks * geom.n_kblocks * HEADS * (4 + 1 + 8)  # thu-ml main: f32 + int8 + int64
    return {
        "frames": frames,
        "tokens": n,
        "keep": keep,
        "kept_blocks": f"{geom.topk}/{geom.n_kblocks}",
        "select_ms": ms,
        "select_repeats": repeats,
        "select_extra_gb": select_extra / 1e9,
        "select_streamed_ms": streamed_ms,
        "select_streamed_extra_gb": streamed_extra / 1e9,
        "lut_gb": lut_bytes / 1e9,
        "linear_states_extra_gb": states_extra / 1e9,
        "dense_block_map_gb_avoided": dense_map / 1e9,
    }


def selection_rows(rows, frames_list, keeps, repeats, budget: Budget, save):
    def measure(frames, keep, q, k, v):
        return _selection_one(frames, keep, q, k, v, repeats)

    _sweep(rows, frames_list, keeps, budget, save, "selection", measure)


def autotune_choices() -> dict:
    """The config each autotuned kernel variant chose, per work bucket (to prune the config lists)."""
    return {
        "forward": sla_forward.autotune_choices(),
        "backward_dq": sla_backward_dq.autotune_choices(),
        "backward_dkdv": sla_backward_dkdv.autotune_choices(),
    }


def check_targets(fwd, bwd, sel) -> dict:
    def pick(rows, **kv):
        return [r for r in rows if all(abs(r[k] - v) < 1e-9 for k, v in kv.items())]

    out = {}
    r32 = pick(fwd, frames=32)
    if r32:
        out["outside_pct_at_32_frames"] = {str(r["keep"]): r["outside_pct"] for r in r32}
        for how in ("pipelined", "graph", "profiled", "fused_profiled"):
            out[f"outside_{how}_pct_at_32_frames"] = {
                str(r["keep"]): r.get(f"outside_{how}_pct") for r in r32
            }
    r64 = pick(fwd, frames=64, keep=0.1)
    if r64:
        out["speedup_at_64_frames_10pct"] = r64[0]["speedup"]
        out["speedup_graph_at_64_frames_10pct"] = r64[0].get("speedup_graph")
        out["speedup_interleaved_at_64_frames_10pct"] = r64[0].get("speedup_interleaved")
    graph_tflops = {str(r["frames"]): r["kernel_graph_tflops"] for r in fwd if "kernel_graph_tflops" in r}
    if graph_tflops:
        out["kernel_graph_tflops_per_frames"] = graph_tflops
    for name in (
        "kernel",
        "kernel_gather",
        "kernel_stored",
        "kernel_recomputed",
        "kernel_all",
        "sparse_only",
    ):
        big = [r[f"{name}_tflops"] for r in fwd if r["frames"] >= 32]
        if big:
            out[f"{name}_tflops_median_32_frames_up"] = statistics.median(big)
    r64 = pick(fwd, frames=64, keep=0.1)
    if r64:
        out["speedup_recomputed_at_64_frames_10pct"] = r64[0]["speedup_recomputed"]
    if r32:
        out["outside_recomputed_pct_at_32_frames"] = {
            str(r["keep"]): r["outside_recomputed_pct"] for r in r32
        }
    b64 = pick(bwd, frames=64, keep=0.1)
    if b64:
        out["backward_speedup_at_64_frames_10pct"] = b64[0]["bwd_speedup"]
    s1000 = pick(sel, frames=1000)
    if s1000:
        out["select_extra_gb_at_1000_frames"] = {str(r["keep"]): r["select_extra_gb"] for r in s1000}
    out["targets"] = TARGETS
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--frames", type=int, nargs="*", default=[8, 32, 64, 128])
    ap.add_argument("--keeps", type=float, nargs="*", default=[0.05, 0.1, 0.2])
    ap.add_argument("--backward-frames", type=int, nargs="*", default=[8, 32, 64])
    ap.add_argument("--backward-keeps", type=float, nargs="*", default=[0.1])
    ap.add_argument(
        "--backward-breakdown",
        action="store_true",
        help="also time the backward's pieces (complement sums, dQ, inverse LUT, dK/dV) per backward point",
    )
    ap.add_argument("--select-frames", type=int, nargs="*", default=[1000])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--select-repeats", type=int, default=5, help="timed runs of the long selection")
    ap.add_argument("--deadline-s", type=float, default=330.0, help="start no point after this")
    ap.add_argument("--out", default=None, help="output folder (default $OUT or benchmarks/results)")
    args = ap.parse_args(argv)
    if DEVICE == "cuda" and not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    out = Path(args.out or os.environ.get("OUT") or "benchmarks/results") / "bench_sla_attention.json"
    results = {
        "shapes": {
            "tokens_per_frame": TOKENS,
            "special": SPECIAL,
            "heads": HEADS,
            "head_dim": HEAD_DIM,
            "dtype": str(DTYPE),
            "blocks": f"{BLOCK_Q}x{BLOCK_K}",
            "linear": "complement, elu, fused proj",
        }
    }
    budget = Budget(args.deadline_s)
    fwd, bwd, bwd_parts, sel = [], [], [], []
    part_end_s = {}

    def save():
        results.update(forward=fwd, backward=bwd, selection=sel, summary=check_targets(fwd, bwd, sel))
        if bwd_parts:
            results["backward_parts"] = bwd_parts
        results.update(skipped=budget.skipped, part_end_s=part_end_s, autotune=autotune_choices())
        table = "## Forward (global attention)\n\n" + markdown_table(
            fwd,
            ["frames", "keep", "kept_blocks", "key_loads", "dense_ms", "sla_ms", "speedup", "sla_gather_ms",
             "sla_recomputed_ms", "speedup_recomputed", "speedup_stored", "kernel_tflops",
             "kernel_gather_tflops", "kernel_stored_tflops",
             "kernel_recomputed_tflops", "kernel_all_tflops", "sparse_only_tflops", "prepare_ms", "prepare_gather_ms", "select_ms", "sums_ms", "select_streamed_ms", "select_dense_map_ms", "outside_pct",
             "outside_recomputed_pct", "sla_pipelined_ms", "outside_pipelined_pct", "sla_graph_ms", "speedup_graph",
             "outside_graph_pct", "outside_profiled_pct", "speedup_interleaved", "kernel_graph_tflops", "gpu_busy_ms",
             "outside_fused_profiled_pct", "fused_saving_us", "speedup_fused_interleaved"],
        )  # fmt: skip
        if bwd:
            table += "\n## Backward\n\n" + markdown_table(bwd)
        if bwd_parts:
            table += "\n## Backward pieces (complement, stored states)\n\n" + markdown_table(bwd_parts)
        if sel:
            table += "\n## Block selection\n\n" + markdown_table(sel)
        if budget.skipped:
            table += "\n**Skipped (deadline):** " + "; ".join(budget.skipped) + "\n"
        write_result(out, results, table)

    forward_rows(fwd, args.frames, args.keeps, args.repeats, budget, save)
    part_end_s["forward"] = round(budget.elapsed(), 1)
    save()
    backward_rows(bwd, args.backward_frames, args.backward_keeps, args.repeats, budget, save)
    if args.backward_breakdown:
        backward_parts_rows(bwd_parts, args.backward_frames, args.backward_keeps, args.repeats, budget, save)
    part_end_s["backward"] = round(budget.elapsed(), 1)
    save()
    selection_rows(sel, args.select_frames, args.keeps, args.select_repeats, budget, save)
    part_end_s["selection"] = round(budget.elapsed(), 1)
    save()
    print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
