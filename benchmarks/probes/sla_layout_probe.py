"""What the SLA forward kernel's key/value addressing costs (GPU probe).

    python benchmarks/probes/sla_layout_probe.py [--frames 32 64 128] [--out DIR]

The kernel walks the selected key blocks in *virtual* order (every frame's special tokens first), so
each key column's physical row is computed in the inner loop (two integer divisions per column), and
q, k, v are strided views of the qkv projection (row stride 3·H·D). This probe times the same kernel
(complement branch, summed states, fused projection: the module's inference path) and its sparse-only
variant at VGGT shapes with and without special tokens (without them the mapping is the identity and
compiles away) and with q, k, v as views or as contiguous [B, H, N, D] tensors. The FLOPs are the same
in every cell, so the differences are addressing and memory layout: whether a K/V layout in virtual
order would buy kernel speed (issue #3: ≥ 380 TFLOP/s).
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_sla_attention import (
    BLOCK_K,
    BLOCK_Q,
    DEVICE,
    DTYPE,
    HEAD_DIM,
    HEADS,
    TOKENS,
    median_ms,
    sla_module,
)
from provenance import write_rows

from lite3r.kernels import sla_linear_domain, sla_ops


def _cell(frames: int, special: int, layout: str, keep: float, repeats: int) -> dict:
    n = frames * TOKENS
    qkv = torch.randn(1, n, 3, HEADS, HEAD_DIM, device=DEVICE, dtype=DTYPE)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    if layout == "contiguous":
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    m = sla_module(keep, special=special)
    geom = m.geometry(n, TOKENS)
    g = sla_ops.geom_to_list(geom)
    none = q.new_empty(0, dtype=torch.float32)
    with torch.no_grad():
        pq, pk, km, sb, zb, *_ = sla_ops.sla_prepare_op(q, k, v, g, "elu", "complement", True, False)
        lut = sla_ops.sla_block_select_op(pq, pk, km, g)
        s_q, z_q = sla_linear_domain.complement_sums(lut, sb, zb, geom.n_kblocks, transpose=False)
        fwd = partial(sla_ops.sla_forward_op, q, k, v, lut)
        fused = partial(
            fwd, none, none, s_q, z_q, m.proj_lin.weight, g, "elu", "complement", m.config.eps, m.scale,
            True, False, True,
        )  # fmt: skip
        sparse = partial(
            fwd, none, none, none, none, None, g, "elu", "none", m.config.eps, m.scale, True, False, False
        )
        flops = 4 * HEADS * geom.n_qblocks * geom.topk * geom.block_q * geom.block_k * HEAD_DIM
        row = {"frames": frames, "special": special, "layout": layout, "keep": keep}
        for name, fn in (("kernel", fused), ("sparse_only", sparse)):
            ms = median_ms(fn, repeats)
            row[f"{name}_ms"] = ms
            row[f"{name}_tflops"] = flops / ms / 1e9
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, nargs="*", default=[32, 64, 128])
    ap.add_argument("--keep", type=float, default=0.1)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("sla_layout_probe needs a CUDA GPU")
    rows = []
    for frames in args.frames:
        for special in (5, 0):
            for layout in ("views", "contiguous"):
                row = _cell(frames, special, layout, args.keep, args.repeats)
                print({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
                rows.append(row)
    out = Path(args.out or "benchmarks/results") / "sla"
    cols = [
        "frames",
        "special",
        "layout",
        "kernel_ms",
        "kernel_tflops",
        "sparse_only_ms",
        "sparse_only_tflops",
    ]
    write_rows(out / "sla_layout_probe.json", rows, cols, keep=args.keep, blocks=[BLOCK_Q, BLOCK_K])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
