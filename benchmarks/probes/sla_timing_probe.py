"""How the timing method moves the SLA module's and dense SDPA's numbers at VGGT shapes (GPU).

    python benchmarks/probes/sla_timing_probe.py [--frames 32 64 128] [--out DIR]

The bench times CUDA-graph replays one at a time (a host synchronisation before each) and dense SDPA
as single synchronised calls. At 64 frames the module's replay median has come out 0.45-0.75 ms above
the sum of its kernels' device times (torch.profiler), at 32 and 128 frames within ~1 %. Per method,
for the SLA module (as the product builds it), its sparse kernel alone and dense cuDNN SDPA:

* ``single``: median of single calls, synchronised (the bench's dense method);
* ``graph_single``: median of single CUDA-graph replays, synchronised (the bench's SLA method);
* ``graph_back_to_back``: mean over 20 replays issued back to back, one synchronisation (as the layers
  of a model run: the next layer's work is queued before this one ends);
* ``eager_back_to_back``: the same without a graph;
* ``profiled``: the sum of device times of one call's kernels (torch.profiler, mean of 5 calls).

Also the SM clock (nvidia-smi) before and after each measurement.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_sla_attention import (
    TOKENS,
    capture_graph,
    dense_attention,
    gpu_kernel_us,
    graph_ms,
    median_ms,
    pipelined_ms,
    qkv_views,
    sla_module,
)
from provenance import markdown_table, write_result


def sm_clock() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=clocks.sm,power.draw,temperature.gpu", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip()
    except Exception as e:  # recorded, not hidden
        return f"unavailable: {e}"


def graph_back_to_back_ms(fn, calls: int = 20) -> float:
    graph = capture_graph(fn)
    ms = pipelined_ms(graph.replay, calls)
    del graph
    return ms


def measure(name: str, fn, repeats: int) -> dict:
    row = {"what": name, "clock_before": sm_clock()}
    row["single_ms"] = median_ms(fn, repeats)
    row["graph_single_ms"] = graph_ms(fn, repeats)
    row["graph_back_to_back_ms"] = graph_back_to_back_ms(fn)
    row["eager_back_to_back_ms"] = pipelined_ms(fn)
    row["profiled_ms"] = sum(gpu_kernel_us(fn).values()) / 1000.0
    row["graph_single_again_ms"] = graph_ms(fn, repeats)
    row["clock_after"] = sm_clock()
    return row


def probe(frames: int, repeats: int) -> list[dict]:
    from lite3r.kernels import sla_ops

    _, q, k, v = qkv_views(frames)
    m = sla_module(0.1)
    geom = m.geometry(frames * TOKENS, TOKENS)
    rows = []
    with torch.no_grad():
        module = partial(m.attend, q, k, v, frame_len=TOKENS)
        rows.append({"frames": frames, **measure("sla module", module, repeats)})
        g = sla_ops.geom_to_list(geom)
        pq, pk, km, s_aug, _, _, _, kv, vv = sla_ops.sla_prepare_op(
            q, k, v, g, "elu", "complement", True, False, True, True
        )
        lut = sla_ops.sla_block_select_op(pq, pk, km, g)
        s_q, _ = sla_ops.sla_complement_sums_op(
            lut, s_aug, q.new_empty(0, dtype=torch.float32), geom.n_kblocks
        )
        kernel = partial(
            sla_ops.sla_forward_tma_op, q, kv, vv, lut, s_q, q.new_empty(0), m.proj_lin.weight, g, "elu",
            "complement", m.config.eps, m.scale,
        )  # fmt: skip
        rows.append({"frames": frames, **measure("sla kernel alone", kernel, repeats)})
        rows.append({"frames": frames, **measure("dense cuDNN", partial(dense_attention, q, k, v), repeats)})
    for r in rows:
        print(r, flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, nargs="+", default=[32, 64, 128])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rows = [r for f in args.frames for r in probe(f, args.repeats)]
    cols = [
        "frames",
        "what",
        "single_ms",
        "graph_single_ms",
        "graph_single_again_ms",
        "graph_back_to_back_ms",
    ]
    cols += ["eager_back_to_back_ms", "profiled_ms", "clock_before", "clock_after"]
    out = Path(args.out or "benchmarks/results/sla") / "sla_timing_probe.json"
    write_result(out, {"rows": rows}, markdown_table(rows, cols), command="python3 " + " ".join(sys.argv))


if __name__ == "__main__":
    main()
