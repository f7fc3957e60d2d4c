"""The app's inference worker process: JSON-lines protocol, results as .npz, errors without dying,
and the frozen-app `--worker` relaunch path."""

# ruff: noqa: F811 (pytest fixtures imported from app_fixtures are redefined as test arguments)
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from app_fixtures import FAKE_BACKEND, good_photos, worker_env  # noqa: F401

from lite3r.app import protocol
from lite3r.engine.reconstruction import Reconstruction


def _start(args):
    env = {**os.environ, **worker_env(), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _send(proc, obj):
    proc.stdin.write(json.dumps(obj) + "\n")
    proc.stdin.flush()


def _read_until(proc, event, rid=None):
    seen = []
    for line in proc.stdout:
        msg = json.loads(line)  # every stdout line is a protocol line (stray prints go to stderr)
        seen.append(msg)
        if msg["event"] == event and (rid is None or msg.get("id") == rid):
            return seen
    raise AssertionError(f"worker ended before {event!r}: {seen}\n{proc.stderr.read()}")


def test_worker_serves_capabilities_results_and_errors(tmp_path, good_photos):
    proc = _start(["-m", "lite3r.app.worker", "--backend", FAKE_BACKEND])
    try:
        assert _read_until(proc, "ready")[-1]["backend"] == FAKE_BACKEND
        _send(proc, {"cmd": "capabilities", "id": 1})
        caps = _read_until(proc, "capabilities", 1)[-1]
        assert caps["precision"]["fp32"]["ok"] and not caps["precision"]["fp8"]["ok"]
        assert "FP8" in caps["precision"]["fp8"]["reason"]
        photos = sorted(str(p) for p in good_photos.iterdir())
        _send(
            proc,
            {
                "cmd": "reconstruct",
                "id": 2,
                "images": photos,
                "settings": {"precision": "bf16"},
                "out": str(tmp_path / "out"),
            },
        )
        events = _read_until(proc, "result", 2)
        kinds = [e["event"] for e in events]
        assert "progress" in kinds and "partial" in kinds
        fractions = [e["fraction"] for e in events if e["event"] == "progress"]
        assert fractions == sorted(fractions)
        recon = Reconstruction.load(events[-1]["path"])
        assert recon.num_views == 4 and recon.precision == "bf16"
        partial = Reconstruction.load(next(e["path"] for e in events if e["event"] == "partial"))
        assert partial.num_views == 4 and len(partial.point_cloud()[0]) == 0  # cameras only
        # a bad photo: one readable error, and the worker keeps serving
        bad = tmp_path / "bad.png"
        bad.write_text("not a png")
        _send(
            proc,
            {
                "cmd": "reconstruct",
                "id": 3,
                "images": [*photos, str(bad)],
                "settings": {},
                "out": str(tmp_path / "out"),
            },
        )
        err = _read_until(proc, "error", 3)[-1]
        assert err["kind"] == "InputError" and "bad.png" in err["message"] and err["hint"]
        _send(proc, {"cmd": "ping", "id": 4})
        assert _read_until(proc, "pong", 4)
        _send(proc, {"cmd": "quit"})
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_frozen_app_relaunches_itself_as_worker(monkeypatch):
    program, args = protocol.worker_command("inference", ["--threads", "1"])
    assert program == sys.executable and args[:3] == ["-u", "-m", "lite3r.app.worker"]
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    program, args = protocol.worker_command("train", ["--config", "c.yaml"])
    assert program == sys.executable and args == ["--worker", "train", "--config", "c.yaml"]
    with pytest.raises(ValueError):
        protocol.worker_command("nope")
    monkeypatch.undo()
    # what the frozen binary runs: lite3r-app --worker inference …
    proc = _start(["-m", "lite3r.app.main", "--worker", "inference", "--backend", FAKE_BACKEND])
    try:
        assert _read_until(proc, "ready")
        proc.stdin.close()  # the GUI went away: the worker exits by itself
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.gpu
def test_worker_on_the_gpu_reports_and_runs_what_the_device_can(tmp_path):
    """On the GPU machine (no display needed): the app's worker picks CUDA, offers bf16 (and fp8 on
    Hopper) with reasons, and reconstructs the test photos with the parity VGGT, dense and SLA."""
    from conftest import PARITY_DIR, PHOTOS_DIR

    proc = _start(["-m", "lite3r.app.worker", "--dev-model", f"parity-vggt={PARITY_DIR}"])
    try:
        _read_until(proc, "ready")
        _send(proc, {"cmd": "capabilities", "id": 1})
        caps = _read_until(proc, "capabilities", 1)[-1]
        assert caps["device_type"] == "cuda" and caps["precision"]["bf16"]["ok"]
        photos = sorted(str(p) for p in PHOTOS_DIR.glob("*.jpg"))
        runs = [("bf16", "dense"), ("bf16", "sla"), ("fp8", "sla")]
        for rid, (precision, attention) in enumerate(runs, start=2):
            settings = {"backbone": "parity-vggt", "precision": precision, "attention": attention}
            _send(
                proc,
                {
                    "cmd": "reconstruct",
                    "id": rid,
                    "images": photos,
                    "settings": settings,
                    "out": str(tmp_path),
                },
            )
            last = [e for e in _read_until_any(proc, ("result", "error"), rid)][-1]
            if precision == "fp8" and last["event"] == "error":
                # refused loudly (device without FP8, or shapes of the tiny parity model the FP8 GEMMs
                # do not take) — never silently run in another precision
                assert last["kind"] == "UnsupportedError" and last["message"], last
                continue
            assert last["event"] == "result", last
            recon = Reconstruction.load(last["path"])
            assert recon.device.startswith("cuda") and recon.peak_memory_bytes > 0
            assert len(recon.point_cloud()[0]) > 0
            if attention == "sla":
                assert "triton" in recon.attention.lower(), recon.attention
        _send(proc, {"cmd": "quit"})
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _read_until_any(proc, events, rid):
    for line in proc.stdout:
        msg = json.loads(line)
        yield msg
        if msg["event"] in events and msg.get("id") == rid:
            return
