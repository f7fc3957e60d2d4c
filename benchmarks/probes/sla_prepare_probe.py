"""Where the SLA prepare pass spends its time at VGGT shapes (GPU probe).

    python benchmarks/probes/sla_prepare_probe.py [--frames 32 64] [--out DIR]

The prepare pass (pooled q and k for the selection, per-key-block linear states φ(K_j)ᵀV_j) is most of
the module's time outside the sparse kernel at 32 frames (issue #3: ≤ 15 %). This probe times it as the
module runs it, with the pooling alone (no linear branch), on contiguous copies of q, k, v instead of
views of the qkv projection, with other work splits (key blocks per program) and launch settings
(warps, pipeline stages), next to a plain read of
q, k and v (a memory floor), to show which of these matters.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_sla_attention import DEVICE, DTYPE, HEAD_DIM, HEADS, TOKENS, median_ms, sla_module
from provenance import write_rows

from lite3r.kernels import sla_ops, sla_prepare


def _cell(frames: int, repeats: int) -> dict:
    n = frames * TOKENS
    qkv = torch.randn(1, n, 3, HEADS, HEAD_DIM, device=DEVICE, dtype=DTYPE)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    geom = sla_module(0.1).geometry(n, TOKENS)
    g = sla_ops.geom_to_list(geom)
    row = {"frames": frames, "qkv_mb": qkv.numel() * qkv.element_size() / 1e6}
    with torch.no_grad():
        row["read_qkv_ms"] = median_ms(lambda: qkv.sum(dim=1, dtype=torch.float32), repeats)
        row["module_ms"] = median_ms(
            lambda: sla_ops.sla_prepare_op(q, k, v, g, "elu", "complement", True, False), repeats
        )
        row["pooling_only_ms"] = median_ms(
            lambda: sla_ops.sla_prepare_op(q, k, v, g, "elu", "none", True, False), repeats
        )
        qc, kc, vc = q.contiguous(), k.contiguous(), v.contiguous()
        row["contiguous_ms"] = median_ms(
            lambda: sla_ops.sla_prepare_op(qc, kc, vc, g, "elu", "complement", True, False), repeats
        )
        default = sla_prepare._MIN_KBLOCKS_PER_PROGRAM, sla_prepare._MAX_CHUNKS
        for per_prog, max_chunks in ((1, 1024), (2, 512), (8, 128), (16, 64)):
            sla_prepare._MIN_KBLOCKS_PER_PROGRAM, sla_prepare._MAX_CHUNKS = per_prog, max_chunks
            chunks = sla_prepare.prepare_chunking(geom)[0]
            row[f"kb{per_prog}_ms"] = median_ms(
                lambda: sla_prepare.sla_prepare(q, k, v, geom, "elu", "complement", True, False), repeats
            )
            row[f"kb{per_prog}_chunks"] = chunks
        sla_prepare._MIN_KBLOCKS_PER_PROGRAM, sla_prepare._MAX_CHUNKS = default
        for warps, stages in ((8, 3), (4, 2), (4, 4), (8, 4), (2, 3)):
            launch = {"num_warps": warps, "num_stages": stages}
            row[f"w{warps}s{stages}_ms"] = median_ms(
                lambda launch=launch: sla_prepare.sla_prepare(
                    q, k, v, geom, "elu", "complement", True, False, launch
                ),
                repeats,
            )
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, nargs="*", default=[32, 64])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("sla_prepare_probe needs a CUDA GPU")
    rows = []
    for frames in args.frames:
        row = _cell(frames, args.repeats)
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
        rows.append(row)
    write_rows(Path(args.out or "benchmarks/results") / "sla" / "sla_prepare_probe.json", rows, list(rows[0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
