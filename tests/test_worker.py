"""Training worker protocol: JSON events on stdout, cancel (SIGTERM / stdin) → checkpoint + exit 3,
SIGKILL never leaves a corrupt checkpoint, errors → one `error` event + exit 1, and a QProcess client."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import distill_standins as ds
import pytest
import torch
from conftest import TESTS
from distill_standins import restore_threads  # noqa: F401  (autouse fixture)

from lite3r.adapters import read_adapter
from lite3r.training.config import DistillRunConfig
from lite3r.training.worker import main

WORKER = [sys.executable, str(TESTS / "distill_standin_worker.py")]


def _config(tmp_path, **over):
    cfg = ds.config(tmp_path / "run", **over)
    return cfg.save(tmp_path / "run.yaml")


def _events(lines):
    return [json.loads(line) for line in lines if line.strip()]


def _start(args, **kw):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        WORKER + args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.PIPE,
        text=True,
        env=env,
        **kw,
    )


def _read_until(proc, predicate, timeout=60):
    """Read events until predicate(event) is true; returns all events read."""
    events = []
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        events.append(json.loads(line))
        if predicate(events[-1]):
            return events
        assert time.monotonic() < deadline, "worker too slow"
    raise AssertionError(f"worker ended early: {events[-3:]}, stderr: {proc.stderr.read()[-2000:]}")


def test_worker_runs_to_finished(tmp_path):
    cfg = _config(tmp_path, steps=4, **{"eval.every": 2, "checkpoint.every": 2})
    proc = subprocess.run([*WORKER, "--config", str(cfg)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    events = _events(proc.stdout.splitlines())  # every stdout line is one JSON event
    kinds = [e["event"] for e in events]
    assert kinds == [
        "started",
        "step",
        "step",
        "eval",
        "checkpoint",
        "step",
        "step",
        "checkpoint",
        "eval",
        "finished",
    ]
    assert events[0]["trainable_parameters"] == 128 and events[0]["trainable"]
    step = events[1]
    assert step["step"] == 1 and step["total"] == 4 and step["eta_s"] >= 0 and step["steps_per_s"] > 0
    assert read_adapter(events[-1]["adapter"]).step == 4


@pytest.mark.parametrize("how", ["sigterm", "stdin"])
def test_cancel_saves_checkpoint_then_resume(tmp_path, how):
    cfg = _config(tmp_path, steps=100_000, log_every=5, **{"checkpoint.every": 0})
    proc = _start(["--config", str(cfg)])
    _read_until(proc, lambda e: e["event"] == "step" and e["step"] >= 10)
    if how == "sigterm":
        proc.send_signal(signal.SIGTERM)
    else:
        proc.stdin.write("cancel\n")
        proc.stdin.flush()
    rest = _events(proc.stdout)
    assert proc.wait(30) == 3
    assert rest[-1]["event"] == "cancelled" and rest[-2]["event"] == "checkpoint"
    step = rest[-1]["step"]
    state = torch.load(rest[-1]["checkpoint"], weights_only=True)
    assert state["step"] == step and read_adapter(tmp_path / "run" / "adapter.safetensors").step == step
    # resume from that checkpoint to a (shorter) end
    done = subprocess.run(
        [*WORKER, "--config", str(cfg), "--resume", "--steps", str(step + 3)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    events = _events(done.stdout.splitlines())
    assert events[0]["resumed"] and events[0]["step"] == step
    assert [e["step"] for e in events if e["event"] == "step"][-1] == step + 3
    assert events[-1]["event"] == "finished"


def test_sigkill_never_leaves_a_corrupt_checkpoint(tmp_path):
    cfg = _config(tmp_path, steps=100_000, log_every=1000, **{"checkpoint.every": 1})
    proc = _start(["--config", str(cfg)])
    _read_until(proc, lambda e: e["event"] == "checkpoint" and e["step"] >= 20)
    time.sleep(0.37)  # well inside a stream of back-to-back checkpoint writes
    proc.kill()
    proc.wait(30)
    adapter = read_adapter(tmp_path / "run" / "adapter.safetensors")
    state = torch.load(tmp_path / "run" / "resume.pt", weights_only=True)
    assert adapter.step >= 20 and state["step"] >= 20
    # and the run resumes from it
    done = subprocess.run(
        [*WORKER, "--config", str(cfg), "--resume", "--steps", str(state["step"] + 1)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


def test_error_event_and_exit_code(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stepz: 3\n")
    assert main(["--config", str(bad), "--no-stdin"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    event = json.loads(lines[0])
    assert event["event"] == "error" and "stepz" in event["message"] and "Traceback" in event["traceback"]


def test_qprocess_client_sees_progress_and_cancel(tmp_path, qtbot):
    """The app's pattern (app.md §5.2): QProcess, line-buffered JSON, terminate() → exit 3."""
    from PySide6.QtCore import QProcess

    cfg = _config(tmp_path, steps=100_000, log_every=5, **{"checkpoint.every": 0})
    proc = QProcess()
    buf = bytearray()
    events: list[dict] = []

    def read():
        buf.extend(bytes(proc.readAllStandardOutput()))
        while b"\n" in buf:
            line, _, rest = bytes(buf).partition(b"\n")
            buf[:] = rest
            events.append(json.loads(line))

    proc.readyReadStandardOutput.connect(read)
    proc.start(WORKER[0], [*WORKER[1:], "--config", str(cfg)])
    qtbot.waitUntil(lambda: any(e["event"] == "step" and e["step"] >= 10 for e in events), timeout=60_000)
    proc.terminate()
    with qtbot.waitSignal(proc.finished, timeout=30_000) as blocker:
        pass
    read()
    assert blocker.args[0] == 3 and events[-1]["event"] == "cancelled"
    steps = [e["step"] for e in events if e["event"] == "step"]
    assert steps == sorted(steps) and steps[0] == 5


def test_real_worker_cancel_resume_and_engine(tmp_path):
    """The done-when path with the real components: `python -m lite3r.training.worker` distils a VGGT
    (the bundled lite3r-tiny; a micro stand-in in a checkout without its weights), is cancelled, resumes, and the adapter
    loads into the engine."""
    import numpy as np

    from lite3r.adapters import load_adapter
    from lite3r.assets import asset_path
    from lite3r.engine.reconstructor import Reconstructor
    from lite3r.models.registry import load_model

    bundled = Path(str(asset_path("lite3r-tiny", "model.safetensors")))
    if (
        bundled.is_file()
    ):  # the trained lite3r-tiny, fed 112 px (69 tokens per frame, 64-token key blocks) to stay fast
        folder, size, conversion = bundled.parent, 112, {"sites": ["global"], "keep_ratio": 0.1}
    else:  # its stand-in until the weights are bundled, at 56 px (21 tokens per frame)
        folder, size = ds.micro_vggt_folder(tmp_path / "tiny"), 56
        conversion = {"sites": ["global"], "keep_ratio": 0.5, "block_q": 16, "block_k": 16}
    cfg = DistillRunConfig.from_dict(
        {
            "name": "real",
            "output_dir": str(tmp_path / "run"),
            "seed": 0,
            "device": "cpu",
            "steps": 100_000,
            "threads": 1,
            "model": {"name": "lite3r-tiny", "weights": str(folder)},
            "conversion": conversion,
            "precision": {"autocast": "fp32"},
            "data": {"image_size": size, "views": [2, 2], "options": {"supersample": 1}},
            "eval": {"every": 0, "at_end": False},
            "checkpoint": {"every": 0},
        }
    ).save(tmp_path / "run.yaml")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "lite3r.training.worker", "--config", str(cfg)]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.PIPE, text=True, env=env
    )
    started = _read_until(proc, lambda e: e["event"] == "step" and e["step"] >= 2)[0]
    depth = json.loads((folder / "config.json").read_text())["config"]["aggregator"]["depth"]
    assert started["trainable"] == [
        f"aggregator.global_blocks.{i}.attn.proj_lin.weight" for i in range(depth)
    ]
    proc.send_signal(signal.SIGTERM)
    rest = _events(proc.stdout)
    assert proc.wait(60) == 3 and rest[-1]["event"] == "cancelled"
    step = rest[-1]["step"]
    done = subprocess.run(
        [*cmd, "--resume", "--steps", str(step + 2)], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, done.stderr
    events = _events(done.stdout.splitlines())
    assert events[0]["resumed"] and events[-1]["event"] == "finished"
    terms = [e for e in events if e["event"] == "step"][-1]["terms"]
    assert {"camera", "depth", "kd", "task"} <= set(terms)  # the real task loss + distillation

    model = load_adapter(load_model("lite3r-tiny", weights=folder), events[-1]["adapter"])
    assert sum(type(m).__name__ == "SparseLinearAttention" for m in model.modules()) == depth
    rc = Reconstructor(
        model, precision="fp32", device="cpu", attention="dense", model_name="lite3r-tiny", input_size=size
    )
    photos = [np.random.default_rng(i).integers(0, 255, (size, size, 3), dtype=np.uint8) for i in range(2)]
    rec = rc.reconstruct(photos)
    assert rec.depth.shape[0] == 2 and np.isfinite(rec.depth).all()
