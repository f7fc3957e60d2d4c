"""``lite3r eval`` / ``lite3r bench`` end to end on the CPU with the reduced parity VGGT, plus variant
parsing and the bootstrap statistics."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import PARITY_DIR
from eval_fixtures import make_blendedmvs, make_dtu64

from lite3r.cli import build_parser, main
from lite3r.errors import InputError
from lite3r.eval.stats import bootstrap_mean_ci, paired_comparison, summarize
from lite3r.eval.variants import parse_variant, parse_variants

CONFIG = str(PARITY_DIR / "vggt_small_config.json")
WEIGHTS = str(PARITY_DIR / "vggt_small_state_dict.safetensors")


# ---------------------------------------------------------------------------------------------- variants


def test_parse_variants():
    d = parse_variant("dense:bf16")
    assert (d.label, d.precision, d.attention, d.compile) == ("dense", "bf16", "dense", "none")
    v = parse_variant("lite3r:fp8:sla0.1:compile")
    assert (v.precision, v.attention, v.keep, v.compile) == ("fp8", "sla", 0.1, "default")
    assert v.sla_config().keep_ratio == 0.1 and d.sla_config() is None  # a lite3r.convert.Lite3RConfig
    assert parse_variant("lite3r:bf16").attention == "sla"  # the label implies SLA unless told otherwise
    assert parse_variant("lite3r:bf16:dense").attention == "dense"
    c = parse_variant("x:fp32:cudagraphs:sdpa=math:chunk=4")
    assert (c.compile, c.sdpa_backend, c.frames_chunk_size, c.attention) == (
        "reduce-overhead",
        "math",
        4,
        "dense",
    )
    with pytest.raises(InputError, match="unknown token 'fp16'"):
        parse_variant("x:fp16")
    with pytest.raises(InputError, match="keep must be"):
        parse_variant("x:sla1.5")
    with pytest.raises(InputError, match="adapter file"):
        parse_variant("x:adapter=/nonexistent.safetensors")
    with pytest.raises(InputError, match="labels must differ"):
        parse_variants(["a:bf16", "a:fp8"])


# ------------------------------------------------------------------------------------------------- stats


def test_bootstrap_and_paired_comparison():
    mean, lo, hi, n = bootstrap_mean_ci([2.0, 2.0, 2.0, np.nan])
    assert (mean, lo, hi, n) == (2.0, 2.0, 2.0, 3)
    rng = np.random.default_rng(0)
    x = rng.normal(5.0, 1.0, size=400)
    mean, lo, hi, n = bootstrap_mean_ci(x, 2000, seed=1)
    assert lo < mean < hi and hi - lo == pytest.approx(2 * 1.96 / 20, rel=0.25)
    a = {f"s{i}": {"m": float(v)} for i, v in enumerate(x)}
    b = {f"s{i}": {"m": float(v) + 1.0} for i, v in enumerate(x)}
    comp = paired_comparison(a, b, 500)
    assert comp["m"]["diff"] == pytest.approx(1.0) and comp["m"]["ci_low"] == pytest.approx(1.0)
    assert comp["m"]["n"] == 400  # paired: the sample-to-sample spread cancels
    s = summarize({"a": {"m": 1.0}, "b": {"m": 3.0, "k": np.nan}}, 100)
    assert s["m"]["mean"] == 2.0 and s["m"]["median"] == 2.0 and s["k"]["n"] == 0


# ----------------------------------------------------------------------------------------------- eval


def test_commands_are_registered():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert {"eval", "bench"} <= set(sub.choices)


@pytest.fixture(scope="module")
def bmvs(tmp_path_factory):
    return make_blendedmvs(tmp_path_factory.mktemp("bmvs"), views=3)


def test_eval_two_variants_identical_samples_and_resume(bmvs, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    argv = [
        "eval", "--dataset", "blendedmvs", "--root", str(bmvs), "--model", CONFIG, "--weights", WEIGHTS,
        "--views", "2", "--max-samples", "2", "--input-size", "28", "--device", "cpu",
        "--variant", "a:fp32", "--variant", "b:fp32", "--bootstrap", "100", "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["samples"]) == 2 and all(len(s["views"]) == 2 for s in manifest["samples"])
    files = sorted((out / "per_sample" / "a").glob("*.json"))
    assert len(files) == 2 and len(list((out / "per_sample" / "b").glob("*.json"))) == 2
    rec = json.loads(files[0].read_text())
    assert rec["image_size"] == [28, 28] and rec["normalization"] == "vggt"
    assert set(rec["metrics"]) >= {"pose", "ate", "depth", "points", "lite3r_reference"}
    assert rec["metrics"]["depth"]["lsq_scene"]["scale_policy"] == "lsq_scene"
    assert rec["run"]["attention"].startswith("dense")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["summary"]["a"]["pose.auc@30"]["n"] == 2
    comp = json.loads((out / "comparison.json").read_text())
    # the same model twice on the same samples: every paired quality difference is exactly zero
    assert comp["metrics"]["depth.lsq_scene.abs_rel"]["diff"] == 0.0
    assert comp["metrics"]["pose.auc@30"]["n"] == 2
    assert "Paired difference" in (out / "summary.md").read_text()

    # re-run on the saved manifest: identical samples, and nothing already computed is recomputed
    import lite3r.eval.runner as runner

    monkeypatch.setattr(runner, "evaluate_one", lambda *a, **k: pytest.fail("recomputed a finished sample"))
    assert main([*argv, "--manifest", str(out / "manifest.json")]) == 0
    assert json.loads((out / "manifest.json").read_text())["samples"] == manifest["samples"]
    capsys.readouterr()


def test_eval_input_errors(tmp_path, capsys):
    code = main(["eval", "--dataset", "blendedmvs", "--root", str(tmp_path / "nowhere"), "--model", CONFIG,
                 "--device", "cpu", "--out", str(tmp_path / "o")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "not a folder" in err and "blended_images" in err
    code = main(
        ["eval", "--dataset", "dtu64", "--model", CONFIG, "--device", "cpu", "--out", str(tmp_path / "o")]
    )
    assert code == 2 and "needs a root folder" in capsys.readouterr().err


def test_eval_oracle_scores_perfectly_and_constant_does_not(bmvs, tmp_path, capsys):
    """The GT (in a random similarity frame) through the whole pipeline — crop, preprocessing, GT
    mapping, alignment — must score perfectly; this guards the evaluation itself."""
    common = ["eval", "--dataset", "blendedmvs", "--root", str(bmvs), "--views", "3", "--max-samples", "3",
              "--eval-crop", "28", "--input-size", "56", "--bootstrap", "50"]  # fmt: skip
    assert main([*common, "--model", "baseline:oracle", "--out", str(tmp_path / "o")]) == 0
    s = json.loads((tmp_path / "o" / "summary.json").read_text())["summary"]["oracle"]
    assert s["pose.auc@3"]["mean"] == pytest.approx(100.0) and s["pose.auc@3"]["n"] == 3
    assert s["depth.lsq_scene.abs_rel"]["mean"] == pytest.approx(0, abs=1e-6)
    assert s["points.depth.all.chamfer"]["mean"] == pytest.approx(0, abs=1e-6)
    assert s["points.depth.all.fscore@0.5%diag"]["mean"] == 1.0
    assert s["ate.ate_rmse"]["mean"] == pytest.approx(0, abs=1e-6)
    assert s["lite3r_reference.pose.rot_err_deg"]["mean"] == pytest.approx(0, abs=1e-4)
    assert s["lite3r_reference.chamfer_l2"]["mean"] > 0  # no alignment in the reference metric
    rec = json.loads(next((tmp_path / "o" / "per_sample" / "oracle").glob("*.json")).read_text())
    assert rec["image_size"] == [56, 56]  # 28² evaluation crop, upsampled by the model's rule
    assert main([*common, "--model", "baseline:constant", "--out", str(tmp_path / "c")]) == 0
    c = json.loads((tmp_path / "c" / "summary.json").read_text())["summary"]["constant"]
    assert c["pose.auc@30"]["mean"] < 100 and c["depth.lsq_scene.abs_rel"]["mean"] > 0
    capsys.readouterr()


def test_eval_pose_only_dataset_and_reference_protocol(tmp_path, capsys):
    root = make_dtu64(tmp_path / "d64")
    out = tmp_path / "d"
    argv = ["eval", "--dataset", "dtu64", "--root", str(root), "--scenes", "24", "--views", "5",
            "--model", "baseline:oracle", "--input-size", "28", "--bootstrap", "20", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    s = summary["summary"]["oracle"]
    assert s["pose.auc@3"]["mean"] == pytest.approx(100.0) and not any(k.startswith("depth.") for k in s)
    assert json.loads((out / "manifest.json").read_text())["samples"][0]["views"] == [33, 0, 1, 2, 40]

    from lite3r.eval.cli import _apply_protocol

    args = build_parser().parse_args(["eval", "--dataset", "blendedmvs", "--root", "x", "--out", "o",
                                      "--protocol", "lite3r-reference"])  # fmt: skip
    _apply_protocol(args)
    assert (args.views, args.strategy, args.eval_crop, args.normalization, args.gt_mask, args.split,
            args.max_samples) == (2, "random", 518, "lite3r_reference", "lite3r_reference", "all", 32)  # fmt: skip
    capsys.readouterr()


# ---------------------------------------------------------------------------------------------- bench


def test_bench_cpu_sweep_writes_json_markdown_and_plot(tmp_path, capsys):
    out = tmp_path / "bench"
    argv = [
        "bench", "--model", CONFIG, "--frames", "2", "3", "--image-size", "28", "--warmup", "0", "--iters", "2",
        "--device", "cpu", "--variant", "dense:fp32", "--variant", "lite3r:fp32:sla0.5", "--out", str(out), "--name", "b",
        "--heads", "cameras-depth",
    ]  # fmt: skip
    assert main(argv) == 0
    data = json.loads((out / "b.json").read_text())
    rows = data["results"]["rows"]
    assert [(r["variant"], r["frames"], r["status"]) for r in rows] == [
        ("dense", 2, "ok"), ("dense", 3, "ok"), ("lite3r", 2, "ok"), ("lite3r", 3, "ok")
    ]  # fmt: skip
    assert rows[0]["timer"].startswith("wall_clock_cpu") and rows[0]["latency_ms"]["runs"] == 2
    assert "speedup_vs_baseline" in rows[2] and "speedup_vs_baseline" not in rows[0]
    assert rows[0]["attention"].startswith("dense") and rows[2]["attention"].startswith(
        "SLA"
    )  # via lite3r.convert
    assert (
        data["provenance"]["torch"] and data["results"]["baseline"] == "dense" and data["results"]["complete"]
    )
    assert (out / "b.md").read_text().count("| dense |") == 2
    assert (out / "b.png").stat().st_size > 1000
    capsys.readouterr()


def test_bench_records_a_failing_variant_and_runs_the_rest(tmp_path, capsys):
    """FP8 is refused on the CPU: the row says why, the variants after it are still measured."""
    out = tmp_path / "bench"
    argv = [
        "bench", "--model", CONFIG, "--frames", "2", "--image-size", "28", "--warmup", "0", "--iters", "1",
        "--device", "cpu", "--variant", "dense:fp32", "--variant", "bad:fp8", "--variant", "after:fp32",
        "--out", str(out), "--name", "b", "--heads", "cameras-depth", "--no-plot",
    ]  # fmt: skip
    assert main(argv) == 0
    rows = json.loads((out / "b.json").read_text())["results"]["rows"]
    status = {r["variant"]: r["status"] for r in rows}
    assert status["dense"] == "ok" and status["after"] == "ok"
    assert status["bad"].startswith("error: ") and "fp8" in status["bad"].lower()
    assert "| bad | 2 | error: " in (out / "b.md").read_text()
    capsys.readouterr()
