"""Distillation loop: trainable set, hooks, losses, schedules, checkpoints and bit-for-bit resume."""

from __future__ import annotations

import itertools
import math

import distill_standins as ds
import pytest
import torch
from distill_standins import restore_threads  # noqa: F401  (autouse fixture)
from safetensors.torch import load_file

from lite3r.adapters import read_adapter
from lite3r.errors import CheckpointError, InputError
from lite3r.training.ddp import DistInfo
from lite3r.training.distill import (
    AttentionRecorder,
    Distiller,
    MicroBatches,
    RankSampler,
    canonicalise_to_view0,
    kd_weight,
    lr_factor,
    run_distillation,
)


def _run(cfg, **kw):
    events = []
    result = run_distillation(cfg, ds.components(), emit=events.append, **kw)
    return result, events


def test_schedules():
    assert kd_weight(0, 10, 0.1, 0.01) == pytest.approx(0.1)
    assert kd_weight(9, 10, 0.1, 0.01) == pytest.approx(0.01)
    assert kd_weight(5, 11, 0.1, 0.01) == pytest.approx(0.055)
    f = [lr_factor(s, 10, 3, "cosine", 0.1) for s in range(10)]
    assert f[:3] == pytest.approx([1 / 3, 2 / 3, 1.0]) and f[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in itertools.pairwise(f[2:]))
    assert lr_factor(9, 10, 0, "linear", 0.5) == pytest.approx(0.5)
    assert lr_factor(7, 10, 0, "constant", 0.5) == 1.0


def test_trains_only_proj_lin_and_keeps_teacher_frozen(tmp_path):
    cfg = ds.config(tmp_path, steps=3)
    d = Distiller(cfg, ds.components())
    names = [n for n, _ in d.trainable]
    assert names == ["global_blocks.0.attn.proj_lin.weight", "global_blocks.1.attn.proj_lin.weight"]
    assert d.num_trainable == 2 * 8 * 8
    teacher0 = {k: v.clone() for k, v in d.teacher.state_dict().items()}
    student0 = {k: v.clone() for k, v in d.student.state_dict().items()}
    d.run()
    assert all(torch.equal(v, teacher0[k]) for k, v in d.teacher.state_dict().items())
    changed = {k for k, v in d.student.state_dict().items() if not torch.equal(v, student0[k])}
    assert changed == {n for n in names}
    assert not any(p.requires_grad for p in d.teacher.parameters())
    # QAT wrapped the student's trunk Linears except proj_lin; the teacher stays dense
    assert type(d.student.global_blocks[0].attn.qkv).__name__ == "ToyFP8Linear"
    assert type(d.student.global_blocks[0].attn.proj_lin).__name__ == "Linear"
    assert type(d.teacher.global_blocks[0].attn.qkv).__name__ == "Linear"


def test_unfreeze_by_pattern_and_unknown_pattern(tmp_path):
    d = Distiller(ds.config(tmp_path, unfreeze=["cam_out.*"]), ds.components())
    assert {n for n, _ in d.trainable} >= {"cam_out.weight", "cam_out.bias"}
    with pytest.raises(InputError, match="match no parameter"):
        Distiller(ds.config(tmp_path, unfreeze=["nothing.here*"]), ds.components())


def test_recorder_hooks_exist_only_while_recording():
    model = ds.ToyModel()
    names = ["global_blocks.0.attn", "cam_trunk.attn"]
    rec = AttentionRecorder(model, names)
    x = torch.rand(1, 2, 3, 8, 8)
    with rec:
        model(x)
        assert all(model.get_submodule(n)._forward_hooks for n in names)
    assert len(rec.outputs["global_blocks.0.attn"]) == 1
    assert len(rec.outputs["cam_trunk.attn"]) == model.iters  # one per refinement iteration
    # attention-sublayer output: [B, tokens, C] (after proj, before LayerScale)
    assert rec.outputs["global_blocks.0.attn"][0].shape == (1, 2 * 5, 16)
    assert not any(model.get_submodule(n)._forward_hooks for n in names)
    rec.clear()
    model(x)  # no hooks: nothing recorded, nothing retained
    assert all(not v for v in rec.outputs.values())


def test_distilled_sites_default_to_converted(tmp_path):
    d = Distiller(ds.config(tmp_path), ds.components())
    assert d.kd_sites == ["global"] and d.teacher_trunk_only
    d = Distiller(ds.config(tmp_path, **{"distill.sites": ["global", "camera"]}), ds.components())
    assert d.kd_sites == ["camera", "global"] and not d.teacher_trunk_only
    with pytest.raises(InputError, match="unknown attention site"):
        Distiller(ds.config(tmp_path, **{"distill.sites": ["nope"]}), ds.components())


def test_kd_loss_is_zero_without_conversion_effect(tmp_path):
    """With proj_lin zeroed and no QAT the student computes the teacher exactly: KD = 0."""
    d = Distiller(ds.config(tmp_path, **{"qat.enabled": False}), ds.components())
    for _, p in d.trainable:
        p.data.zero_()
    d.student.global_blocks[0].attn.attend = d.teacher.global_blocks[0].attn.attend
    d.student.global_blocks[1].attn.attend = d.teacher.global_blocks[1].attn.attend
    batch = d.prepare_batch(MicroBatches(d._train_data, 1, (2, 2))[0])
    _, terms, _, _ = d.losses(batch, kd_gamma=0.1)
    assert float(terms["kd"]) == 0.0


def test_run_writes_adapter_config_and_log(tmp_path):
    result, events = _run(ds.config(tmp_path, **{"eval.every": 3}))
    kinds = [e["event"] for e in events]
    assert kinds[0] == "started" and kinds[-1] == "finished"
    assert [e["step"] for e in events if e["event"] == "step"] == [1, 2, 3, 4, 5, 6]
    assert [e["step"] for e in events if e["event"] == "eval"] == [3, 6]
    step = next(e for e in events if e["event"] == "step")
    assert {"loss", "terms", "lr", "steps_per_s", "eta_s", "total"} <= set(step)
    assert {"camera", "depth", "kd", "task", "gamma"} <= set(step["terms"])
    assert all(math.isfinite(e["loss"]) for e in events if e["event"] == "step")
    ev = events[-2]["metrics"]
    assert {"val/depth_absrel", "teacher/depth_absrel", "val/kd"} <= set(ev)
    adapter = read_adapter(result.adapter)
    assert set(adapter.tensors) == {
        "global_blocks.0.attn.proj_lin.weight",
        "global_blocks.1.attn.proj_lin.weight",
    }
    assert adapter.conversion == {"sites": ["global"]} and adapter.step == 6
    assert adapter.base_hash.startswith("sha256-state:") and adapter.config["seed"] == 3
    assert adapter.precision["fp8_qat"] and adapter.precision["qat_skip"] == ["proj_lin"]
    assert result.adapter.stat().st_size < 10_000
    assert (tmp_path / "config.yaml").exists() and len(
        (tmp_path / "log.jsonl").read_text().splitlines()
    ) == len(events)


@pytest.mark.parametrize("accum,workers", [(1, 0), (2, 1)])
def test_resume_is_bit_for_bit(tmp_path, accum, workers):
    over = {"optim.grad_accum": accum, "data.num_workers": workers, "data.batch_size": 2}
    straight, _ = _run(ds.config(tmp_path / "a", **over))
    stop_at = {"n": 0}

    def stop():  # cancel before the 4th step
        stop_at["n"] += 1
        return stop_at["n"] > 3

    part, events = _run(ds.config(tmp_path / "b", **over), should_stop=stop)
    assert part.status == "cancelled" and part.step == 3 and events[-1]["event"] == "cancelled"
    resumed, events = _run(ds.config(tmp_path / "b", **over), resume=tmp_path / "b")
    assert events[0]["resumed"] and events[0]["step"] == 3 and resumed.step == 6
    a = load_file(straight.adapter)
    b = load_file(resumed.adapter)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_other_config_or_base(tmp_path):
    _run(ds.config(tmp_path, steps=2))
    with pytest.raises(CheckpointError, match="different config"):
        _run(ds.config(tmp_path, steps=3, **{"optim.lr": 0.5}), resume=tmp_path)
    with pytest.raises(CheckpointError, match="different base"):
        _run(ds.config(tmp_path, steps=3, **{"model.init_seed": 1}), resume=tmp_path)
    (tmp_path / "x.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable resume checkpoint"):
        _run(ds.config(tmp_path, steps=3), resume=tmp_path / "x.pt")


def test_activation_checkpointing_same_gradients(tmp_path):
    grads = []
    for ckpt in (False, True):
        d = Distiller(ds.config(tmp_path, **{"precision.activation_checkpointing": ckpt}), ds.components())
        assert d.checkpointed_blocks == (4 if ckpt else 0)
        batch = d.prepare_batch(MicroBatches(d._train_data, 1, (2, 2))[0])
        total, _, _, rec = d.losses(batch, kd_gamma=0.1)
        total.backward()
        # the recorder saw the forward pass only (not the recomputation in backward)
        assert all(len(v) == 1 for v in rec.outputs.values())
        grads.append([p.grad.clone() for _, p in d.trainable])
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-8) for a, b in zip(*grads))


def test_data_order_independent_of_ranks_and_accumulation():
    one = list(RankSampler(0, 3, 2, DistInfo()))
    two = sorted(list(RankSampler(0, 3, 1, DistInfo(0, 2))) + list(RankSampler(0, 3, 1, DistInfo(1, 2))))
    assert one == two == list(range(6))
    assert list(RankSampler(2, 3, 2, DistInfo())) == [4, 5]
    data = MicroBatches(ds.ToyScenes("train", 0), 2, (2, 5))
    a, b = data[7], data[7]
    assert (
        a["images"].shape[0] == 2 and 2 <= a["images"].shape[1] <= 5 and torch.equal(a["images"], b["images"])
    )


def test_canonicalise_to_view0():
    torch.manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(3, 3, 3))
    ext = torch.cat([q, torch.randn(3, 3, 1)], -1)
    rel = canonicalise_to_view0(ext[None])[0]
    assert torch.allclose(rel[0], torch.eye(4)[:3], atol=1e-5)

    # relative poses are preserved: cam_i ← cam_0 is the same before and after
    def full(e):
        return torch.cat([e, torch.tensor([[0, 0, 0, 1.0]])], 0)

    for i in (1, 2):
        want = full(ext[i]) @ torch.linalg.inv(full(ext[0]))
        assert torch.allclose(full(rel[i]), want, atol=1e-5)
    assert torch.allclose(canonicalise_to_view0(rel[None])[0], rel, atol=1e-5)
