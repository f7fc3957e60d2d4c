"""Does keeping every frame's special tokens attended help SLA? lite3r-tiny on the SynthMV test split.

    python benchmarks/probes/sla_special_tokens.py [--scenes 16] [--views 8] [--keeps 0.1 0.2 0.3] [--out DIR]

The trained model's heads put up to half their attention on the camera/register tokens
(``tiny/attention/cross_frame_attention_shipped_100047d``), so dropping them from the sparse branch
could cost accuracy. For each kept fraction, the global sites are converted to SLA with and without
``keep_special_tokens`` (block 128 × 64, complement linear branch with a zero projection, i.e. the
sparse branch alone, as before any distillation; PyTorch reference backend, so it runs on CPU), and
compared with the dense model on the same scenes:

* ``abs_rel`` / ``auc@30``: depth (one LSQ scale per scene) and pose AUC@30 against ground truth;
* ``depth_dev``: mean |d_sla − d_dense| / d_dense over GT-valid pixels (how far the sparse model moves
  from the dense one, independent of how good the dense one is);
* ``rot_dev_deg``: mean angle between the SLA and dense relative rotations of all view pairs.

Results: JSON + markdown via benchmarks/provenance.py in ``--out`` (default $OUT or benchmarks/results).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from provenance import markdown_table, write_result

from lite3r.convert import Lite3RConfig, convert


def _relative_rotations(ext: np.ndarray) -> np.ndarray:
    """[S, 3, 4] world-to-camera → [S, S, 3, 3] R_i R_jᵀ."""
    R = ext[:, :, :3]
    return np.einsum("iab,jcb->ijac", R, R)


def _rot_dev_deg(ext_a: np.ndarray, ext_b: np.ndarray) -> float:
    ra, rb = _relative_rotations(ext_a), _relative_rotations(ext_b)
    d = np.einsum("ijab,ijcb->ijac", ra, rb)  # ra · rbᵀ
    cos = np.clip((np.trace(d, axis1=2, axis2=3) - 1) / 2, -1.0, 1.0)
    S = ext_a.shape[0]
    off = ~np.eye(S, dtype=bool)
    return float(np.degrees(np.arccos(cos))[off].mean())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--scenes", type=int, default=16)
    ap.add_argument("--views", type=int, default=8)
    ap.add_argument("--keeps", type=float, nargs="*", default=[0.1, 0.2, 0.3])
    ap.add_argument("--weights", default=None, help="model folder/file (default: the registry's lite3r-tiny)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    from lite3r.eval.evaluate import GroundTruth, Prediction, evaluate_sample
    from lite3r.training.data.synthetic import SynthConfig, render_batch, split_seeds
    from lite3r.training.quality_report import KEYS, _get, _metric_config, load, predict

    dev = torch.device("cpu")
    dense = load(args.weights, "lite3r-tiny", dev).eval()
    variants = {"dense": dense}
    for keep in args.keeps:
        for special in (True, False):
            cfg = Lite3RConfig(
                keep_ratio=keep, keep_special_tokens=special, proj_init="zero", backend="torch"
            )
            variants[f"sla{keep:g}{'' if special else '-nospecial'}"] = convert(copy.deepcopy(dense), cfg)
    seeds = split_seeds("test", args.scenes)
    batch = render_batch(seeds, args.views, 224, dev, SynthConfig())
    mcfg = _metric_config(20_000)
    S = args.views
    preds, seconds = {}, {}
    for name, model in variants.items():
        t0 = time.perf_counter()
        preds[name] = [predict(model, batch.images[i : i + 1], "fp32") for i in range(len(seeds))]
        seconds[name] = time.perf_counter() - t0
        print(f"[{name}] {seconds[name]:.1f} s", file=sys.stderr, flush=True)
    gt_d, gt_v = batch.depth.cpu().numpy(), batch.valid.cpu().numpy()
    gt_e = batch.extrinsics.cpu().numpy().astype(np.float64)
    gt_k = batch.intrinsics.cpu().numpy().astype(np.float64)
    rows = []
    for name in variants:
        m_rows, dev_depth, dev_rot = [], [], []
        for i in range(len(seeds)):
            depth, conf, ext, intr = (x[0] for x in preds[name][i])
            m = evaluate_sample(
                Prediction(depth, conf, ext, intr), GroundTruth(gt_e[i], gt_k[i], gt_d[i], gt_v[i]), mcfg
            )
            m_rows.append({k: _get(m, p) for k, p in KEYS.items()})
            d_dense, _, e_dense, _ = (x[0] for x in preds["dense"][i])
            valid = gt_v[i] > 0
            dev_depth.append(float(np.mean(np.abs(depth[valid] - d_dense[valid]) / d_dense[valid])))
            dev_rot.append(_rot_dev_deg(ext.astype(np.float64), e_dense.astype(np.float64)))
        keep = "–" if name == "dense" else name[3:].split("-")[0]
        rows.append({
            "variant": name,
            "keep": keep,
            "special_kept": "–" if name == "dense" else ("no" if name.endswith("nospecial") else "yes"),
            "abs_rel": float(np.nanmean([r["abs_rel"] for r in m_rows])),
            "auc@30": float(np.nanmean([r["auc@30"] for r in m_rows])),
            "depth_dev": float(np.mean(dev_depth)),
            "rot_dev_deg": float(np.mean(dev_rot)),
            "seconds": round(seconds[name], 1),
        })  # fmt: skip
        print(rows[-1], flush=True)
    result = {"scenes": len(seeds), "views": S, "seeds": [seeds[0], seeds[-1]], "rows": rows,
              "sla": "block 128×64, complement linear branch, zero projection, torch backend, global sites"}  # fmt: skip
    out = Path(args.out or "benchmarks/results") / "sla_special_tokens.json"
    write_result(out, result, markdown_table(rows))
    print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
