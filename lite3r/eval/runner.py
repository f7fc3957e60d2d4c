"""Run model variants over a manifest of samples; write per-sample JSON, summaries and comparisons.

The model call is one function (:class:`Predictor`: preprocessed views → Reconstruction), so the same
loop runs the engine on a GPU, or a small model on the CPU in tests. For every sample:

1. the dataset loads the views (native resolution, normalised per sample);
2. an optional evaluation crop (``center_square``, the Lite3R reference protocol) is applied;
3. the views are preprocessed with the predictor's own rule, and the GT is mapped through the same
   per-view transforms (so the prediction is scored at the pixels the model saw);
4. :func:`lite3r.eval.evaluate.evaluate_sample` computes every metric.

Per-sample results are written as they finish (atomically), keyed by a hash of everything that
determines them, so an interrupted run resumes where it stopped and nothing computed is lost.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lite3r.eval.datasets.base import EvalDataset, center_square, ground_truth_at_model_resolution
from lite3r.eval.evaluate import GroundTruth, MetricConfig, Prediction, evaluate_sample, flatten
from lite3r.eval.manifest import Manifest
from lite3r.eval.stats import paired_comparison, summarize

log = logging.getLogger(__name__)

# (flattened key, column label) of the numbers the markdown tables show, in this order
KEY_METRICS = (
    ("pose.auc@3", "AUC@3"),
    ("pose.auc@5", "AUC@5"),
    ("pose.auc@30", "AUC@30"),
    ("pose.rra@5", "RRA@5"),
    ("pose.rta@5", "RTA@5"),
    ("ate.ate_rmse_rel", "ATE / diag"),
    ("depth.lsq_scene.abs_rel", "AbsRel (LS scene)"),
    ("depth.lsq_scene.delta1", "δ<1.25 (LS scene)"),
    ("depth.median_view.abs_rel", "AbsRel (median view)"),
    ("points.depth.all.chamfer", "Chamfer"),
    ("points.depth.all.fscore@1%diag", "F@1% diag"),
    ("points.depth.conf50.chamfer", "Chamfer (conf 50%)"),
    ("points.depth.conf50.fscore@1%diag", "F@1% diag (conf 50%)"),
    ("points.points.all.chamfer", "Chamfer (point head)"),
    ("lite3r_reference.pose.rot_err_deg", "ref rot_err°"),
    ("lite3r_reference.pose.trans_err", "ref trans_err"),
    ("lite3r_reference.depth.abs_rel", "ref AbsRel"),
    ("lite3r_reference.chamfer_l2", "ref Chamfer L2²"),
    ("lite3r_reference.fscore_5cm", "ref F@0.05"),
    ("run.total_ms", "time (ms)"),
)


@dataclass
class Predictor:
    """One model variant: ``fn(preprocessed views) → Reconstruction`` plus the preprocessing rule it
    expects and a description (model, precision, attention path that runs, device)."""

    rule: object  # lite3r.io.preprocess.PreprocessRule
    fn: Callable
    info: dict = field(default_factory=dict)
    needs_gt: bool = False  # calibration baselines (oracle) get the GT: fn(pre, gt)

    @classmethod
    def baseline(cls, name: str, input_size: int | None = None, seed: int = 0) -> Predictor:
        """``oracle`` or ``constant`` (lite3r.eval.baselines), with VGGT's preprocessing."""
        import functools

        from lite3r.errors import InputError
        from lite3r.eval import baselines
        from lite3r.io.preprocess import get_rule

        if name not in baselines.BASELINES:
            raise InputError(f"unknown baseline {name!r}", f"choose one of {', '.join(baselines.BASELINES)}")
        fn = functools.partial(baselines.oracle, seed=seed) if name == "oracle" else baselines.constant
        rule = get_rule("vggt_crop", input_size)
        return cls(rule, fn, {"model": f"baseline:{name}", "preprocess": rule.describe()}, needs_gt=True)

    @classmethod
    def from_reconstructor(cls, rc, variant=None) -> Predictor:
        info = {
            "model": rc.model_name,
            "precision": rc.precision,
            "attention": rc.attention,
            "compile": rc.compile,
            "device": str(rc.device),
            "preprocess": rc.rule.describe(),
        }
        if variant is not None:
            info["variant"] = variant.to_dict()
        return cls(rc.rule, rc.reconstruct, info)


@dataclass(frozen=True)
class EvalOptions:
    eval_crop: int | None = None  # center_square size (Lite3R reference protocol: 518), None = off
    metrics: MetricConfig = field(default_factory=MetricConfig)
    bootstrap: int = 10_000
    seed: int = 0

    def to_dict(self) -> dict:
        return {
            "eval_crop": self.eval_crop,
            "metrics": self.metrics.to_dict(),
            "bootstrap": self.bootstrap,
            "seed": self.seed,
        }


def _atomic_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1, default=_json_default)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.#-]+", "_", name)


def run_key(manifest: Manifest, options: EvalOptions, predictor_info: dict) -> str:
    blob = json.dumps([manifest.to_dict(), options.to_dict(), predictor_info], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def evaluate_one(predictor: Predictor, dataset: EvalDataset, spec, options: EvalOptions) -> dict:
    """Load, predict and score one manifest sample; returns the per-sample record."""
    from lite3r.io.preprocess import preprocess

    sample = dataset.load(spec.scene, spec.views)
    if options.eval_crop:
        sample = center_square(sample, options.eval_crop)
    pre = preprocess(sample.images, predictor.rule, workers=1)
    pre.paths = list(sample.image_paths) or pre.paths
    K, depth, valid = ground_truth_at_model_resolution(sample, pre.transforms)
    gt = GroundTruth(sample.extrinsics, K, depth, valid if depth is not None else None)
    rec = predictor.fn(pre, gt) if predictor.needs_gt else predictor.fn(pre)
    metrics = evaluate_sample(Prediction.from_reconstruction(rec), gt, options.metrics)
    timings = dict(rec.timings_ms or {})
    return {
        "sample_id": spec.sample_id,
        "scene": spec.scene,
        "views": list(spec.views),
        "image_size": list(pre.image_size),
        "normalization": sample.metadata.get("normalization"),
        "gt_scale": sample.metadata.get("scale"),
        "sample_metadata": {
            k: v for k, v in sample.metadata.items() if k in ("scene_hash", "family", "tier", "gt_mask")
        },
        "metrics": metrics,
        "run": {
            "total_ms": timings.get("total"),
            "timings_ms": timings,
            "peak_memory_bytes": rec.peak_memory_bytes,
            "attention": rec.attention,
            "precision": rec.precision,
            "device": rec.device,
        },
    }


def flatten_record(record: dict) -> dict[str, float]:
    flat = flatten(record["metrics"])
    total = record.get("run", {}).get("total_ms")
    if total is not None:
        flat["run.total_ms"] = float(total)
    return flat


def evaluate_variant(
    predictor: Predictor,
    dataset: EvalDataset,
    manifest: Manifest,
    options: EvalOptions,
    out_dir: Path,
    label: str,
    resume: bool = True,
    progress: Callable[[int, int, str], None] | None = None,
) -> dict[str, dict]:
    """Evaluate every manifest sample with ``predictor``; per-sample JSON under
    ``out_dir/per_sample/<label>/``. Returns {sample_id: record}."""
    key = run_key(manifest, options, predictor.info)
    folder = Path(out_dir) / "per_sample" / _safe(label)
    records: dict[str, dict] = {}
    n = len(manifest.samples)
    for i, spec in enumerate(manifest.samples):
        path = folder / f"{_safe(spec.sample_id)}.json"
        if resume and path.is_file():
            try:
                old = json.loads(path.read_text())
            except json.JSONDecodeError:
                old = {}
            if old.get("run_key") == key:
                records[spec.sample_id] = old
                continue
        record = evaluate_one(predictor, dataset, spec, options)
        record.update({"variant": label, "run_key": key, "predictor": predictor.info})
        _atomic_json(path, record)
        records[spec.sample_id] = record
        if progress:
            progress(i + 1, n, spec.sample_id)
        log.debug("%s %d/%d %s", label, i + 1, n, spec.sample_id)
    return records


# ---- summaries ----------------------------------------------------------------------------------------


def _fmt(x: float) -> str:
    if x is None or not np.isfinite(x):
        return "–"
    a = abs(x)
    return f"{x:.4f}" if a < 10 else f"{x:.2f}" if a < 1000 else f"{x:.0f}"


def summary_markdown(summaries: dict[str, dict], title: str = "") -> str:
    labels = list(summaries)
    lines = [f"### {title}", ""] if title else []
    lines.append("| metric | " + " | ".join(f"{lab} (mean [95% CI], n)" for lab in labels) + " |")
    lines.append("|---|" + "---|" * len(labels))
    keys = [(k, name) for k, name in KEY_METRICS if any(k in summaries[lab] for lab in labels)]
    for k, name in keys:
        cells = []
        for lab in labels:
            s = summaries[lab].get(k)
            cells.append(
                "–"
                if s is None
                else f"{_fmt(s['mean'])} [{_fmt(s['ci_low'])}, {_fmt(s['ci_high'])}], {s['n']}"
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def comparison_markdown(comp: dict, label_a: str, label_b: str) -> str:
    lines = [
        f"| metric | {label_a} | {label_b} | {label_b} − {label_a} [95% CI] | n |",
        "|---|---|---|---|---|",
    ]
    for k, name in KEY_METRICS:
        if k not in comp:
            continue
        c = comp[k]
        lines.append(
            f"| {name} | {_fmt(c['mean_a'])} | {_fmt(c['mean_b'])} | "
            f"{_fmt(c['diff'])} [{_fmt(c['ci_low'])}, {_fmt(c['ci_high'])}] | {c['n']} |"
        )
    return "\n".join(lines) + "\n"


def write_summaries(
    out_dir: Path,
    records: dict[str, dict[str, dict]],
    options: EvalOptions,
    header: dict,
) -> dict:
    """summary.json / summary.md (and comparison.json / .md for two variants) in ``out_dir``."""
    out_dir = Path(out_dir)
    flat = {lab: {sid: flatten_record(r) for sid, r in recs.items()} for lab, recs in records.items()}
    summaries = {lab: summarize(f, options.bootstrap, options.seed) for lab, f in flat.items()}
    result = {**header, "summary": summaries}
    labels = list(records)
    md = summary_markdown(summaries, header.get("title", ""))
    if len(labels) == 2:
        comp = paired_comparison(flat[labels[0]], flat[labels[1]], options.bootstrap, options.seed)
        result["comparison"] = {"a": labels[0], "b": labels[1], "metrics": comp}
        _atomic_json(out_dir / "comparison.json", result["comparison"])
        cmd = comparison_markdown(comp, labels[0], labels[1])
        (out_dir / "comparison.md").write_text(cmd)
        md += "\n### Paired difference (identical samples)\n\n" + cmd
    _atomic_json(out_dir / "summary.json", result)
    tmp = out_dir / "summary.md.tmp"
    tmp.write_text(md)
    os.replace(tmp, out_dir / "summary.md")
    return result
