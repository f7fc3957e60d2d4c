"""Device time of each qk-norm/RoPE launch, plain and as the fused-qk SLA path runs it (GPU).

    python benchmarks/probes/qk_fused_probe.py [--frames 32 64] [--out DIR]

VGGT global-attention shapes (16 heads × 64, 1,374 tokens per frame with 5 special, 37×37 RoPE grid),
bf16, LayerNorm with unit weight. Per launch (torch.profiler device time, mean of 10 calls, every
variant measured twice in alternating order against clock drift, the lower kept):

* ``q_plain_w8`` / ``k_plain_w8``: the plain kernel, 64 rows per program (what dense attention runs);
* ``q_rows128_w{8,16}``: the plain kernel at 128 rows per program (the pooled launch's tile, no pooling);
* ``q_pooled_w{8,16}``: 128 rows with the query-block means (the fused path's q launch at d3805c5);
* ``q_pooled_rows64_w8``: 64 rows, two tiles adding into each zeroed query-block mean (its launch
  since; the zeroing's memset included);
* ``k_virtual_w{4,8}``: 64 rows written in virtual key order (the fused path's k launch).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_sla_attention import HEAD_DIM, HEADS, SPECIAL, TOKENS, gpu_kernel_us, sla_module
from provenance import markdown_table, write_result

from lite3r.kernels import qk_norm_rope as qkr
from lite3r.models.layers.rope import RotaryPositionEmbedding2D, patch_positions


def _variants(frames: int) -> dict:
    n = frames * TOKENS
    qkv = torch.randn(1, n, 3, HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    q, k, _ = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    side = round((TOKENS - SPECIAL) ** 0.5)
    t = RotaryPositionEmbedding2D().tables(
        patch_positions(1, side, side, SPECIAL).repeat(1, frames, 1).cuda(), HEAD_DIM
    )
    w, b = torch.ones(HEAD_DIM, device="cuda"), torch.zeros(HEAD_DIM, device="cuda")
    geom = sla_module(0.1).geometry(n, TOKENS)
    out = qkr.empty_bnhd_like(q, torch.bfloat16)
    pq = torch.empty(1, HEADS, geom.n_qblocks, HEAD_DIM, device="cuda")
    kv = torch.empty(HEADS * geom.n_kblocks * geom.block_k, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    args = (w, b, t.cos, t.sin, 1e-6)
    return {
        "q_plain_w8": lambda: qkr._launch(q, out, *args),
        "k_plain_w8": lambda: qkr._launch(k, out, *args),
        "q_rows128_w8": lambda: qkr._launch(q, out, *args, block_rows=128),
        "q_rows128_w16": lambda: qkr._launch(q, out, *args, block_rows=128, num_warps=16),
        "q_pooled_w8": lambda: qkr._launch(q, out, *args, pooled=pq, pool_rows=128, block_rows=128),
        "q_pooled_w16": lambda: qkr._launch(
            q, out, *args, pooled=pq, pool_rows=128, block_rows=128, num_warps=16
        ),
        "q_pooled_rows64_w8": lambda: (pq.zero_(), qkr._launch(q, out, *args, pooled=pq, pool_rows=128)),
        "k_virtual_w8": lambda: qkr._launch(k, kv, *args, virtual=geom),
        "k_virtual_w4": lambda: qkr._launch(k, kv, *args, virtual=geom, num_warps=4),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--frames", type=int, nargs="*", default=[32, 64])
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    rows = []
    for frames in args.frames:
        fns = _variants(frames)
        best: dict[str, float] = {}
        for order in (list(fns), list(reversed(fns))):
            for name in order:
                us = sum(gpu_kernel_us(fns[name], calls=10).values())
                best[name] = min(best.get(name, float("inf")), us)
        rows.append({"frames": frames, **{f"{k}_us": round(v, 1) for k, v in best.items()}})
        print(rows[-1], flush=True)
    out = Path(args.out or "benchmarks/results") / "qk_fused_probe.json"
    write_result(out, {"rows": rows}, markdown_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
