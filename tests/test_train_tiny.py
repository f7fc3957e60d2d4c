"""lite3r-tiny training script on the CPU at the micro size: runs, resumes bit-for-bit, exports."""

from __future__ import annotations

import json

import pytest
import torch

from lite3r.errors import InputError
from lite3r.models.vggt.model import VGGT
from lite3r.training.train_tiny import EXIT_CANCELLED, EXIT_OK, StopFlag, TinyTrainConfig, main, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cfg(**kw) -> TinyTrainConfig:
    base = dict(preset="micro", views=(2, 3), views_per_step=4, total_steps=4, warmup_steps=2, supersample=1,
                eval_every=0, eval_scenes=0, log_every=1, lr=1e-3)  # fmt: skip
    return TinyTrainConfig(**{**base, **kw})


def _events(folder):
    return [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]


def test_cli_runs_three_steps_and_exports(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["--out", str(out), "--preset", "micro", "--views", "2", "3", "--views-per-step", "4",
                 "--total-steps", "3", "--supersample", "1", "--eval-every", "0", "--eval-scenes", "2",
                 "--eval-views", "2", "--log-every", "1", "--device", "cpu", "--no-stdin"])  # fmt: skip
    assert code == EXIT_OK
    lines = [json.loads(s) for s in capsys.readouterr().out.splitlines()]
    kinds = [e["event"] for e in lines]
    assert kinds[0] == "started" and kinds[-1] == "finished" and kinds.count("step") == 3
    steps = [e for e in lines if e["event"] == "step"]
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in steps) and "camera" in steps[0]["terms"]
    assert "abs_rel" in [e for e in lines if e["event"] == "eval"][-1]["metrics"]
    model = VGGT.from_pretrained(out / "lite3r-tiny")
    assert model.config.aggregator.embed_dim == 32
    assert model.point_head is None  # trained with the auxiliary point head, exported without it
    sd = torch.load(out / "checkpoint.pt", weights_only=False)["model"]
    for k, v in model.state_dict().items():  # fp16 storage: equal to the float32 weights up to rounding
        torch.testing.assert_close(v, sd[k].to(torch.float16).float(), rtol=0, atol=0)
    with torch.no_grad():
        preds = model(torch.rand(1, 2, 3, 56, 56))
    assert torch.isfinite(preds["depth"]).all() and preds["pose_enc"].shape == (1, 2, 9)


def test_resume_is_bit_for_bit(tmp_path):
    straight = tmp_path / "straight"
    assert train(_cfg(), straight, device="cpu", quiet=True) == EXIT_OK
    split = tmp_path / "split"
    assert train(_cfg(), split, device="cpu", max_steps=2, quiet=True) == EXIT_OK
    assert train(_cfg(), split, device="cpu", resume=True, quiet=True) == EXIT_OK
    a = torch.load(straight / "checkpoint.pt", weights_only=False)
    b = torch.load(split / "checkpoint.pt", weights_only=False)
    assert a["step"] == b["step"] == 4
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(sa[n], sb[n]) for n in ("exp_avg", "exp_avg_sq"))
    la = [e["loss"] for e in _events(straight) if e["event"] == "step"]
    lb = [e["loss"] for e in _events(split) if e["event"] == "step"]
    assert la == lb


def test_resume_refuses_a_different_trajectory(tmp_path):
    out = tmp_path / "run"
    assert train(_cfg(total_steps=2), out, device="cpu", quiet=True) == EXIT_OK
    with pytest.raises(InputError, match="keeps its trajectory"):
        train(_cfg(total_steps=2, lr=5e-3), out, device="cpu", resume=True, quiet=True, explicit={"lr"})


def test_cancel_saves_a_checkpoint(tmp_path):
    stop = StopFlag()
    stop.set("test")
    out = tmp_path / "run"
    assert train(_cfg(), out, device="cpu", stop=stop, quiet=True) == EXIT_CANCELLED
    ev = _events(out)
    assert ev[-1]["event"] == "cancelled" and (out / "checkpoint.pt").is_file()


def test_quality_report_on_a_tiny_export(tmp_path, capsys):
    from lite3r.training.quality_report import main as quality_main
    from lite3r.training.tiny import build_tiny, export_tiny

    folder = export_tiny(build_tiny("micro", seed=0), tmp_path / "model")
    out = tmp_path / "q.json"
    code = quality_main(["--weights", str(folder), "--scenes", "2", "--views", "2", "3", "--image-size", "42",
                         "--batch", "2", "--max-points", "2000", "--device", "cpu", "--out", str(out)])  # fmt: skip
    assert code == 0
    summary = json.loads(out.read_text())["results"]
    res = summary["results"]
    for key in ("model/2", "model/3", "trivial/3"):
        assert {"abs_rel", "auc@30", "chamfer", "f@1%"} <= set(res[key]) and res[key]["n"] == 2
    assert res["trivial/3"]["auc@30"] == 0.0  # identity poses: translation direction undefined → 90°
    assert set(summary["done_when"]) >= {"pass_depth", "pass_pose"}
    assert "Done-when" in out.with_suffix(".md").read_text()


def test_replay_draws_view0_plus_subsets_of_the_window_and_resumes_bit_for_bit(tmp_path):
    from lite3r.training.train_tiny import StepData

    cfg = _cfg(views=(2, 4), views_per_step=8, replay=2, replay_window=3, total_steps=5)
    data = StepData(cfg, 56, torch.device("cpu"), lambda: cfg.total_steps)
    assert data.fresh_scenes == 1  # 8 views per step / (2 uses x 4 views per scene)
    fresh = {k: data.make(k) for k in range(4)}
    b = data.get(3)
    assert sorted(data.pool) == [1, 2, 3]  # the window: steps 1..3
    S = b["images"].shape[1]
    assert b["images"].shape[0] == 8 // S
    pool_imgs = torch.cat([fresh[k]["images"][0] for k in (1, 2, 3)])  # 12 rendered views
    for scene in b["images"]:  # every drawn view is a rendered one, view 0 of its scene first
        hits = [int((pool_imgs == v).flatten(1).all(1).nonzero()[0]) for v in scene]
        assert hits[0] % 4 == 0 and len({h // 4 for h in hits}) == 1 and len(set(hits)) == S
    again = StepData(cfg, 56, torch.device("cpu"), lambda: cfg.total_steps).get(3)  # pure function of k
    assert all(torch.equal(b[k], again[k]) for k in b)

    straight, split = tmp_path / "straight", tmp_path / "split"
    assert train(cfg, straight, device="cpu", quiet=True) == EXIT_OK
    assert train(cfg, split, device="cpu", max_steps=3, quiet=True) == EXIT_OK
    assert train(cfg, split, device="cpu", resume=True, quiet=True) == EXIT_OK
    la = [e["loss"] for e in _events(straight) if e["event"] == "step"]
    assert la == [e["loss"] for e in _events(split) if e["event"] == "step"] and len(la) == 5


def test_handover_continues_on_another_machine_with_fresh_moments(tmp_path):
    from lite3r.training.train_tiny import HANDOVER_WEIGHTS, REWARM_STEPS

    cfg = _cfg(total_steps=6)
    first, hand, second = tmp_path / "first", tmp_path / "hand", tmp_path / "second"
    assert train(cfg, first, device="cpu", max_steps=3, quiet=True, handover_out=hand) == EXIT_OK
    assert (hand / HANDOVER_WEIGHTS).stat().st_size > 0
    assert next(e for e in _events(first) if e["event"] == "handover")["step"] == 3
    assert train(cfg, second, device="cpu", quiet=True, resume_handover=hand) == EXIT_OK
    ev = _events(second)
    assert ev[0]["event"] == "handover_resumed" and ev[0]["step"] == 3
    steps = [e for e in ev if e["event"] == "step"]
    assert [e["step"] for e in steps] == [4, 5, 6]
    # the schedule continues at step 3, scaled by the re-warm-up of the fresh AdamW moments
    from lite3r.training.train_tiny import lr_at

    assert steps[0]["lr"] == pytest.approx(lr_at(3, 6, cfg) / REWARM_STEPS)
    ckpt = torch.load(second / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 6 and ckpt["rewarm_from"] == 3
    with pytest.raises(InputError, match="keeps its trajectory"):
        train(_cfg(total_steps=6, lr=5e-3), tmp_path / "x", device="cpu", quiet=True, resume_handover=hand,
              explicit={"lr"})  # fmt: skip
    from lite3r.errors import CheckpointError

    with pytest.raises(CheckpointError, match="handover"):
        train(cfg, tmp_path / "y", device="cpu", quiet=True, resume_handover=tmp_path / "missing")


def test_dpt_autocast_runs_the_heads_under_the_callers_autocast():
    from lite3r.training.tiny import build_tiny

    model = build_tiny("micro", seed=0, point_head=True).eval()
    images = torch.rand(1, 2, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    seen, camera = [], []
    hook = model.depth_head.register_forward_hook(
        lambda m, a, out: seen.append(torch.is_autocast_enabled("cpu"))
    )
    cam_hook = model.camera_head.register_forward_hook(
        lambda m, a, out: camera.append(torch.is_autocast_enabled("cpu"))
    )
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        ref = model(images)  # the reference: heads in float32, autocast off inside
        model.dpt_autocast = True
        fast = model(images)
    hook.remove()
    cam_hook.remove()
    assert seen == [False, True]
    assert camera == [False, False]  # the camera head stays float32 either way
    assert fast["depth"].dtype == torch.float32 and torch.isfinite(fast["depth"]).all()
    torch.testing.assert_close(fast["depth"], ref["depth"], rtol=0.05, atol=1e-3)  # bf16 rounding only


def test_heads_bf16_option(tmp_path):
    with pytest.raises(InputError, match="autocast bf16"):
        _cfg(heads_bf16=True, autocast="fp32").validate()
    out = tmp_path / "run"
    assert train(_cfg(heads_bf16=True, total_steps=2), out, device="cpu") == EXIT_OK
    started = _events(out)[0]
    assert started["config"]["heads_bf16"] is True


def test_fine_tune_starts_from_exported_weights_and_declares_its_readout(tmp_path):
    """--init-weights: step 0 of a new trajectory from an export (the dropped point head starts
    fresh); a correspondence-trained last block exports a pose read-out; a mismatched model is refused."""
    from lite3r.errors import CheckpointError
    from lite3r.models.vggt.match_pose import MatchPoseConfig

    base = tmp_path / "base"
    assert train(_cfg(total_steps=2), base, device="cpu", quiet=True) == EXIT_OK
    exported = VGGT.from_pretrained(base / "lite3r-tiny")
    assert exported.pose_readout is None  # no correspondence loss: the camera head
    ft = tmp_path / "ft"
    cfg = _cfg(
        total_steps=1, lr=1e-9, init_weights=str(base / "lite3r-tiny"), corr_weight=1.0, corr_layers=(1,)
    )
    assert train(cfg, ft, device="cpu", quiet=True) == EXIT_OK
    init = next(e for e in _events(ft) if e["event"] == "init_weights")
    assert init["fresh_init"] == ["point_head"] and init["tensors"] == len(exported.state_dict())
    tuned = VGGT.from_pretrained(ft / "lite3r-tiny")
    for k, v in exported.state_dict().items():  # one step at lr 1e-9: the starting weights, not a fresh init
        torch.testing.assert_close(tuned.state_dict()[k], v, rtol=0, atol=1e-3)
    assert tuned.pose_readout == MatchPoseConfig(layers=(-1,), heads=(0,), solver="pnp", bundle_adjust=True)
    with pytest.raises(CheckpointError, match="does not fit this model"):
        train(
            _cfg(preset="small", init_weights=str(base / "lite3r-tiny")),
            tmp_path / "bad",
            device="cpu",
            quiet=True,
        )
    with pytest.raises(CheckpointError, match="no weights to fine-tune from"):
        train(_cfg(init_weights=str(tmp_path / "missing")), tmp_path / "bad2", device="cpu", quiet=True)
