"""Benchmark tools around lite3r-tiny: the training summary across machines and the attention probe."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "benchmarks" / "probes"))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _write(path: Path, events: list[dict]) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return path


def test_summary_joins_the_logs_of_two_machines(tmp_path):
    import tiny_training_summary as T

    cfg = {"views_per_step": 8}
    metrics = {"abs_rel": 0.5, "delta1": 0.3, "auc@30": 1.0, "rra@15": 60.0, "rta@15": 3.0, "val_loss": 2.0,
               "baseline_const_depth_abs_rel": 0.7, "baseline_identity_auc@30": 0.0}  # fmt: skip
    step = lambda k: {
        "event": "step",
        "step": k,
        "loss": 1.0 / k,
        "terms": {"camera": 0.1},
        "views_per_s": 50.0,
    }
    first = _write(tmp_path / "a.jsonl", [
        {"event": "started", "step": 0, "params": 10, "config": cfg}, step(10), step(20),
        {"event": "eval", "step": 20, "metrics": metrics},
        {"event": "finished", "step": 20, "total": 40, "reason": "time_limit", "train_seconds": 5.0}])  # fmt: skip
    second = _write(tmp_path / "b.jsonl", [
        {"event": "handover_resumed", "step": 20}, {"event": "started", "step": 20, "params": 10, "config": cfg},
        step(30), step(40), {"event": "eval", "step": 40, "metrics": {**metrics, "abs_rel": 0.4}},
        {"event": "finished", "step": 40, "total": 40, "reason": "total_steps", "train_seconds": 11.0}])  # fmt: skip
    s = T.summarise(T.load_events([first, second]))
    assert (s["steps"], s["planned_steps"], s["invocations"], s["handovers"]) == (40, 40, 2, [20])
    assert s["views_seen"] == 320 and [e["step"] for e in s["evals"]] == [20, 40]
    assert [r["step"] for r in s["losses"]] == [10, 20, 30, 40]
    prov = _write(tmp_path / "prov.json", [])
    prov.write_text(json.dumps({"provenance": {"git_commit": "abc", "date": "d", "gpu": "g"}}))
    assert (
        T.main(
            [
                str(first),
                str(second),
                "--provenance",
                str(prov),
                "--command",
                "c",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 0
    )
    out = json.loads((tmp_path / "o" / "training.json").read_text())
    assert out["provenance"]["command"] == "c" and out["results"]["steps"] == 40
    assert "| 40 | 0.4 |" in (tmp_path / "o" / "evals.md").read_text()


def test_cross_frame_probe_on_a_micro_model(tmp_path, capsys):
    import cross_frame_attention as P

    from lite3r.training.tiny import build_tiny

    build_tiny("micro", seed=0).save_pretrained(tmp_path / "m")
    assert (
        P.main(["--weights", str(tmp_path / "m"), "--scenes", "1", "--views", "2", "--out", str(tmp_path)])
        == 0
    )
    rows = json.loads((tmp_path / "cross_frame_attention_m.json").read_text())["results"]
    assert len(rows) == 2 * 2  # micro: 2 global blocks x 2 heads
    for r in rows:  # masses are probabilities; with 2 frames an untrained model is near the uniform split
        assert 0 <= r["cross"] <= 1 and 0 <= r["special"] <= 1 and r["cross_uniform"] == 0.5
        assert 0 <= r["gt_match"] <= 1 or r["gt_match"] != r["gt_match"]
