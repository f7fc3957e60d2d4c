"""Summarise a lite3r-tiny training run from its event logs: training.json, evals.md and curves.png.

    python benchmarks/tiny_training_summary.py LOG [LOG ...] --provenance device_result.json \
        --command "what ran" --out benchmarks/results/tiny

Why: a run that spans machines has one log per machine (``train_tiny`` appends to ``log.jsonl`` while
a machine stays warm; a ``--resume-handover`` on the next machine starts a new one). This joins them
in step order and writes the provenance of the machine that ran them (taken from a result file the
same device wrote, since this script runs wherever the logs were copied to).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def load_events(paths: list[Path]) -> list[dict]:
    """Events of all logs; a step logged twice (a resumed call repeats nothing, but be safe) keeps the
    later one."""
    events = []
    for p in paths:
        events += [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    return events


def summarise(events: list[dict]) -> dict:
    started = [e for e in events if e["event"] == "started"]
    finished = [e for e in events if e["event"] == "finished"]
    steps = {e["step"]: e for e in events if e["event"] == "step"}
    evals = {e["step"]: e["metrics"] for e in events if e["event"] == "eval"}
    cfg = started[-1]["config"]
    last = finished[-1]
    return {
        "config": cfg,
        "parameters_training": started[0]["params"],
        "steps": last["step"],
        "planned_steps": last["total"],
        "stop_reason": last["reason"],
        "train_seconds": last["train_seconds"],
        "invocations": len(started),
        "handovers": [e["step"] for e in events if e["event"] == "handover_resumed"],
        "views_seen": last["step"] * cfg["views_per_step"],
        "views_per_s": [steps[k]["views_per_s"] for k in sorted(steps)][-1] if steps else None,
        "evals": [{"step": k, **evals[k]} for k in sorted(evals)],
        "losses": [{"step": k, "loss": steps[k]["loss"], **steps[k]["terms"]} for k in sorted(steps)],
    }


def evals_table(summary: dict) -> str:
    cols = ["step", "abs_rel", "delta1", "auc@30", "rra@15", "rta@15", "val_loss"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for e in summary["evals"]:
        lines.append("| " + " | ".join(f"{e[c]:.3g}" if c != "step" else str(e[c]) for c in cols) + " |")
    base = summary["evals"][0]
    lines.append(
        f"\nBaselines on the same validation scenes: constant depth AbsRel {base['baseline_const_depth_abs_rel']:.3f}, "
        f"identity poses AUC@30 {base['baseline_identity_auc@30']:.1f}."
    )
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    ls = summary["losses"]
    for key in ("camera", "depth", "point"):
        if key in ls[0]:
            ax[0].plot([r["step"] for r in ls], [r[key] for r in ls], label=key)
    ax[0].set(xlabel="step", ylabel="training loss term", yscale="log")
    ev = summary["evals"]
    x = [e["step"] for e in ev]
    ax[1].plot(x, [e["abs_rel"] for e in ev], "o-", label="model")
    ax[1].axhline(ev[0]["baseline_const_depth_abs_rel"], color="gray", ls="--", label="constant depth")
    ax[1].set(xlabel="step", ylabel="val AbsRel")
    ax[2].plot(x, [e["auc@30"] for e in ev], "o-", label="AUC@30")
    ax[2].plot(x, [e["rra@15"] for e in ev], "o-", label="RRA@15")
    ax[2].plot(x, [e["rta@15"] for e in ev], "o-", label="RTA@15")
    ax[2].set(xlabel="step", ylabel="val pose (%)")
    for h in summary["handovers"]:
        for a in ax:
            a.axvline(h, color="red", lw=0.8, alpha=0.5)
    for a in ax:
        a.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return True


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("logs", nargs="+", type=Path)
    p.add_argument("--provenance", type=Path, required=True, help="a result JSON the same device wrote")
    p.add_argument("--command", required=True, help="the commands that ran the training")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    summary = summarise(load_events(a.logs))
    prov = {**json.loads(a.provenance.read_text())["provenance"], "command": a.command}
    a.out.mkdir(parents=True, exist_ok=True)
    losses = summary.pop("losses")
    (a.out / "training.json").write_text(
        json.dumps({"provenance": prov, "results": summary}, indent=1) + "\n"
    )
    (a.out / "evals.md").write_text(
        f"Validation during training (commit {prov['git_commit']}, {prov.get('gpu')}, {prov['date']})\n\n"
        + evals_table(summary)
    )
    plot({**summary, "losses": losses}, a.out / "curves.png")
    print(evals_table(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
