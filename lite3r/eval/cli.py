"""Evaluate one or two model variants on a dataset (or the SynthMV test split) with the same samples.

Examples::

    lite3r eval --dataset blendedmvs --root /data/BlendedMVS --model vggt-1b --views 8 \\
        --variant dense:bf16 --variant lite3r:fp8:sla0.1 --out runs/bmvs8
    lite3r eval --dataset dtu64 --root /data/dtu64 --model da3-large --views 64 --out runs/dtu64
    lite3r eval --dataset synthmv --views 8 --model lite3r-tiny --out runs/synth8
    lite3r eval --protocol lite3r-reference --dataset blendedmvs --root … --model vggt-1b --out …

Writes ``OUT/manifest.json`` (the exact views of every sample; pass it back with ``--manifest`` to
evaluate another variant on identical samples), ``OUT/per_sample/<variant>/<sample>.json``,
``OUT/summary.json`` + ``summary.md`` (mean with 95 % bootstrap CI per metric), and with two variants
``OUT/comparison.json`` + ``.md`` (paired differences with bootstrap CIs).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)

DATASET_NAMES = ("blendedmvs", "dtu_train", "dtu_test", "dtu64", "synthmv")
PROTOCOLS = ("lite3r", "lite3r-reference")


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = p.add_argument_group("data")
    d.add_argument("--dataset", choices=DATASET_NAMES, required=True)
    d.add_argument("--root", help="dataset root folder (not needed for synthmv)")
    d.add_argument(
        "--split",
        help="dataset split (blendedmvs: val|train|all|LIST_FILE; dtu*: test|all; synthmv: test|val)",
    )
    d.add_argument(
        "--scenes", nargs="+", help="evaluate exactly these scenes (BlendedMVS PIDs / DTU scan numbers)"
    )
    d.add_argument(
        "--views", type=int, default=None, help="views per sample S (default 8; reference protocol 2)"
    )
    d.add_argument(
        "--strategy",
        choices=("random", "reference", "pair", "all"),
        help="view sampling (default: per dataset)",
    )
    d.add_argument("--samples-per-scene", type=int, default=1)
    d.add_argument("--max-samples", type=int, help="stop after this many samples (scenes in sorted order)")
    d.add_argument("--seed", type=int, default=0, help="view-sampling and bootstrap seed")
    d.add_argument("--manifest", help="re-use the samples of an earlier run (its manifest.json)")
    d.add_argument(
        "--normalization", choices=("vggt", "lite3r_reference", "none"), help="per-sample GT scale"
    )
    d.add_argument("--gt-mask", choices=("valid", "lite3r_reference"), help="BlendedMVS GT mask")
    d.add_argument(
        "--eval-crop", type=int, metavar="PX", help="short side → PX, centre crop PX×PX before the model"
    )
    d.add_argument("--synth-size", type=int, default=224, help="SynthMV image size")
    d.add_argument("--synth-scenes", type=int, help="SynthMV: number of scenes (default: the whole split)")
    d.add_argument(
        "--synth-tier",
        choices=("easy", "medium", "hard", "ood"),
        help="SynthMV difficulty tier (default: per seed)",
    )
    d.add_argument("--dtu-light", type=int, help="dtu_train lighting index (default 3)")

    m = p.add_argument_group("model")
    m.add_argument(
        "--model",
        default="vggt-1b",
        help="registry name (vggt-1b, da3-large, lite3r-tiny) or a reference config JSON",
    )
    m.add_argument("--weights", help="checkpoint file / folder / HF repo id (default: the registry's)")
    m.add_argument("--random-weights", action="store_true", help="random weights (pipeline checks only)")
    m.add_argument("--variant", action="append", metavar="SPEC",
                   help="LABEL[:fp32|bf16|fp8][:dense|sla<keep>][:adapter=PATH][:compile[=MODE]|cudagraphs][:sdpa=B]"
                   "[:keys=tma|gather] (all tokens: lite3r.eval.variants); "
                   "give two to compare (default dense:bf16)")  # fmt: skip
    m.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    m.add_argument("--input-size", type=int, help="model input size (default: the model's)")

    e = p.add_argument_group("metrics")
    e.add_argument("--protocol", choices=PROTOCOLS, default="lite3r",
                   help="lite3r-reference presets the paper's protocol: 2 views, random anchor, 518² crop, "
                   "reference normalisation and GT mask, first 32 scenes")  # fmt: skip
    e.add_argument(
        "--depth-policies", default="lsq_scene,median_view", help="comma list of depth scale policies"
    )
    e.add_argument("--point-alignment", choices=("points", "centers", "centers_ransac"), default="points")
    e.add_argument(
        "--fscore-abs",
        type=float,
        nargs="*",
        default=(),
        help="extra absolute F-score thresholds (scene units)",
    )
    e.add_argument("--max-points", type=int, default=200_000, help="per-cloud subsample for point metrics")
    e.add_argument("--no-reference-metrics", action="store_true", help="skip the Lite3R reference metrics")
    e.add_argument("--bootstrap", type=int, default=10_000, help="bootstrap resamples for CIs")

    o = p.add_argument_group("output")
    o.add_argument("--out", required=True, help="output folder")
    o.add_argument("--no-resume", action="store_true", help="recompute samples already in --out")


def _apply_protocol(args) -> None:
    if args.protocol == "lite3r-reference":
        args.views = args.views or 2
        args.strategy = args.strategy or "random"
        args.eval_crop = args.eval_crop or 518
        args.normalization = args.normalization or "lite3r_reference"
        if args.dataset == "blendedmvs":
            args.gt_mask = args.gt_mask or "lite3r_reference"
            args.split = args.split or "all"  # the reference evaluates the first 32 sorted scenes
            args.max_samples = args.max_samples or 32
    args.views = args.views or 8


def _open_dataset(args):
    from lite3r.eval.datasets import open_dataset

    opts = {"normalization": args.normalization}
    if args.dataset == "blendedmvs":
        opts.update(split=args.split or "val", gt_mask=args.gt_mask, scenes=args.scenes)
    elif args.dataset == "synthmv":
        opts.update(
            split=args.split or "test",
            num_views=args.views,
            image_size=args.synth_size,
            num_scenes=args.synth_scenes,
            device=args.device or "cpu",
        )
    else:
        split = [int(str(s).removeprefix("scan")) for s in args.scenes] if args.scenes else args.split
        opts.update(split=split)
        if args.dataset == "dtu_train":
            opts["light"] = args.dtu_light
    return open_dataset(args.dataset, args.root, **opts)


def _load_provenance():
    """benchmarks/provenance.py of this checkout (absent from a wheel: then None)."""
    try:
        from benchmarks import provenance

        return provenance
    except ImportError:
        import importlib.util

        import lite3r

        path = Path(lite3r.__file__).resolve().parents[1] / "benchmarks" / "provenance.py"
        if not path.is_file():
            return None
        spec = importlib.util.spec_from_file_location("_lite3r_provenance", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod


def run(args) -> int:
    import torch

    from lite3r.errors import InputError
    from lite3r.eval.evaluate import MetricConfig
    from lite3r.eval.manifest import Manifest, build_manifest
    from lite3r.eval.runner import EvalOptions, Predictor, evaluate_variant, write_summaries
    from lite3r.eval.variants import ModelSource, build_reconstructor, parse_variants

    _apply_protocol(args)
    variants = parse_variants(args.variant)
    if len(variants) > 2:
        raise InputError(f"{len(variants)} variants given", "compare at most two per run (re-use --manifest)")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    dataset = _open_dataset(args)
    if args.manifest:
        manifest = Manifest.load(args.manifest)
        if manifest.dataset.get("dataset") != dataset.name:
            raise InputError(
                f"manifest {args.manifest} is for {manifest.dataset.get('dataset')}, not {dataset.name}"
            )
    else:
        manifest = build_manifest(
            dataset, args.views, args.seed, args.strategy, args.samples_per_scene, args.max_samples
        )
    manifest.save(out / "manifest.json")
    if manifest.skipped:
        log.warning("%d scene(s) skipped (listed in manifest.json)", len(manifest.skipped))

    policies = tuple(p.strip() for p in args.depth_policies.split(",") if p.strip())
    options = EvalOptions(
        eval_crop=args.eval_crop,
        metrics=MetricConfig(
            depth_policies=policies,
            fscore_absolute=tuple(args.fscore_abs),
            point_alignment=args.point_alignment,
            max_points=args.max_points,
            seed=args.seed,
            lite3r_reference=not args.no_reference_metrics,
        ),
        bootstrap=args.bootstrap,
        seed=args.seed,
    )
    source = ModelSource(args.model, args.weights, args.random_weights, args.seed)
    baseline = args.model.removeprefix("baseline:") if args.model.startswith("baseline:") else None
    if baseline and args.variant:
        raise InputError("--variant does not apply to a calibration baseline", "drop --variant")
    records, predictors = {}, {}
    for v in variants:
        if baseline:
            pred, rc = Predictor.baseline(baseline, args.input_size, args.seed), None
            v = parse_variants([baseline])[0]
        else:
            rc = build_reconstructor(source, v, device, args.input_size)
            pred = Predictor.from_reconstructor(rc, v)
            log.info("variant %s: %s", v.label, rc.describe())
        records[v.label] = evaluate_variant(
            pred,
            dataset,
            manifest,
            options,
            out,
            v.label,
            resume=not args.no_resume,
            progress=lambda i, n, sid, lab=v.label: print(
                f"[{lab}] {i}/{n} {sid}", file=sys.stderr, flush=True
            ),
        )
        predictors[v.label] = pred.info
        del rc, pred
        if device.startswith("cuda"):
            torch.cuda.empty_cache()

    prov = _load_provenance()
    header = {
        "title": f"{dataset.name} · {args.model} · S={manifest.num_views} · protocol {args.protocol}",
        "protocol": args.protocol,
        "dataset": manifest.dataset,
        "num_samples": len(manifest.samples),
        "num_views": manifest.num_views,
        "strategy": manifest.strategy,
        "model": source.describe(),
        "variants": predictors,
        "options": options.to_dict(),
        "provenance": prov.provenance() if prov else None,
    }
    write_summaries(out, records, options, header)
    print((out / "summary.md").read_text())
    print(f"wrote {out / 'summary.json'}")
    return 0
