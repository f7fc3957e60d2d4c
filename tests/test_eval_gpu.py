"""``lite3r bench`` / ``lite3r eval`` on a CUDA GPU with the reduced parity VGGT (run by gpu_check.sh)."""

from __future__ import annotations

import json

import pytest
from conftest import PARITY_DIR
from eval_fixtures import make_blendedmvs

from lite3r.cli import main

CONFIG = str(PARITY_DIR / "vggt_small_config.json")
WEIGHTS = str(PARITY_DIR / "vggt_small_state_dict.safetensors")


@pytest.mark.gpu
def test_bench_cuda_events_and_memory_split(tmp_path):
    out = tmp_path / "bench"
    argv = ["bench", "--model", CONFIG, "--frames", "2", "8", "--image-size", "126", "--warmup", "2",
            "--iters", "20", "--device", "cuda", "--variant", "dense:bf16", "--variant", "ref:fp32",
            "--out", str(out), "--name", "g"]  # fmt: skip
    assert main(argv) == 0
    rows = json.loads((out / "g.json").read_text())["results"]["rows"]
    assert all(r["status"] == "ok" for r in rows)
    for r in rows:
        assert r["timer"] == "cuda_events" and r["latency_ms"]["runs"] == 20
        assert r["weights_allocated_bytes"] > 0 and r["activation_peak_bytes"] > 0
        assert r["peak_bytes"] >= r["activation_peak_bytes"]
        assert r["tf32"] in (True, False)
    big = {r["variant"]: r for r in rows if r["frames"] == 8}
    small = {r["variant"]: r for r in rows if r["frames"] == 2}
    assert big["dense"]["activation_peak_bytes"] > small["dense"]["activation_peak_bytes"]
    assert "speedup_vs_baseline" in big["ref"]
    assert (out / "g.png").is_file()


@pytest.mark.gpu
def test_eval_bf16_on_cuda(tmp_path):
    root = make_blendedmvs(tmp_path / "bmvs", views=3)
    out = tmp_path / "run"
    argv = ["eval", "--dataset", "blendedmvs", "--root", str(root), "--model", CONFIG, "--weights", WEIGHTS,
            "--views", "3", "--max-samples", "2", "--input-size", "56", "--device", "cuda",
            "--variant", "fp32:fp32", "--variant", "bf16:bf16", "--bootstrap", "100", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    comp = json.loads((out / "comparison.json").read_text())["metrics"]
    assert comp["depth.lsq_scene.abs_rel"]["n"] == 2
    rec = json.loads(next((out / "per_sample" / "bf16").glob("*.json")).read_text())
    assert rec["run"]["peak_memory_bytes"] > 0 and "cuda" in rec["run"]["device"]
