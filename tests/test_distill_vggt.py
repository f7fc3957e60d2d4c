"""Distillation with the real pieces: a VGGT teacher loaded from a weights folder (lite3r-tiny layout),
FP8 fake quantisation, SynthMV scenes rendered online, the evaluation metrics, and the adapter loaded
back into the engine."""

from __future__ import annotations

import distill_standins as ds
import numpy as np
import pytest
import torch
from distill_standins import restore_threads  # noqa: F401  (autouse fixture)
from safetensors.torch import load_file

from lite3r.adapters import base_hash_of, load_adapter, read_adapter
from lite3r.errors import CheckpointError
from lite3r.training import components as real
from lite3r.training.config import DistillRunConfig
from lite3r.training.distill import Distiller, MicroBatches, run_distillation


def components():
    return real.build()


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return ds.micro_vggt_folder(tmp_path_factory.mktemp("tiny"))


def _config(out, folder, **over) -> DistillRunConfig:
    data = {
        "name": "vggt",
        "output_dir": str(out),
        "seed": 1,
        "device": "cpu",
        "steps": 4,
        "threads": 1,
        "model": {"name": "lite3r-tiny", "weights": str(folder)},
        # 21 tokens per frame at 56 px: 16-token blocks so that the global sequences have ≥ 2 key blocks
        "conversion": {"sites": ["global"], "keep_ratio": 0.5, "block_q": 16, "block_k": 16},
        "optim": {"lr": 1e-2, "warmup_steps": 1},
        "precision": {"autocast": "fp32"},
        "data": {"image_size": 56, "views": [2, 3], "options": {"supersample": 1}},
        "eval": {"every": 0, "scenes": 2, "views": 3},
        "checkpoint": {"every": 2},
    }
    for key, value in over.items():
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return DistillRunConfig.from_dict(data)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, tiny_folder):
    """4 steps in one go, with the periodic evaluation (1 held-out scene)."""
    events = []
    out = tmp_path_factory.mktemp("straight")
    result = run_distillation(
        _config(out, tiny_folder, **{"eval.scenes": 1}), components(), emit=events.append
    )
    return result, events


def test_vggt_distillation_events(straight):
    result, events = straight
    started = events[0]
    assert started["converted_sites"] == ["global"] and started["distilled_sites"] == ["global"]
    assert started["trainable"] == [
        "aggregator.global_blocks.0.attn.proj_lin.weight",
        "aggregator.global_blocks.1.attn.proj_lin.weight",
    ]
    assert started["trainable_parameters"] == 2 * 16 * 16
    assert started["base_hash"].startswith("sha256-file:")
    metrics = [e for e in events if e["event"] == "eval"][-1]["metrics"]
    assert {"val/depth_absrel", "val/auc30", "val/chamfer", "teacher/depth_absrel", "val/kd"} <= set(metrics)
    assert result.adapter.stat().st_size < 20_000


def test_vggt_distillation_resumes_bit_for_bit(tmp_path, tiny_folder, straight):
    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return calls["n"] > 2

    quiet = {"eval.at_end": False}
    part = run_distillation(_config(tmp_path, tiny_folder, **quiet), components(), should_stop=stop)
    assert part.status == "cancelled" and part.step == 2
    resumed = run_distillation(_config(tmp_path, tiny_folder, **quiet), components(), resume=tmp_path)
    a, b = load_file(straight[0].adapter), load_file(resumed.adapter)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_one_proj_lin_policy_for_qat_and_deployment():
    from lite3r.quant.selection import DEFAULT_SKIP

    assert DistillRunConfig().qat.skip == list(DEFAULT_SKIP) and DistillRunConfig().qat.modules == "trunk"


def test_student_is_quantised_teacher_is_not(tmp_path, tiny_folder):
    d = Distiller(_config(tmp_path, tiny_folder), components())
    qkv_s = d.student.get_submodule("aggregator.global_blocks.0.attn.qkv")
    qkv_t = d.teacher.get_submodule("aggregator.global_blocks.0.attn.qkv")
    assert type(qkv_s).__name__ == "FP8FakeQuantLinear" and type(qkv_t) is torch.nn.Linear
    heads = [
        n
        for n, m in d.student.named_modules()
        if type(m).__name__ == "FP8FakeQuantLinear" and not n.startswith("aggregator")
    ]
    assert heads == []  # trunk only: the heads run in fp32, as deployed
    assert all(
        type(m) is not torch.nn.Linear or "proj_lin" not in n
        for n, m in d.student.named_modules()
        if type(m).__name__ == "FP8FakeQuantLinear"
    )
    assert not any(p.requires_grad for p in d.teacher.parameters())


def test_activation_checkpointing_on_vggt(tmp_path, tiny_folder):
    grads = []
    for ckpt in (False, True):
        d = Distiller(
            _config(tmp_path, tiny_folder, **{"precision.activation_checkpointing": ckpt}), components()
        )
        assert d.checkpointed_blocks == (5 if ckpt else 0)  # 1 DINO + 2 frame + 2 global blocks
        batch = d.prepare_batch(MicroBatches(d._train_data, 1, (2, 2))[0])
        total, _, _, _ = d.losses(batch, kd_gamma=0.1)
        total.backward()
        grads.append([p.grad.clone() for _, p in d.trainable])
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(*grads))


def test_adapter_loads_into_the_engine(tiny_folder, straight):
    from lite3r.engine.reconstructor import Reconstructor
    from lite3r.models.registry import load_model

    result = straight[0]
    model = load_model("lite3r-tiny", weights=tiny_folder)
    model = load_adapter(model, result.adapter, base_hash_of(model))
    trained = read_adapter(result.adapter).tensors
    for name, t in trained.items():
        assert torch.equal(model.get_parameter(name).detach(), t)
    rc = Reconstructor(
        model, precision="fp32", device="cpu", attention="dense", model_name="lite3r-tiny", input_size=56
    )
    photos = [np.random.default_rng(i).integers(0, 255, (56, 56, 3), dtype=np.uint8) for i in range(2)]
    rec = rc.reconstruct(photos)
    assert rec.depth.shape[0] == 2

    other = load_model("lite3r-tiny", weights=tiny_folder)
    with torch.no_grad():
        other.get_parameter("aggregator.camera_token").add_(1.0)
    with pytest.raises(CheckpointError, match="different base model"):
        load_adapter(other, result.adapter, real.hash_state_dict(other.state_dict()))


def test_da3_teacher_and_student_see_imagenet_normalised_images(tmp_path):
    """DA3 takes (x − mean)/std (method.md C2): both models get it, VGGT gets [0, 1] images."""
    import json

    from conftest import PARITY_DIR

    from lite3r.models import reference
    from lite3r.training.distill import Distiller

    da3_config = reference.build(json.loads((PARITY_DIR / "da3_small_config.json").read_text())).config

    def depth_loss(preds, batch, loss_cfg):
        conf = preds["depth_conf"]
        d = (conf * (preds["depth"] - batch["depth"]).abs() - 0.2 * torch.log(conf))[batch["valid"]].mean()
        return d, {"depth": d}

    comp = components()
    comp.task_loss = depth_loss
    cfg = _config(
        tmp_path,
        None,
        **{
            "model": {"name": "da3-large", "random_init": True, "config": da3_config.to_dict()},
            "conversion.sites": ["cross_view"],
            "eval.at_end": False,
            "steps": 1,
        },
    )
    d = Distiller(cfg, comp)
    seen = []
    for m in (d.teacher, d.student):
        m.backbone.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach()))
    result = d.run()
    assert result.status == "finished" and len(seen) == 2
    raw = MicroBatches(d._train_data, 1, (2, 3))[0]["images"]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    for images in seen:
        torch.testing.assert_close(images, (raw - mean) / std)
