"""Does cuBLAS pick a slow kernel for a bf16 batched GEMM whose reduction length K is not a multiple of 8?
(The SLA complement sums: [16, Mq, Nk] · [16, Nk, 4096] at VGGT's 32/64/128 frames.)

    python3 benchmarks/probes/bmm_k_alignment.py
"""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_sla_attention import pipelined_ms as ms  # mean of back-to-back calls


def main() -> None:
    from lite3r.kernels.sla_linear_domain import _bmm_aligned_k

    for m, k in ((344, 687), (687, 1374), (1374, 2748)):
        b = torch.randn(16, k, 4096, device="cuda", dtype=torch.bfloat16)
        out = torch.empty(16, m, 4096, device="cuda", dtype=torch.bfloat16)
        row = {}
        for kk in (k, k - k % 8, k + (-k) % 8):
            a = torch.ones(16, m, kk + (-kk) % 8, device="cuda", dtype=torch.bfloat16)[:, :, :kk]
            bb = b[:, :kk] if kk <= k else torch.randn(16, kk, 4096, device="cuda", dtype=torch.bfloat16)
            row[f"K={kk}"] = round(ms(partial(torch.bmm, a, bb, out=out)), 3)
        a = torch.ones(16, m, k + (-k) % 8, device="cuda", dtype=torch.bfloat16)[:, :, :k]
        row["split"] = round(ms(partial(_bmm_aligned_k, a, b, out)), 3)
        print(f"M={m} K={k}: ms {row}", flush=True)


if __name__ == "__main__":
    main()
