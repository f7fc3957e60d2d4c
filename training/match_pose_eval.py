"""Pose read-out from attention matches vs the camera head, with oracles and baselines (issue #6).

    python -m lite3r.training.match_pose_eval --weights runs/tiny/lite3r-tiny --split val --scenes 32 \\
        --views 2 4 8 [--layers -1] [--heads 0] [--solvers pnp procrustes essential]

For each SynthMV scene (split val or test; rendered once at max(views), the first S views used at each
S, as ``quality_report``) the model runs once per S; pose metrics
(``lite3r.eval.metrics.pose_metrics``: AUC@30, RRA/RTA@15/30 over all pairs, averaged over scenes) for

* ``camera_head`` — the model's own cameras;
* ``readout/<solver>`` — :mod:`lite3r.models.vggt.match_pose` on the model's matches, depth and
  intrinsics (the deployable read-out);
* ``gt_depth/<solver>`` — the model's matches with GT depth and GT intrinsics (what the matches allow);
* ``oracle_patch/<solver>`` — GT matches quantised to the patch grid (what a perfect patch classifier
  gives), GT depth and intrinsics;
* ``oracle_exact/<solver>`` — exact GT matches at the same view-0 pixels (the solver's upper bound);
* ``identity`` (zero translation scores 90°) and ``identity_rand_t`` — identity rotation + a random
  translation direction (20 draws; the fair "no pose knowledge" baseline).

Views a solver cannot solve keep the camera head's pose; the solved fraction is reported. Match
diagnostics: matches per view, top-1 patch accuracy of all view-0 queries next to that of the zero-motion
matcher (same patch position in both views: RoPE gives every view the same positions, so this prior is
free) and on the queries whose GT patch moved, how often the model picks the same position, and the
fraction of kept matches within ½ / 1 patch of the GT position. Depth: AbsRel / δ1 with one LSQ scale per scene vs one per view
(and the constant-depth baseline under both), and the spread of the per-view scales (std of log s_v).
Results: JSON + markdown via ``benchmarks/provenance.py`` (``$OUT`` when set, else benchmarks/results/tiny).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from lite3r.errors import CheckpointError, InputError
from lite3r.models.vggt.match_pose import (
    SOLVERS,
    MatchPoseConfig,
    ViewMatches,
    encode_with_match_scores,
    estimate_poses,
    patch_matches,
    sample_depth,
)

POSE_KEYS = ("auc@30", "rra@15", "rta@15", "rra@30", "rta@30", "rot_err_median", "trans_err_median")
RANDOM_T_DRAWS = 20


# --------------------------------------------------------------------------------------------------
# model loading
# --------------------------------------------------------------------------------------------------


def load_any(weights: str | None, model_name: str, device: torch.device):
    """A VGGT-family model from a weights folder / file (registry loader), or from a ``train_tiny``
    checkpoint (``checkpoint.pt``, or an ``--out`` folder holding one), in eval mode."""
    if weights is not None:
        p = Path(weights)
        ckpt = p / "checkpoint.pt" if p.is_dir() and not (p / "config.json").is_file() else p
        if ckpt.suffix == ".pt":
            if not ckpt.is_file():
                raise CheckpointError(
                    f"no checkpoint at {ckpt}", hint="pass a weights folder or checkpoint.pt"
                )
            from .tiny import build_tiny
            from .train_tiny import TinyTrainConfig

            state = torch.load(ckpt, map_location="cpu", weights_only=False)
            if "model" not in state or "config" not in state:
                raise CheckpointError(f"{ckpt} is not a train_tiny checkpoint (no 'model' / 'config')")
            cfg = TinyTrainConfig.from_dict(state["config"])
            extra = {
                k: getattr(cfg, k)
                for k in ("layer_scale_init", "token_init_std")
                if getattr(cfg, k) is not None
            }
            model = build_tiny(cfg.preset, seed=cfg.seed, point_head=cfg.point_head, **extra)
            model.load_state_dict(state["model"])
            return model.to(device).eval()
    from lite3r.models.registry import load_model

    return load_model(model_name, weights=weights, device=device).eval()


# --------------------------------------------------------------------------------------------------
# ground-truth matches and baselines
# --------------------------------------------------------------------------------------------------


def project_ref_pixels(
    ref_px: np.ndarray,
    depth: np.ndarray,
    valid: np.ndarray,
    K: np.ndarray,
    E: np.ndarray,
    view: int,
    depth_tol: float = 0.05,
) -> tuple[np.ndarray, np.ndarray]:
    """GT position in ``view`` of the 3-D points seen at view-0 pixels ``ref_px`` [M, 2] (bilinear GT
    depth), and a mask of the points that are valid, in frame and not occluded (GT depth of the view
    within ``depth_tol`` relative). depth/valid [S, H, W], K [S, 3, 3], E [S, 3, 4] (any world frame)."""
    d = np.where(valid[0], depth[0], 0.0)
    z0 = sample_depth(d, ref_px)
    X0 = np.stack(
        [(ref_px[:, 0] - K[0, 0, 2]) / K[0, 0, 0] * z0, (ref_px[:, 1] - K[0, 1, 2]) / K[0, 1, 1] * z0, z0], -1
    )
    R0, t0, Ri, ti = E[0, :, :3], E[0, :, 3], E[view, :, :3], E[view, :, 3]
    Xw = (X0 - t0) @ R0  # R0ᵀ (X0 − t0), row vectors
    Xi = Xw @ Ri.T + ti
    z = Xi[:, 2]
    with np.errstate(invalid="ignore", divide="ignore"):
        u = K[view, 0, 0] * Xi[:, 0] / z + K[view, 0, 2]
        v = K[view, 1, 1] * Xi[:, 1] / z + K[view, 1, 2]
    H, W = depth.shape[1:]
    ok = np.isfinite(z0) & (z > 1e-6) & (u > -0.5) & (u < W - 0.5) & (v > -0.5) & (v < H - 0.5)
    px = np.stack([u, v], -1)
    ui = np.clip(np.round(np.nan_to_num(u)), 0, W - 1).astype(int)
    vi = np.clip(np.round(np.nan_to_num(v)), 0, H - 1).astype(int)
    dz = depth[view, vi, ui]
    ok &= valid[view, vi, ui] & (np.abs(dz - z) <= depth_tol * np.abs(z))
    return px, ok


def training_ref_pixels(grid_hw: tuple[int, int], patch_size: int) -> np.ndarray:
    """The integer pixel the correspondence loss uses as each patch's point: (c·p + p//2, r·p + p//2)."""
    h, w = grid_hw
    r, c = np.divmod(np.arange(h * w), w)
    return np.stack([c * patch_size + patch_size // 2, r * patch_size + patch_size // 2], -1).astype(
        np.float64
    )


def gt_matches(
    depth: np.ndarray,
    valid: np.ndarray,
    K: np.ndarray,
    E: np.ndarray,
    view: int,
    grid_hw: tuple[int, int],
    patch_size: int,
    quantize: bool = False,
) -> ViewMatches:
    """GT matches of the view-0 patch points (:func:`training_ref_pixels`) in ``view``: exact
    reprojections, or (``quantize``) the centre of the patch that contains them — what a perfect
    top-1 patch classifier gives."""
    ref = training_ref_pixels(grid_hw, patch_size)
    px, ok = project_ref_pixels(ref, depth, valid, K, E, view)
    px = px[ok]
    if quantize:
        px = (np.floor((px + 0.5) / patch_size) + 0.5) * patch_size - 0.5
    return ViewMatches(ref[ok], px)


def random_translation_poses(S: int, rng: np.random.Generator) -> np.ndarray:
    """Identity rotations, view 0 at the origin, other views at random unit translations."""
    E = np.tile(np.eye(4)[:3], (S, 1, 1))
    t = rng.normal(size=(S - 1, 3))
    E[1:, :, 3] = t / np.linalg.norm(t, axis=1, keepdims=True)
    return E


def match_diagnostics(
    m: ViewMatches, from_ref_logp: np.ndarray, depth, valid, K, E, view, grid_hw, patch_size
) -> dict[str, float]:
    """Kept matches vs GT (in patch units) and the top-1 patch accuracy of every view-0 query."""
    out = {"matches": float(len(m))}
    px, ok = project_ref_pixels(m.ref_px, depth, valid, K, E, view)
    if ok.any():
        err = np.linalg.norm(m.view_px[ok] - px[ok], axis=1) / patch_size
        out.update({"within_half_patch": float(np.mean(err < 0.5)), "within_1_patch": float(np.mean(err < 1.0)),
                    "err_median_patches": float(np.median(err)), "with_gt": float(ok.mean())})  # fmt: skip
    ref = training_ref_pixels(grid_hw, patch_size)
    gpx, gok = project_ref_pixels(ref, depth, valid, K, E, view)
    if gok.any():
        w = grid_hw[1]
        col = np.floor((gpx[gok, 0] + 0.5) / patch_size)
        row = np.floor((gpx[gok, 1] + 0.5) / patch_size)
        target = (row * w + col).astype(int)
        q = np.nonzero(gok)[0]
        best = from_ref_logp[q].argmax(1)
        moving = target != q
        out["top1_all_queries"] = float(np.mean(best == target))
        # the zero-motion prior (RoPE gives every view the same positions): how much of top-1 it explains
        out["top1_zero_motion_matcher"] = float(np.mean(~moving))
        out["pred_same_position"] = float(np.mean(best == q))
        if moving.any():
            out["top1_moving_queries"] = float(np.mean(best[moving] == target[moving]))
    return out


# --------------------------------------------------------------------------------------------------
# the evaluation
# --------------------------------------------------------------------------------------------------


def _pose_row(gt_e: np.ndarray, E: np.ndarray, extra: dict | None = None) -> dict[str, float]:
    from lite3r.eval.metrics import pose_metrics

    return {k: pose_metrics(E, gt_e, (5, 15, 30))[k] for k in POSE_KEYS} | (extra or {})


def _mean_rows(rows: list[dict]) -> dict[str, float]:
    keys = sorted({k for r in rows for k in r})
    return {k: float(np.nanmean([r.get(k, np.nan) for r in rows])) for k in keys} | {"n": len(rows)}


@torch.no_grad()
def run(args) -> dict:
    from lite3r.eval import metrics as M

    from .data.synthetic import SynthConfig, render_batch, split_seeds

    dev = torch.device(args.device)
    model = load_any(args.weights, args.model, dev)
    agg = model.aggregator
    ps = agg.patch_size
    size = args.image_size or agg.cfg.img_size
    views = sorted(set(args.views))
    if views[0] < 2:
        raise InputError("pose metrics need at least 2 views per scene")
    base = MatchPoseConfig(
        layers=tuple(args.layers), heads=None if args.heads is None else tuple(args.heads),
        direction=args.direction, mutual=not args.no_mutual, drop_same_position=args.drop_same_position, min_confidence=args.min_confidence,
        refine_radius=args.refine_radius, ransac_threshold=args.ransac_threshold,
        procrustes_threshold=args.procrustes_threshold, refine=not args.no_refine,
        bundle_adjust=args.bundle_adjust, ba_pixel_sigma=args.ba_pixel_sigma, ba_depth_sigma=args.ba_depth_sigma,
    )  # fmt: skip
    seeds = split_seeds(args.split, args.scenes, start=args.start)
    synth = SynthConfig(supersample=args.supersample)
    rows = defaultdict(list)  # (S, name) → per-scene metric dicts
    t0 = time.perf_counter()
    t_model = 0.0
    t_solve = defaultdict(float)
    for bi in range(0, len(seeds), args.batch):
        batch = render_batch(seeds[bi : bi + args.batch], max(views), size, dev, synth)
        for b in range(len(batch)):
            gt_d_all = batch.depth[b].double().cpu().numpy()
            gt_v_all = batch.valid[b].cpu().numpy()
            gt_k_all = batch.intrinsics[b].double().cpu().numpy()
            gt_e_all = batch.extrinsics[b].double().cpu().numpy()
            for S in views:
                gt_d, gt_v, gt_k, gt_e = gt_d_all[:S], gt_v_all[:S], gt_k_all[:S], gt_e_all[:S]
                images = batch.images[b : b + 1, :S]
                H, W = images.shape[-2:]
                grid = (H // ps, W // ps)
                tm = time.perf_counter()
                feats, to_ref, from_ref = encode_with_match_scores(model, images, base)
                cams = model.decode_cameras(feats, (H, W))
                depth, _ = model.decode_depth(feats, images)
                t_model += time.perf_counter() - tm
                head_e = cams.extrinsics[0].double().cpu().numpy()
                pk = cams.intrinsics[0].double().cpu().numpy()
                pd = depth[0].double().cpu().numpy()
                tr, fr = to_ref[0].double().cpu().numpy(), from_ref[0].double().cpu().numpy()
                rows[(S, "camera_head")].append(_pose_row(gt_e, head_e))
                rows[(S, "identity")].append(_pose_row(gt_e, np.tile(np.eye(4)[:3], (S, 1, 1))))
                rng = np.random.default_rng(seeds[bi + b])
                draws = [{k: M.pose_metrics(random_translation_poses(S, rng), gt_e, (5, 15, 30))[k] for k in POSE_KEYS}
                         for _ in range(RANDOM_T_DRAWS)]  # fmt: skip
                rows[(S, "identity_rand_t")].append(_mean_rows(draws))
                model_m = [None] + [patch_matches(tr[i], fr[i], grid, ps, base) for i in range(1, S)]
                sources = {
                    "readout": (model_m, pd, pk),
                    "gt_depth": (model_m, gt_d * gt_v, gt_k),
                    "oracle_patch": ([None] + [gt_matches(gt_d, gt_v, gt_k, gt_e, i, grid, ps, True)
                                               for i in range(1, S)], gt_d * gt_v, gt_k),
                    "oracle_exact": ([None] + [gt_matches(gt_d, gt_v, gt_k, gt_e, i, grid, ps, False)
                                               for i in range(1, S)], gt_d * gt_v, gt_k),
                }  # fmt: skip
                for solver in args.solvers:
                    cfg = dataclasses.replace(base, solver=solver)
                    for src, (mm, d, k) in sources.items():
                        ts = time.perf_counter()
                        res = estimate_poses(mm, d[0], k, cfg, ps, depths=d, fallback=head_e)
                        t_solve[solver] += time.perf_counter() - ts
                        extra = {"solved": float(res.solved[1:].mean()), "matches": float(res.num_matches[1:].mean()),
                                 "inliers": float(res.num_inliers[1:].mean())}  # fmt: skip
                        rows[(S, f"{src}/{solver}")].append(_pose_row(gt_e, res.extrinsics, extra))
                diag = [
                    match_diagnostics(model_m[i], fr[i], gt_d, gt_v, gt_k, gt_e, i, grid, ps)
                    for i in range(1, S)
                ]
                rows[(S, "match_diagnostics")].append(_mean_rows(diag))
                dep = {}
                for pol in ("lsq_scene", "lsq_view"):
                    dm = M.depth_metrics(pd, gt_d, gt_v, policy=pol)
                    cm = M.depth_metrics(np.ones_like(gt_d), gt_d, gt_v, policy=pol)
                    dep |= {f"abs_rel_{pol}": dm["abs_rel"], f"delta1_{pol}": dm["delta1"],
                            f"const_abs_rel_{pol}": cm["abs_rel"]}  # fmt: skip
                mask = gt_v & (gt_d > 0)
                sv = M.fit_depth_scale(pd, gt_d, mask, "lsq_view")
                dep["log_scale_std"] = float(np.nanstd(np.log(sv)))
                rows[(S, "depth")].append(dep)
        done = min(bi + args.batch, len(seeds))
        print(f"[match_pose_eval] {done}/{len(seeds)} scenes, {time.perf_counter() - t0:.0f} s", file=sys.stderr,
              flush=True)  # fmt: skip
    results = {f"{name}/{S}": _mean_rows(r) for (S, name), r in rows.items()}
    return {
        "weights": args.weights, "model": args.model, "split": args.split, "scenes": len(seeds),
        "seeds": [seeds[0], seeds[-1]], "views": views, "image_size": size, "supersample": args.supersample,
        "device": str(dev), "match_pose_config": dataclasses.asdict(base), "solvers": list(args.solvers),
        "seconds": round(time.perf_counter() - t0, 1), "model_seconds": round(t_model, 2),
        "solver_seconds": {k: round(v, 2) for k, v in t_solve.items()}, "results": results,
    }  # fmt: skip


def table(summary: dict) -> str:
    from benchmarks.provenance import markdown_table

    cols = ["row", "S", "auc@30", "rra@15", "rta@15", "rra@30", "rta@30", "rot_err_median", "trans_err_median",
            "solved", "inliers"]  # fmt: skip
    res = summary["results"]
    pose_rows, diag_rows, depth_rows = [], [], []
    for S in summary["views"]:
        names = ["camera_head", "identity", "identity_rand_t"] + [
            f"{src}/{s}"
            for s in summary["solvers"]
            for src in ("readout", "gt_depth", "oracle_patch", "oracle_exact")
        ]
        for n in names:
            r = res[f"{n}/{S}"]
            pose_rows.append({"row": n, "S": S, **{c: r.get(c, "") for c in cols[2:]}})
        d = res[f"match_diagnostics/{S}"]
        diag_rows.append(
            {
                "S": S,
                **{
                    k: d.get(k, float("nan"))
                    for k in (
                        "matches",
                        "top1_all_queries",
                        "top1_zero_motion_matcher",
                        "pred_same_position",
                        "top1_moving_queries",
                        "within_half_patch",
                        "within_1_patch",
                        "err_median_patches",
                    )
                },
            }
        )
        d = res[f"depth/{S}"]
        depth_rows.append({"S": S, **{k: d[k] for k in ("abs_rel_lsq_scene", "abs_rel_lsq_view", "const_abs_rel_lsq_scene",
                           "const_abs_rel_lsq_view", "delta1_lsq_scene", "delta1_lsq_view", "log_scale_std")}})  # fmt: skip
    head = (
        f"SynthMV {summary['split']} split, {summary['scenes']} scenes, {summary['image_size']} px, weights "
        f"{summary['weights']}; match read-out {summary['match_pose_config']}. Pose: all pairs, per-scene means; "
        "errors in degrees; unsolved views keep the camera head's pose.\n\n"
    )
    return (
        head
        + markdown_table(pose_rows, cols)
        + "\nModel matches (view i ↔ view 0, per view; distances in patches):\n\n"
        + markdown_table(diag_rows)
        + "\nDepth (AbsRel / δ1, one LSQ scale per scene vs per view; const = constant depth):\n\n"
        + markdown_table(depth_rows)
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m lite3r.training.match_pose_eval", description=__doc__.splitlines()[0]
    )
    p.add_argument("--weights", help="weights folder/file, or a train_tiny checkpoint.pt / --out folder "
                   "(default: the registry's lite3r-tiny)")  # fmt: skip
    p.add_argument("--model", default="lite3r-tiny", help="registry name (a VGGT-family model)")
    p.add_argument("--split", choices=["val", "test"], default="val")
    p.add_argument("--scenes", type=int, default=32)
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--views", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--image-size", type=int, help="default: the model's training size")
    p.add_argument("--supersample", type=int, default=2, help="SynthMV colour supersampling (train_tiny: 2)")
    p.add_argument("--batch", type=int, default=8, help="scenes rendered per batch")
    p.add_argument("--device", default="cpu")
    p.add_argument("--layers", type=int, nargs="+", default=[-1], help="global blocks whose logits are used")
    p.add_argument("--heads", type=int, nargs="+", default=[0], help="attention heads used")
    p.add_argument("--all-heads", dest="heads", action="store_const", const=None)
    p.add_argument("--direction", choices=["from_ref", "to_ref", "both"], default="from_ref")
    p.add_argument("--no-mutual", action="store_true")
    p.add_argument(
        "--drop-same-position", action="store_true", help="drop matches to the query's own grid cell"
    )
    p.add_argument("--min-confidence", type=float, default=0.0)
    p.add_argument("--refine-radius", type=int, default=1)
    p.add_argument("--ransac-threshold", type=float, default=0.5, help="in patch sizes")
    p.add_argument("--procrustes-threshold", type=float, default=0.1)
    p.add_argument("--no-refine", action="store_true")
    p.add_argument("--solvers", nargs="+", choices=SOLVERS, default=list(SOLVERS))
    p.add_argument("--bundle-adjust", action="store_true", help="refine poses and view-0 depths jointly")
    p.add_argument("--ba-pixel-sigma", type=float, default=0.25, help="reprojection sigma, in patch sizes")
    p.add_argument("--ba-depth-sigma", type=float, default=1.0, help="log-depth prior sigma")
    p.add_argument(
        "--ba-refine-focal", action="store_true", help="bundle adjustment also fits one focal factor"
    )
    p.add_argument(
        "--out", help="result JSON (default: $OUT/match_pose_eval.json or benchmarks/results/tiny/)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    summary = run(a)
    text = table(summary)
    print(text)
    from benchmarks.provenance import results_dir, write_result

    path = Path(a.out) if a.out else results_dir("tiny") / "match_pose_eval.json"
    write_result(path, summary, text)
    print(f"wrote {path} and {path.with_suffix('.md')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
