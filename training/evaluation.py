"""Model-level evaluation for distillation reports: teacher vs students on held-out scenes.

Each model is evaluated as it would be deployed: the base weights (+ the adapter, converted by
:func:`lite3r.adapters.load_adapter`) with the engine's precision policy
(:func:`lite3r.quant.precision.apply_precision`: bf16 trunk / fp32 heads, or real FP8 GEMMs), on
scenes no training run has seen (SynthMV test split, or the BlendedMVS validation PIDs). Metrics come
from :func:`lite3r.eval.evaluate.evaluate_sample`: depth AbsRel / δ1 with one least-squares scale per
scene, Chamfer after Umeyama Sim(3), and all-pairs pose AUC — pooled over the pairs of all scenes (as
the VGGT / DA3 protocol) as well as averaged per scene.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from lite3r.adapters import load_adapter

# flattened evaluate_sample key → report name (per-scene means)
SCENE_KEYS = {
    "depth.lsq_scene.abs_rel": "depth_absrel",
    "depth.lsq_scene.delta1": "depth_delta1",
    "points.depth.all.chamfer": "chamfer",
    "points.depth.all.fscore@1%diag": "fscore_1pct",
    "pose.auc@30": "auc30_scene_mean",
}


def deployable(
    base: nn.Module,
    precision: str,
    device: torch.device,
    *,
    adapter: str | None = None,
    base_hash: str | None = None,
    conversion: dict | None = None,
    convert=None,
) -> nn.Module:
    """A copy of ``base``, converted (adapter or bare conversion) and set to ``precision`` on ``device``."""
    from lite3r.quant.precision import apply_precision

    # Convert on the target device: the SLA backend is chosen from the model's device (CUDA → Triton).
    model = copy.deepcopy(base).float().to(device)
    if adapter is not None:
        if base_hash is None:
            raise ValueError("loading an adapter needs the base hash")
        model = load_adapter(model, adapter, base_hash)
    elif conversion is not None:
        if convert is None:
            from .components import convert
        model = convert(model, dict(conversion))
    apply_precision(model, precision, device)
    return model.eval()


@torch.no_grad()
def evaluate_model(
    model: nn.Module, scenes, num_scenes: int, views: int, device: torch.device
) -> dict[str, Any]:
    """Metrics over scenes ``0 … num_scenes − 1`` of ``scenes`` (a distill ``Scenes`` split) at S = views."""
    from lite3r.eval import metrics as M
    from lite3r.eval.evaluate import GroundTruth, MetricConfig, Prediction, evaluate_sample, flatten

    from .components import predictions_numpy

    # 50 k sampled points per cloud for Umeyama and the KD-tree metrics: ~0.2 s a scene, so that six
    # models × 48 scenes fit the benchmark's budget (seeded, identical for every model).
    cfg = MetricConfig(
        depth_policies=("lsq_scene",),
        lite3r_reference=False,
        point_sources=("depth",),
        max_points=50_000,
        align_max_points=50_000,
    )
    per_scene: list[dict[str, float]] = []
    rot, trans = [], []
    t0 = time.perf_counter()
    for i in range(num_scenes):
        batch = scenes.batch(i, 1, (views, views))
        images = batch["images"].to(device)
        if getattr(model, "input_normalization", "none") == "imagenet":
            from .distill import IMAGENET_MEAN, IMAGENET_STD

            mean = torch.tensor(IMAGENET_MEAN, device=device).view(3, 1, 1)
            std = torch.tensor(IMAGENET_STD, device=device).view(3, 1, 1)
            images = (images - mean) / std
        preds = model(images)
        depth, conf, ext, intr = predictions_numpy(preds, tuple(images.shape[-2:]))
        gt = GroundTruth(
            extrinsics=batch["extrinsics"][0].double().cpu().numpy(),
            intrinsics=batch["intrinsics"][0].double().cpu().numpy(),
            depth=batch["depth"][0].float().cpu().numpy(),
            valid=batch["valid"][0].cpu().numpy(),
        )
        pred = Prediction(
            depth=depth[0],
            depth_conf=None if conf is None else conf[0],
            extrinsics=ext[0],
            intrinsics=intr[0],
        )
        flat = flatten(evaluate_sample(pred, gt, cfg))
        per_scene.append({short: flat[key] for key, short in SCENE_KEYS.items() if key in flat})
        r, t = M.relative_pose_errors(ext[0], gt.extrinsics)
        rot.append(r)
        trans.append(t)
    rot_all, trans_all = np.concatenate(rot), np.concatenate(trans)
    summary = {k: float(np.nanmean([s[k] for s in per_scene if k in s])) for k in SCENE_KEYS.values()}
    for tau in (5, 15, 30):
        summary[f"auc{tau}"] = M.pose_auc(rot_all, trans_all, tau)
    summary["scenes"] = num_scenes
    summary["views"] = views
    summary["seconds"] = time.perf_counter() - t0
    return {"summary": summary, "per_scene": per_scene}


class CachedScenes:
    """Held-out scenes rendered once and reused for every model evaluated (same tensors for all)."""

    def __init__(self, scenes, num_scenes: int, views: int) -> None:
        self._batches = [scenes.batch(i, 1, (views, views)) for i in range(num_scenes)]

    def batch(self, g: int, batch_size: int, views: tuple[int, int]) -> dict[str, torch.Tensor]:
        b = self._batches[g]
        if batch_size != 1 or b["images"].shape[1] != views[0]:
            raise ValueError("CachedScenes holds single scenes at one view count")
        return b


def compare_to_teacher(student: dict[str, float], teacher: dict[str, float]) -> dict[str, Any]:
    """The acceptance checks: AbsRel and Chamfer within 5 % of the teacher, AUC@30 within 1 point."""
    rel = {k: student[k] / teacher[k] - 1.0 for k in ("depth_absrel", "chamfer")}
    auc = student["auc30"] - teacher["auc30"]
    return {
        "depth_absrel_rel_change": rel["depth_absrel"],
        "chamfer_rel_change": rel["chamfer"],
        "auc30_change_points": auc,
        "pass": bool(rel["depth_absrel"] <= 0.05 and rel["chamfer"] <= 0.05 and auc >= -1.0),
    }
