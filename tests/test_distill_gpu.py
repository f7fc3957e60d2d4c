"""Distillation on a CUDA GPU: the SLA Triton kernels give the same gradients as the PyTorch reference,
a bf16 run with activation checkpointing trains, and a trained adapter deploys in FP8 (Hopper)."""

from __future__ import annotations

import pytest
import torch

from lite3r.training.config import DistillRunConfig

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from lite3r.models.vggt.config import VGGTConfig
    from lite3r.models.vggt.model import VGGT

    cfg = VGGTConfig.scaled(
        img_size=112,
        embed_dim=128,
        num_heads=2,
        depth=2,
        dino_depth=1,
        dpt_features=32,
        dpt_out_channels=(16, 32, 64, 64),
        point_head=False,
    )
    torch.manual_seed(0)
    model = VGGT(cfg)
    model.init_weights()
    return model.save_pretrained(tmp_path_factory.mktemp("tiny_gpu"))


def _config(out, folder, **over) -> DistillRunConfig:
    data = {
        "name": "gpu",
        "output_dir": str(out),
        "seed": 0,
        "device": "cuda",
        "steps": 3,
        "model": {"name": "lite3r-tiny", "weights": str(folder)},
        "conversion": {"sites": ["global"], "keep_ratio": 0.5, "block_q": 64, "block_k": 64},
        "optim": {"lr": 1e-3, "warmup_steps": 1},
        "data": {"image_size": 112, "views": [4, 4]},
        "eval": {"every": 0, "scenes": 1, "views": 4},
        "checkpoint": {"every": 0},
    }
    for key, value in over.items():
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return DistillRunConfig.from_dict(data)


def _components():
    from lite3r.training import components as real

    return real.build()


def test_triton_and_torch_backends_give_the_same_gradients(tmp_path, tiny_folder):
    from lite3r.engine.policy import tf32_state
    from lite3r.training.distill import Distiller, MicroBatches

    grads = {}
    # the torch reference in true fp32 whatever an earlier test in this process left set
    for backend in ("torch", "triton"):
        cfg = _config(
            tmp_path / backend, tiny_folder, **{"conversion.backend": backend, "precision.autocast": "fp32"}
        )
        with tf32_state(False):
            d = Distiller(cfg, _components())
            batch = d.prepare_batch(MicroBatches(d._train_data, 1, (4, 4))[0])
            total, _, _, _ = d.losses(batch, kd_gamma=0.1)
            total.backward()
        grads[backend] = [p.grad.float().clone() for _, p in d.trainable]
    for a, b in zip(grads["torch"], grads["triton"]):
        # Triton's fp32 dots run in TF32 and sum in another order: compare at 1e-3 of the tensor scale.
        torch.testing.assert_close(b, a, rtol=2e-2, atol=1e-3 * float(a.abs().max()))


def test_bf16_run_with_activation_checkpointing(tmp_path, tiny_folder):
    from lite3r.training.distill import run_distillation

    events = []
    cfg = _config(tmp_path, tiny_folder, **{"precision.activation_checkpointing": True, "eval.at_end": True})
    result = run_distillation(cfg, _components(), emit=events.append)
    steps = [e for e in events if e["event"] == "step"]
    assert result.status == "finished" and all(torch.isfinite(torch.tensor(e["loss"])) for e in steps)
    assert events[0]["checkpointed_blocks"] > 0 and events[0]["device"].startswith("cuda")


@pytest.mark.hopper
def test_adapter_deploys_in_fp8(tmp_path, tiny_folder):
    from lite3r.training.components import SynthScenes, load_base
    from lite3r.training.distill import run_distillation
    from lite3r.training.evaluation import deployable, evaluate_model

    cfg = _config(tmp_path, tiny_folder)
    result = run_distillation(cfg, _components())
    base = load_base(cfg.model, torch.device("cpu"))
    device = torch.device("cuda")
    model = deployable(base.model, "fp8", device, adapter=str(result.adapter), base_hash=base.base_hash)
    assert any(type(m).__name__ == "FP8Linear" for m in model.modules())
    out = evaluate_model(model, SynthScenes("test", 0, 112, device, {}), 2, 4, device)
    assert 0 < out["summary"]["depth_absrel"] < 10
