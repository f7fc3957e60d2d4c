"""Quality of lite3r-tiny (or any registry model) on the SynthMV test split, next to trivial baselines.

    python -m lite3r.training.quality_report --weights runs/tiny/lite3r-tiny [--scenes 128] [--views 2 4 8]

For each test scene (seeds 2e7, 2e7+1, ...; rendered once with max(views) views, the first S used at
each S) the model predicts depth and cameras — the poses from where the engine takes them
(``--poses auto``: the attention-match read-out when the weights declare one, as lite3r-tiny's do since
the fifteenth session, else the camera head); the metrics are ``lite3r.eval.evaluate.evaluate_sample``:

* depth AbsRel and δ<1.25 with one least-squares scale per scene (``lsq_scene``);
* pose AUC@30 / RRA / RTA over all view pairs (VGGT/DA3 convention);
* points: predicted depth unprojected with the predicted K and poses, Umeyama Sim(3)-aligned to GT on
  GT-valid pixels, then accuracy / completeness / Chamfer (mean L2) and F@1 %/2 % of the scene diagonal.

Trivial baselines, scored by the same code: constant depth (a depth of 1 everywhere) with identity poses
and GT intrinsics. The done-when check (issue 6) is printed and stored: at S = 8 the model's AbsRel
must be ≤ 1/3 of the constant-depth AbsRel and its AUC@30 ≥ the identity AUC@30 + 40 points.
Results: JSON + markdown via ``benchmarks/provenance.py`` (``$OUT`` when set, else benchmarks/results).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

KEYS = {
    "abs_rel": ("depth", "lsq_scene", "abs_rel"),
    "delta1": ("depth", "lsq_scene", "delta1"),
    "auc@30": ("pose", "auc@30"),
    "auc@15": ("pose", "auc@15"),
    "rra@15": ("pose", "rra@15"),
    "rta@15": ("pose", "rta@15"),
    "rra@30": ("pose", "rra@30"),
    "rta@30": ("pose", "rta@30"),
    "acc": ("points", "depth", "all", "acc"),
    "comp": ("points", "depth", "all", "comp"),
    "chamfer": ("points", "depth", "all", "chamfer"),
    "f@1%": ("points", "depth", "all", "fscore@1%diag"),
    "f@2%": ("points", "depth", "all", "fscore@2%diag"),
}


def _get(d: dict, path: tuple) -> float:
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return float("nan")
        d = d[k]
    return float(d)


def _metric_config(max_points: int):
    from lite3r.eval.evaluate import MetricConfig

    return MetricConfig(
        depth_policies=("lsq_scene",),
        pose_thresholds=(5, 15, 30),
        fscore_diag_fractions=(0.01, 0.02),
        point_sources=("depth",),
        max_points=max_points,
        align_max_points=max_points,
        lite3r_reference=False,
    )


def load(weights: str | None, model_name: str, device: torch.device):
    from lite3r.models.registry import load_model

    return load_model(model_name, weights=weights, device=device)


@torch.no_grad()
def predict(model, images: torch.Tensor, precision: str, readout=None):
    """images [B,S,3,H,W] → numpy (depth [B,S,H,W], conf, extrinsics [B,S,3,4], intrinsics [B,S,3,3]).

    ``readout`` (a MatchPoseConfig): poses from the global attention's matches, as the engine reads
    them for weights that declare it (``lite3r.engine.poses``); views it cannot solve keep the camera
    head's pose. None: the camera head."""
    from lite3r.models.vggt.match_pose import encode_with_match_scores, poses_from_scores

    dev = images.device
    ctx = (
        torch.autocast(dev.type, dtype=torch.bfloat16)
        if precision == "bf16"
        else torch.autocast(dev.type, enabled=False)
    )
    S = images.shape[1]
    with ctx:
        if readout is not None and S > 1:
            feats, to_ref, from_ref = encode_with_match_scores(model, images, readout)
        else:
            feats = model.encode(images)
        cams = model.decode_cameras(feats, tuple(images.shape[-2:]))
        depth, conf = model.decode_depth(feats, images)
    f = lambda t: t.float().cpu().numpy()
    depth, ext, intr = f(depth), f(cams.extrinsics), f(cams.intrinsics)
    if readout is not None and S > 1:
        ps = model.config.aggregator.patch_size
        for b in range(len(ext)):
            res = poses_from_scores(to_ref[b], from_ref[b], depth[b], intr[b], readout, ps, fallback=ext[b])
            ext[b] = res.extrinsics
    return depth, f(conf), ext, intr


def _readout(model, poses: str):
    """The pose read-out to score, as the engine resolves it (lite3r.engine.poses; no compile here)."""
    from lite3r.engine.poses import resolve_pose_source

    src = resolve_pose_source(model, poses, "none")
    return src.readout if src.kind == "matches" else None


def run(args) -> dict:
    from lite3r.eval.evaluate import GroundTruth, Prediction, evaluate_sample

    from .data.synthetic import SynthConfig, render_batch, split_seeds

    dev = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                       ("cpu" if args.device == "auto" else args.device))  # fmt: skip
    precision = args.precision or ("bf16" if dev.type == "cuda" else "fp32")
    model = load(args.weights, args.model, dev).eval()
    readout = _readout(model, args.poses)
    size = args.image_size
    views = sorted(set(args.views))
    seeds = split_seeds("test", args.scenes, start=args.start)
    synth = SynthConfig()
    cfg = _metric_config(args.max_points)
    per = defaultdict(list)  # (who, S) -> rows ; (who, S, tier) -> rows
    t0 = time.perf_counter()
    t_model = 0.0
    for i in range(0, len(seeds), args.batch):
        batch = render_batch(seeds[i : i + args.batch], max(views), size, dev, synth)
        for S in views:
            tm = time.perf_counter()
            depth, conf, ext, intr = predict(model, batch.images[:, :S], precision, readout)
            t_model += time.perf_counter() - tm
            gt_d = batch.depth[:, :S].cpu().numpy()
            gt_v = batch.valid[:, :S].cpu().numpy()
            gt_e = batch.extrinsics[:, :S].cpu().numpy().astype(np.float64)
            gt_k = batch.intrinsics[:, :S].cpu().numpy().astype(np.float64)
            for b in range(len(batch)):
                gt = GroundTruth(gt_e[b], gt_k[b], gt_d[b], gt_v[b])
                tier = batch.metadata[b]["tier"]
                fam = batch.metadata[b]["family"]
                pred = Prediction(depth[b], conf[b], ext[b], intr[b])
                base = Prediction(np.ones_like(gt_d[b]), None, np.tile(np.eye(4)[:3], (S, 1, 1)), gt_k[b])
                for who, p in (("model", pred), ("trivial", base)):
                    m = evaluate_sample(p, gt, cfg)
                    row = {k: _get(m, path) for k, path in KEYS.items()}
                    per[(who, S)].append(row)
                    per[(who, S, "tier", tier)].append(row)
                    per[(who, S, "family", fam)].append(row)
        done = min(i + args.batch, len(seeds))
        print(
            f"[quality] {done}/{len(seeds)} scenes, {time.perf_counter() - t0:.0f} s",
            file=sys.stderr,
            flush=True,
        )
    summary: dict = {"views": views, "scenes": len(seeds), "seeds": [seeds[0], seeds[-1]], "image_size": size,
                     "precision": precision, "device": str(dev), "model": args.model, "weights": args.weights,
                     "poses": "camera head" if readout is None else {"matches": readout.to_dict()},
                     "metric_config": cfg.to_dict(), "results": {}, "model_seconds": round(t_model, 2)}  # fmt: skip
    for key, rows in per.items():
        name = "/".join(str(k) for k in key)
        summary["results"][name] = {k: float(np.nanmean([r[k] for r in rows])) for k in KEYS} | {
            "n": len(rows)
        }
    S = max(views)
    mdl, triv = summary["results"][f"model/{S}"], summary["results"][f"trivial/{S}"]
    summary["done_when"] = {
        "views": S,
        "abs_rel_ratio_const_over_model": triv["abs_rel"] / mdl["abs_rel"],
        "auc30_model_minus_identity": mdl["auc@30"] - triv["auc@30"],
        "pass_depth": triv["abs_rel"] / mdl["abs_rel"] >= 3.0,
        "pass_pose": mdl["auc@30"] - triv["auc@30"] >= 40.0,
    }
    return summary


def table(summary: dict) -> str:
    from benchmarks.provenance import markdown_table

    cols = [
        "who",
        "S",
        "abs_rel",
        "delta1",
        "auc@30",
        "rra@30",
        "rta@30",
        "acc",
        "comp",
        "chamfer",
        "f@1%",
        "f@2%",
    ]
    rows = []
    for S in summary["views"]:
        for who in ("model", "trivial"):
            r = summary["results"][f"{who}/{S}"]
            rows.append({"who": who if who == "model" else "const depth + identity", "S": S,
                         **{k: r[k] for k in cols[2:]}})  # fmt: skip
    S = max(summary["views"])
    tiers = sorted({k.split("/")[3] for k in summary["results"] if k.startswith(f"model/{S}/tier/")})
    tier_rows = [{"tier": t, **{k: summary["results"][f"model/{S}/tier/{t}"][k] for k in ("abs_rel", "auc@30")},
                  "n": summary["results"][f"model/{S}/tier/{t}"]["n"]} for t in tiers]  # fmt: skip
    dw = summary["done_when"]
    text = (
        f"SynthMV test split, {summary['scenes']} scenes, {summary['image_size']} px, {summary['precision']}; "
        f"depth: one LSQ scale per scene; points: Sim(3)-aligned, F@τ as % of the GT diagonal.\n\n"
        + markdown_table(rows, cols)
        + f"\nModel by tier at S = {S}:\n\n"
        + markdown_table(tier_rows, ["tier", "abs_rel", "auc@30", "n"])
        + f"\nDone-when (S = {S}): const/model AbsRel = {dw['abs_rel_ratio_const_over_model']:.2f} (need ≥ 3: "
        f"{'PASS' if dw['pass_depth'] else 'FAIL'}); model − identity AUC@30 = "
        f"{dw['auc30_model_minus_identity']:.1f} (need ≥ 40: {'PASS' if dw['pass_pose'] else 'FAIL'})\n"
    )
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m lite3r.training.quality_report", description=__doc__.splitlines()[0]
    )
    p.add_argument("--weights", help="model folder/file (default: the registry's lite3r-tiny)")
    p.add_argument("--model", default="lite3r-tiny", help="registry name (a VGGT-family model)")
    p.add_argument("--scenes", type=int, default=128, help="test scenes (seeds 2e7 + start + i)")
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--views", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=8, help="scenes rendered per batch")
    p.add_argument("--max-points", type=int, default=20_000, help="per cloud for alignment / Chamfer")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--poses",
        choices=("auto", "camera-head", "matches"),
        default="auto",
        help="poses scored: the camera head or the attention-match read-out (auto: what the weights declare)",
    )
    p.add_argument("--precision", choices=["bf16", "fp32"])
    p.add_argument(
        "--out", help="result JSON (default: $OUT/quality_lite3r_tiny.json or benchmarks/results/)"
    )
    a = p.parse_args(argv)
    summary = run(a)
    text = table(summary)
    print(text)
    from benchmarks.provenance import results_dir, write_result

    path = Path(a.out) if a.out else results_dir() / "quality_lite3r_tiny.json"
    write_result(path, summary, text)
    print(f"wrote {path} and {path.with_suffix('.md')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
