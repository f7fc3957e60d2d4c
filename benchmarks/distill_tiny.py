"""Distil lite3r-tiny on the GPU and evaluate teacher / untrained student / students (≤ 9 min on an H100).

    python benchmarks/distill_tiny.py [--out DIR] [--budget-s 480] [--steps 600] [--test-scenes 48]

1. Loads lite3r-tiny (assets/lite3r-tiny, or --weights) as the teacher; converts it (SLA on the global
   sites, --keep kept) with FP8 fake quantisation of the trunk Linears (proj_lin stays bf16).
2. A short probe run measures the training step time, then the step counts are fitted to the budget:
   full distillation (QAT + attention KD), and two ablations: without distillation, without QAT.
3. Evaluates on the SynthMV test split at --eval-views views (scenes never seen in training), each
   model as deployed (engine precision policy): teacher dense bf16, teacher dense fp8, untrained
   student (conversion only), and the three students, all at --eval-precision (fp8 by default).
4. Writes under $OUT/distill_tiny (or benchmarks/results/distill_tiny): distill_tiny.json/.md
   (provenance, metrics, acceptance: AbsRel and Chamfer within 5 % of the teacher, AUC@30 within 1
   point), curves.json (+ curves.png when matplotlib is installed), and each run's folder (config.yaml,
   log.jsonl, adapter.safetensors).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import markdown_table, write_result

from lite3r.training.config import DistillRunConfig


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None, help="output folder (default: $OUT/distill_tiny)")
    p.add_argument("--weights", default=None, help="lite3r-tiny weights (default: the bundled ones)")
    p.add_argument("--budget-s", type=float, default=480.0, help="seconds for the whole script")
    p.add_argument("--steps", type=int, default=600, help="full distillation steps (upper bound)")
    p.add_argument("--ablation-fraction", type=float, default=0.5, help="ablation steps / full steps")
    p.add_argument("--batch", type=int, default=4, help="scenes per step")
    p.add_argument("--views", type=int, nargs=2, default=[2, 8], help="training views per scene (range)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--keep", type=float, default=0.1, help="SLA: fraction of key blocks kept")
    p.add_argument("--sites", nargs="+", default=["global"])
    p.add_argument(
        "--block",
        type=int,
        nargs=2,
        default=None,
        metavar=("Q", "K"),
        help="SLA query/key block sizes (default: the SLA defaults, 128×64)",
    )
    p.add_argument("--test-scenes", type=int, default=48)
    p.add_argument("--eval-views", type=int, default=8)
    p.add_argument("--eval-precision", default="fp8", choices=["fp8", "bf16", "fp32"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda")
    return p.parse_args(argv)


def run_config(args, name: str, out: Path, steps: int, **over) -> DistillRunConfig:
    data = {
        "name": name,
        "output_dir": str(out / name),
        "seed": args.seed,
        "device": args.device,
        "steps": steps,
        "log_every": 5,
        "model": {"name": "lite3r-tiny", "weights": args.weights},
        "conversion": {
            "sites": list(args.sites),
            "keep_ratio": args.keep,
            **({"block_q": args.block[0], "block_k": args.block[1]} if args.block else {}),
        },
        "optim": {"lr": args.lr, "warmup_steps": max(1, steps // 20), "schedule": "cosine"},
        "precision": {"autocast": "bf16"},
        "data": {"image_size": args.image_size, "views": list(args.views), "batch_size": args.batch},
        "eval": {"every": max(1, steps // 4), "scenes": 8, "views": args.eval_views, "split": "val"},
        "checkpoint": {"every": 0},
    }
    for key, value in over.items():
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return DistillRunConfig.from_dict(data, source=f"distill_tiny:{name}")


def train(cfg: DistillRunConfig) -> tuple[list[dict], float]:
    from lite3r.training.distill import run_distillation

    events: list[dict] = []

    def emit(e):
        events.append(e)
        if e["event"] in ("started", "eval", "finished") or (e["event"] == "step" and e["step"] % 50 == 0):
            print(json.dumps({k: v for k, v in e.items() if k != "trainable"}, default=float), flush=True)

    t0 = time.perf_counter()
    run_distillation(cfg, emit=emit)
    gc.collect()
    torch.cuda.empty_cache()
    return events, time.perf_counter() - t0


def seconds_per_step(events: list[dict]) -> float:
    steps = [e for e in events if e["event"] == "step"]
    return 1.0 / steps[-1]["steps_per_s"]


def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    out = Path(args.out or Path(os.environ.get("OUT", "benchmarks/results")) / "distill_tiny")
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)

    from lite3r.training.components import SynthScenes, load_base
    from lite3r.training.evaluation import CachedScenes, compare_to_teacher, deployable, evaluate_model

    # 30 steps: the rate over the last 20 (training.distill's window) leaves out the first step's Triton
    # autotuning, which made a 12-step probe read 1.4 s per step for ~0.2 s steps on the H100
    probe_steps = 30
    probe_cfg = run_config(args, "probe", out, steps=probe_steps, **{"eval.every": 0, "eval.at_end": False})
    base = load_base(probe_cfg.model, torch.device("cpu"))
    teacher_cpu = base.model.eval()
    test = CachedScenes(
        SynthScenes("test", args.seed, args.image_size, device, {}), args.test_scenes, args.eval_views
    )

    # ---- teacher evaluation (also times one model evaluation) ----------------------------------------
    results: dict[str, dict] = {}

    def evaluate(label, model):
        r = evaluate_model(model, test, args.test_scenes, args.eval_views, device)
        results[label] = r["summary"]
        print(f"eval {label}: {json.dumps(r['summary'], default=float)}", flush=True)
        del model
        gc.collect()
        torch.cuda.empty_cache()
        return r["summary"]["seconds"]

    eval_s = evaluate("teacher dense bf16", deployable(teacher_cpu, "bf16", device))
    if args.eval_precision == "fp8":
        evaluate("teacher dense fp8", deployable(teacher_cpu, "fp8", device))
    conversion = dict(probe_cfg.conversion)
    evaluate(
        f"untrained student {args.eval_precision}",
        deployable(teacher_cpu, args.eval_precision, device, conversion=conversion),
    )

    # ---- probe → step counts that fit the budget -------------------------------------------------------
    probe_events, probe_s = train(probe_cfg)
    sps = seconds_per_step(probe_events)
    left = args.budget_s - (time.perf_counter() - t_start) - 3 * (eval_s + 5)  # three student evaluations
    # per run: start-up (what the probe spent beyond its steps) + 4 periodic validations of 8 scenes
    overhead = max(0.0, probe_s - probe_steps * sps) + 4 * eval_s * 8 / max(1, args.test_scenes) + 5
    frac = args.ablation_fraction
    affordable = int((left - 3 * overhead) / (sps * (1 + 2 * frac)))
    full_steps = min(args.steps, max(20, affordable))
    abl_steps = max(10, int(full_steps * frac))
    print(
        f"probe: {sps * 1000:.1f} ms/step; full {full_steps} steps, ablations {abl_steps} steps", flush=True
    )

    runs = {
        "full (QAT + KD)": run_config(args, "full", out, full_steps),
        "ablation: no KD": run_config(args, "no_kd", out, abl_steps, **{"distill.enabled": False}),
        "ablation: no QAT": run_config(args, "no_qat", out, abl_steps, **{"qat.enabled": False}),
    }
    curves: dict[str, list[dict]] = {}
    train_info: dict[str, dict] = {}
    for label, cfg in runs.items():
        events, seconds = train(cfg)
        curves[label] = [e for e in events if e["event"] in ("step", "eval")]
        started = events[0]
        train_info[label] = {
            "steps": cfg.steps,
            "seconds": seconds,
            "ms_per_step": 1000 * seconds_per_step(events),
            "trainable_parameters": started["trainable_parameters"],
            "adapter": str(Path(cfg.output_dir) / "adapter.safetensors"),
        }
        evaluate(
            f"{label} {args.eval_precision}",
            deployable(
                teacher_cpu,
                args.eval_precision,
                device,
                adapter=train_info[label]["adapter"],
                base_hash=base.base_hash,
            ),
        )

    teacher = results["teacher dense bf16"]
    rows = []
    for label, s in results.items():
        row = {
            "model": label,
            **{k: s[k] for k in ("depth_absrel", "depth_delta1", "chamfer", "auc30", "auc15")},
        }
        if label != "teacher dense bf16":
            cmp = compare_to_teacher(s, teacher)
            row.update(
                {
                    "ΔAbsRel %": 100 * cmp["depth_absrel_rel_change"],
                    "ΔChamfer %": 100 * cmp["chamfer_rel_change"],
                    "ΔAUC@30": cmp["auc30_change_points"],
                    "pass": cmp["pass"],
                }
            )
            s["vs_teacher"] = cmp
        rows.append(row)
    cols = [
        "model",
        "depth_absrel",
        "depth_delta1",
        "chamfer",
        "auc30",
        "auc15",
        "ΔAbsRel %",
        "ΔChamfer %",
        "ΔAUC@30",
        "pass",
    ]
    table = markdown_table(rows, cols)
    table += "\n" + markdown_table(
        [{"run": k, **{kk: vv for kk, vv in v.items() if kk != "adapter"}} for k, v in train_info.items()]
    )
    payload = {
        "args": vars(args),
        "eval": results,
        "training": train_info,
        "probe_ms_per_step": 1000 * sps,
        "total_seconds": time.perf_counter() - t_start,
    }
    write_result(out / "distill_tiny.json", payload, table)
    (out / "curves.json").write_text(json.dumps(curves, default=float))
    plot_curves(curves, out / "curves.png")
    print(table)
    return 0


def plot_curves(curves: dict[str, list[dict]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: curves.json only", flush=True)
        return
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for label, events in curves.items():
        steps = [e for e in events if e["event"] == "step"]
        x = [e["step"] for e in steps]
        axes[0].plot(x, [e["terms"]["task"] for e in steps], label=label)
        if "kd" in steps[0]["terms"]:
            axes[1].plot(x, [e["terms"]["kd"] for e in steps], label=label)
        ev = [e for e in events if e["event"] == "eval"]
        axes[2].plot(
            [e["step"] for e in ev], [e["metrics"].get("val/depth_absrel") for e in ev], "o-", label=label
        )
    for ax, title in zip(axes, ("task loss", "attention KD (MSE)", "val depth AbsRel")):
        ax.set_title(title)
        if title != "val depth AbsRel":
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    sys.exit(main())
