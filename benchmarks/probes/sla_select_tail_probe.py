"""What the SLA module's selection tail costs, per variant of each of its kernels (GPU).

    python benchmarks/probes/sla_select_tail_probe.py [--frames 32 64 128] [--out DIR]

At VGGT global-attention shapes (the bench's random strided q/k/v, 10 % kept), CUDA-graph replays:

* ``scores_*``: the selection scores (``sla_select_scores``, float64 MMA, float32 out) per tile shape
  (query blocks × key blocks × warps), each checked bit-equal to a float64 matmul rounded to float32,
  next to that matmul with its operand conversions as PyTorch ops (``scores_cublas_f64_us``);
* ``topk_*``: the row top-k kernel (``sla_topk_rows``) per launch shape (rows per program × warps);
  every table is checked equal to the default launch's;
* ``sums_shipped``: the complement sums from separate float32 denominators (map kernel with the z_j
  gathers + one bf16 GEMM over the D² state columns: the module before the augmented rows);
* ``sums_aug``: the module's sums now: the map kernel without the gathers + one GEMM over D² + D
  columns, the denominators z_j riding along as bf16 columns of the states, with the largest relative
  error of those bf16 denominator sums against float64 (``aug_z_rel_err``);
* ``prepare_w{warps}s{stages}_us``: the prepare pass as the module runs it (virtual K/V copies,
  augmented states, no totals) per launch setting (the module's, 4 warps and 3 stages, first and again
  last: ``prepare_w4s3_again_us``, for clock drift).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_sla_attention import TOKENS, graph_ms, qkv_views, sla_module
from provenance import markdown_table, write_result

from lite3r.kernels import sla_complement_map, sla_linear_domain, sla_ops, sla_prepare, sla_topk_rows
from lite3r.kernels.sla_select_scores import select_scores

# launch shapes still compared (the full sweeps ran at 4fd384b / 7cb4f47: sla_select_tail_probe_*.md)
LAUNCHES = [(2, 4), (1, 2), (1, 4)]
SCORE_LAUNCHES = [(64, 64, 4), (32, 64, 4), (64, 32, 4), (32, 32, 4), (64, 128, 8), (128, 64, 8), (32, 64, 2)]
PREPARE_LAUNCHES = [(4, 3), (4, 2)]


def probe(frames: int, repeats: int) -> dict:
    n = frames * TOKENS
    _, q, k, v = qkv_views(frames)
    m = sla_module(0.1)
    geom = m.geometry(n, TOKENS)
    g = sla_ops.geom_to_list(geom)
    row = {"frames": frames, "rows": 16 * geom.n_qblocks, "cols": geom.n_kblocks, "topk": geom.topk}
    with torch.no_grad():
        pq, pk, km, sb, zb, *_ = sla_ops.sla_prepare_op(q, k, v, g, "elu", "complement", True, False, False)
        scores = select_scores(pq, pk, km).view(-1, geom.n_kblocks)
        R = scores.shape[0]
        ref = torch.empty(R, geom.topk, device="cuda", dtype=torch.int16)
        sla_topk_rows.topk_rows(scores, geom.topk, ref, geom.n_forced)
        # the selection scores (float64 MMA, float32 out) per tile shape, against the float64 cuBLAS
        # GEMM and its operand conversion (the path before the score kernel)
        keys64 = (pk - km[:, :, None]).double()
        pq64 = pq.double()
        row["scores_cublas_f64_us"] = 1000 * graph_ms(
            lambda: torch.matmul(pq.double(), (pk - km[:, :, None]).double().transpose(-1, -2)), repeats
        )
        ref64 = torch.matmul(pq64, keys64.transpose(-1, -2)).float()
        for bm, bn, w in SCORE_LAUNCHES:
            s_t = select_scores(pq, pk, km, launch=(bm, bn, w))
            row[f"scores_{bm}x{bn}w{w}_equal"] = bool(torch.equal(s_t, ref64))
            row[f"scores_{bm}x{bn}w{w}_us"] = 1000 * graph_ms(
                lambda bm=bm, bn=bn, w=w: select_scores(pq, pk, km, launch=(bm, bn, w)), repeats
            )
        for rows, warps in LAUNCHES:
            out = torch.empty_like(ref)

            def call(out=out, rows=rows, warps=warps):
                sla_topk_rows.topk_rows(scores, geom.topk, out, geom.n_forced, rows=rows, num_warps=warps)

            call()
            torch.cuda.synchronize()
            row[f"topk_r{rows}w{warps}_us"] = 1000 * graph_ms(call, repeats)
            row[f"topk_r{rows}w{warps}_equal"] = bool(torch.equal(out, ref))
        lut = ref.view(1, 16, geom.n_qblocks, geom.topk)
        shipped = lambda: sla_linear_domain.complement_sums(lut, sb, zb, geom.n_kblocks, transpose=False)
        row["sums_shipped_us"] = 1000 * graph_ms(shipped, repeats)
        BH, n_in = 16, sb.shape[2]
        D = sb.shape[-1]
        aug = torch.zeros(BH, n_in, D * D + D, device="cuda", dtype=sb.dtype)
        aug[:, :, : D * D] = sb.view(BH, n_in, D * D)
        aug[:, :, D * D :] = zb.view(BH, n_in, D).to(sb.dtype)
        lut3 = lut.view(BH, geom.n_qblocks, geom.topk)
        out_aug = torch.empty(BH, geom.n_qblocks, D * D + D, device="cuda", dtype=sb.dtype)

        def aug_sums():
            c, _ = sla_complement_map.complement_map(lut3, geom.n_kblocks, sb.dtype, n_cols=n_in)
            torch.bmm(c, aug, out=out_aug)

        row["sums_aug_us"] = 1000 * graph_ms(aug_sums, repeats)
        c, _ = sla_complement_map.complement_map(lut3, geom.n_kblocks, sb.dtype, n_cols=n_in)
        row["map_only_us"] = 1000 * graph_ms(
            lambda: sla_complement_map.complement_map(lut3, geom.n_kblocks, sb.dtype, n_cols=n_in), repeats
        )
        aug_sums()
        z64 = torch.bmm(c.double(), zb.view(BH, n_in, D).double())
        rel = (out_aug[:, :, D * D :].double() - z64).abs() / z64.abs().clamp_min(1e-30)
        row["aug_z_rel_err"] = rel.max().item()
        _, zq = shipped()
        row["shipped_z_rel_err"] = (
            ((zq.view_as(z64).double() - z64).abs() / z64.abs().clamp_min(1e-30)).max().item()
        )
        for n, (warps, stages) in enumerate([*PREPARE_LAUNCHES, (4, 3)]):
            launch = {"num_warps": warps, "num_stages": stages}
            name = f"prepare_w{warps}s{stages}" + ("_again" if n == len(PREPARE_LAUNCHES) else "")

            def prep(launch=launch):
                sla_prepare.sla_prepare(
                    q, k, v, geom, "elu", "complement", True, False, launch, virtual_kv=True, augmented=True
                )

            row[f"{name}_us"] = 1000 * graph_ms(prep, repeats)
    print(row, flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, nargs="+", default=[32, 64, 128])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rows = [probe(f, args.repeats) for f in args.frames]
    cols = ["frames", "rows", "cols", "topk"] + [f"topk_r{r}w{w}_us" for r, w in LAUNCHES]
    cols += ["scores_cublas_f64_us"] + [f"scores_{m}x{n}w{w}_us" for m, n, w in SCORE_LAUNCHES]
    cols += ["sums_shipped_us", "sums_aug_us", "map_only_us", "aug_z_rel_err", "shipped_z_rel_err"]
    cols += [f"prepare_w{w}s{s}_us" for w, s in PREPARE_LAUNCHES] + ["prepare_w4s3_again_us"]
    out = Path(args.out or "benchmarks/results/sla") / "sla_select_tail_probe.json"
    write_result(out, {"rows": rows}, markdown_table(rows, cols))


if __name__ == "__main__":
    main()
