"""The Gluon (wgmma) SLA forward kernel against the Triton one at VGGT shapes (GPU probe).

    python benchmarks/probes/sla_wgmma_probe.py [--frames 32 64 128] [--out DIR]

Same inputs, look-up table and FLOPs for both kernels (complement branch with summed states and fused
projection: the module's inference path; and the sparse branch alone): times each, and how far their
outputs differ. Hopper-kernel variants (``sla_forward_hopper.py``, table below): ``_unfenced`` leaves
the softmax unfenced, so ptxas hoists the wait for P·V into it (what the MMA/softmax overlap is worth).
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_sla_attention import DEVICE, DTYPE, HEAD_DIM, HEADS, TOKENS, median_ms, sla_module
from provenance import markdown_table, write_result

from lite3r.kernels import sla_forward, sla_forward_hopper, sla_linear_domain, sla_ops

# (name, warp-specialised, consumer partitions, fenced softmax, tiles gathered ahead, register cap).
# "wgmma" (the default call): a producer partition gathers, two one-warpgroup consumer partitions
# compute. "ws1": one consumer partition of two warpgroups. "plain": the single-partition kernel (every
# warp gathers and computes, a CTA-wide barrier per tile); "plain_2cta": one tile ahead (112 KB shared)
# and 128 registers, so two CTAs share an SM as in the Triton kernel's autotuned config.
WGMMA_VARIANTS = [
    ("wgmma_unfenced", True, 2, False, 2, None),
    ("ws1", True, 1, True, 2, None),
    ("ws1_unfenced", True, 1, False, 2, None),
    ("plain", False, 2, True, 2, None),
    ("plain_2cta", False, 2, False, 1, 128),
]


def _cell(frames: int, keep: float, repeats: int) -> dict:
    n = frames * TOKENS
    qkv = torch.randn(1, n, 3, HEADS, HEAD_DIM, device=DEVICE, dtype=DTYPE)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    m = sla_module(keep)
    geom = m.geometry(n, TOKENS)
    g = sla_ops.geom_to_list(geom)
    none = q.new_empty(0, dtype=torch.float32)
    row = {"frames": frames, "keep": keep, "kept_blocks": f"{geom.topk}/{geom.n_kblocks}"}
    flops = 4 * HEADS * geom.n_qblocks * geom.topk * geom.block_q * geom.block_k * HEAD_DIM
    with torch.no_grad():
        pq, pk, km, sb, zb, _, _ = sla_ops.sla_prepare_op(q, k, v, g, "elu", "complement", True, False)
        lut = sla_ops.sla_block_select_op(pq, pk, km, g)
        s_q, z_q = sla_linear_domain.complement_sums(lut, sb, zb, geom.n_kblocks, transpose=False)
        w = m.proj_lin.weight
        kw = dict(eps=m.config.eps, scale=m.scale, fuse_proj=True, summed_states=True, feature="elu")
        variants = {
            "triton": partial(sla_forward.sla_forward, q, k, v, lut, none, none, s_q, z_q, w, geom, **kw),
            "wgmma": partial(sla_forward_hopper.sla_forward_wgmma, q, k, v, lut, s_q, z_q, w, geom, **kw),
        }
        for name, ws, consumers, fence, prefetch, maxnreg in WGMMA_VARIANTS:
            variants[name] = partial(
                sla_forward_hopper.sla_forward_wgmma, q, k, v, lut, s_q, z_q, w, geom, fence_softmax=fence,
                prefetch=prefetch, maxnreg=maxnreg, warp_specialized=ws, consumers=consumers, **kw,
            )  # fmt: skip
        ref = None
        for linear in ("complement", "none"):
            tag = "" if linear == "complement" else "sparse_only_"
            for name, fn in variants.items():
                call = partial(fn, linear=linear)
                o = call()[0]
                if name == "triton":
                    ref = o.float()
                else:
                    err = ((o.float() - ref).norm() / ref.norm()).item()
                    row[f"{tag}{name}_rel_err"] = err
                ms = median_ms(call, repeats)
                row[f"{tag}{name}_ms"] = ms
                row[f"{tag}{name}_tflops"] = flops / ms / 1e9
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, nargs="*", default=[32, 64, 128])
    ap.add_argument("--keep", type=float, default=0.1)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("sla_wgmma_probe needs a CUDA GPU")
    rows = []
    for frames in args.frames:
        row = _cell(frames, args.keep, args.repeats)
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
        rows.append(row)
    out = Path(args.out or "benchmarks/results") / "sla"
    cols = [
        "frames", "kept_blocks", "triton_tflops", "wgmma_tflops", "wgmma_unfenced_tflops", "ws1_tflops",
        "ws1_unfenced_tflops", "plain_tflops", "plain_2cta_tflops", "wgmma_rel_err", "ws1_rel_err",
        "sparse_only_triton_tflops", "sparse_only_wgmma_tflops", "sparse_only_wgmma_unfenced_tflops",
    ]  # fmt: skip
    report = {"rows": rows, "keep": args.keep, "compile": sla_forward_hopper.compile_report(True)}
    write_result(out / "sla_wgmma_probe.json", report, markdown_table(rows, cols))
    print(markdown_table(rows, cols))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
