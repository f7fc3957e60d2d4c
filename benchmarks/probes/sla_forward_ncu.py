"""One SLA forward launch (or one dense cuDNN attention) between cudaProfilerStart/Stop, for Nsight Compute.

    ncu --profile-from-start off --section SpeedOfLight --section WarpStateStats ... \\
        python benchmarks/probes/sla_forward_ncu.py --frames 64 [--dense]

The module's inference path at VGGT shapes (complement branch, summed states, fused projection, 10 %
kept): the autotuner and a warm-up run first, outside the profiled range, so ncu sees exactly the
kernel the benchmark times. ``--dense`` profiles cuDNN's SDPA on the same q, k, v instead (the
baseline the 8× target is measured against).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    from bench_sla_attention import DEVICE, DTYPE, HEAD_DIM, HEADS, TOKENS, sla_module

    from lite3r.kernels import sla_forward, sla_linear_domain, sla_ops

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=64)
    ap.add_argument("--keep", type=float, default=0.1)
    ap.add_argument("--dense", action="store_true", help="profile cuDNN SDPA instead of the SLA kernel")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("sla_forward_ncu needs a CUDA GPU")
    n = args.frames * TOKENS
    torch.manual_seed(0)
    qkv = torch.randn(1, n, 3, HEADS, HEAD_DIM, device=DEVICE, dtype=DTYPE)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    with torch.no_grad():
        if args.dense:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            def run():
                with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                    return torch.nn.functional.scaled_dot_product_attention(q, k, v)
        else:
            m = sla_module(args.keep, special=5)
            geom = m.geometry(n, TOKENS)
            g = sla_ops.geom_to_list(geom)
            none = q.new_empty(0, dtype=torch.float32)
            pq, pk, km, sb, zb, *_ = sla_ops.sla_prepare_op(q, k, v, g, "elu", "complement", True, False)
            lut = sla_ops.sla_block_select_op(pq, pk, km, g)
            s_q, z_q = sla_linear_domain.complement_sums(lut, sb, zb, geom.n_kblocks, transpose=False)

            def run():
                return sla_forward.sla_forward(
                    q, k, v, lut, none, none, s_q, z_q, m.proj_lin.weight, geom, feature="elu",
                    linear="complement", eps=m.config.eps, scale=m.scale, fuse_proj=True, summed_states=True,
                )  # fmt: skip

        for _ in range(3):
            run()
        torch.cuda.synchronize()
        if not args.dense:
            print("autotuned:", sla_forward.autotune_choices(), flush=True)
        torch.cuda.profiler.start()
        run()
        torch.cuda.synchronize()
        torch.cuda.profiler.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
