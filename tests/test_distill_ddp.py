"""Two-process data parallel (torchrun, gloo on CPU) matches one process at the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import distill_standins as ds
import torch
from conftest import TESTS
from distill_standins import restore_threads  # noqa: F401  (autouse fixture)
from safetensors.torch import load_file

from lite3r.training.distill import run_distillation


def test_two_gloo_processes_match_one_process_with_accumulation(tmp_path):
    over = {"steps": 4, "data.batch_size": 1, "eval.scenes": 3, "eval.every": 2, "checkpoint.every": 2}
    one = run_distillation(ds.config(tmp_path / "one", **{**over, "optim.grad_accum": 2}), ds.components())

    cfg = ds.config(tmp_path / "two", **over).save(tmp_path / "two.yaml")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(TESTS / "distill_standin_worker.py"),
            "--config",
            str(cfg),
            "--no-stdin",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    kinds = [e["event"] for e in events]
    assert kinds.count("started") == 1 and kinds.count("finished") == 1  # only rank 0 reports
    assert events[0]["world_size"] == 2 and events[0]["global_batch"] == 2

    a, b = load_file(one.adapter), load_file(tmp_path / "two" / "adapter.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6)
    # evaluation is split over the ranks and averaged over all scenes
    ev2 = [e for e in events if e["event"] == "eval"][-1]["metrics"]
    for k, v in one.metrics.items():
        assert abs(ev2[k] - v) <= 1e-4 * max(1.0, abs(v)), k
