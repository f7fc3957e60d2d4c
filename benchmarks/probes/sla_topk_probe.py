"""Launch settings and threshold searches of the row top-k kernel (``kernels/sla_topk_rows.py``) at the
block selection's shapes (GPU probe).

    python benchmarks/probes/sla_topk_probe.py [--frames 32 64 128] [--out DIR]

Rows = query blocks × 16 heads, columns = key blocks (VGGT: 1,374 tokens per frame, blocks 128 / 64),
k = 10 %, float64 scores. Times (CUDA graph replays) the bit-by-bit threshold search (``RADIX=False``,
what ships) and the 8-bit radix select (``RADIX=True``, ``tl.histogram``) for several rows per program
and warp counts, and checks every table against the shipped launch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SETTINGS = [
    (radix, rows, warps) for radix in (False, True) for rows, warps in ((2, 4), (4, 4), (4, 8), (8, 8))
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, nargs="*", default=[32, 64, 128])
    ap.add_argument("--repeats", type=int, default=40)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    import torch
    import triton
    from bench_sla_attention import graph_ms
    from provenance import markdown_table, write_result

    from lite3r.kernels import sla_topk_rows

    if not torch.cuda.is_available():
        raise SystemExit("sla_topk_probe needs a CUDA GPU")
    rows_out = []
    for frames in args.frames:
        n = frames * 1374
        n_q, n_k = -(-n // 128), -(-n // 64)
        k = n_k // 10
        torch.manual_seed(0)
        scores = torch.randn(16 * n_q, n_k, device="cuda", dtype=torch.float64)
        ref = torch.empty(16 * n_q, k, device="cuda", dtype=torch.int16)
        sla_topk_rows.topk_rows(scores, k, ref, 5)
        block_c = triton.next_power_of_2(n_k)
        for radix, rows, warps in SETTINGS:
            out = torch.empty_like(ref)

            def run(
                radix=radix, rows=rows, warps=warps, out=out, scores=scores, n_k=n_k, k=k, block_c=block_c
            ):
                sla_topk_rows._topk_rows_kernel[(triton.cdiv(scores.shape[0], rows),)](
                    scores, out, scores.shape[0], n_k, k, 5, scores.stride(0), out.stride(0),
                    ROWS=rows, BLOCK_C=block_c, RADIX=radix, num_warps=warps,
                )  # fmt: skip

            try:
                run()
                same = bool(torch.equal(out, ref))
                ms = graph_ms(run, args.repeats)
            except Exception as exc:  # reported, not hidden
                rows_out.append(
                    {"frames": frames, "radix": radix, "rows": rows, "warps": warps, "error": str(exc)[:200]}
                )
                print(rows_out[-1], flush=True)
                continue
            rows_out.append(
                {
                    "frames": frames,
                    "radix": radix,
                    "rows": rows,
                    "warps": warps,
                    "us": ms * 1000,
                    "same_table": same,
                }
            )
            print(rows_out[-1], flush=True)
    table = markdown_table(
        [r for r in rows_out if "us" in r], ["frames", "radix", "rows", "warps", "us", "same_table"]
    )
    write_result(
        Path(args.out or "benchmarks/results") / "sla" / "sla_topk_probe.json", {"rows": rows_out}, table
    )
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
