"""SynthMV and lite3r-tiny training on CUDA: dense rendering, determinism, agreement with the CPU, and
the training loop with the prefetching data thread (side CUDA stream)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from lite3r.training.data.synthetic import SynthConfig, cast_rays, render_batch, render_scene

pytestmark = pytest.mark.gpu
FIELDS = ("images", "depth", "valid", "intrinsics", "extrinsics", "world_points", "covisibility")


def test_cuda_render_is_deterministic_and_batch_invariant():
    seeds = [3, 4, 5, 6, 7, 8]  # all three families
    a = render_batch(seeds, 4, 112, "cuda")
    b = render_batch(seeds, 4, 112, "cuda")
    for name in FIELDS:
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    alone = render_scene(seeds[3], 4, 112, "cuda")
    for name in FIELDS:
        assert torch.equal(getattr(alone, name), getattr(a, name)[3]), name
    assert float(a.covisibility[:, 1:].min()) >= SynthConfig().min_covisibility


def test_cuda_matches_cpu_geometry():
    """Same scenes and cameras; depth agrees to float round-off except on a handful of edge pixels."""
    cpu = render_batch([11, 12, 13], 3, 56, "cpu", SynthConfig(supersample=1))
    gpu = render_batch([11, 12, 13], 3, 56, "cuda", SynthConfig(supersample=1)).to("cpu")
    assert torch.allclose(gpu.extrinsics, cpu.extrinsics) and torch.allclose(gpu.intrinsics, cpu.intrinsics)
    both = cpu.valid & gpu.valid
    rel = ((gpu.depth - cpu.depth).abs() / cpu.depth.clamp_min(1e-6))[both]
    assert float((rel < 1e-4).float().mean()) > 0.99
    assert float((cpu.valid != gpu.valid).float().mean()) < 0.01
    assert float((gpu.images - cpu.images).abs().mean()) < 0.01


def test_cuda_depth_recast():
    s = render_scene(21, 3, 112, "cuda", family="room")
    X = s.world_points[0][s.valid[0]]
    R, t = s.extrinsics[0, :, :3], s.extrinsics[0, :, 3]
    C = -R.T @ t
    th = cast_rays(s.metadata, C.expand_as(X), X - C)
    assert float(((th - 1).abs() < 1e-4).float().mean()) > 0.999


def test_train_tiny_on_cuda_with_prefetch(tmp_path):
    from lite3r.training.train_tiny import EXIT_OK, TinyTrainConfig, train

    cfg = TinyTrainConfig(preset="micro", views=(2, 4), views_per_step=8, total_steps=6, warmup_steps=2,
                          eval_every=3, eval_scenes=4, eval_views=3, log_every=1)  # fmt: skip
    before = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cudnn.benchmark,
    )
    assert train(cfg, tmp_path / "run", device="cuda", quiet=True) == EXIT_OK
    # the run's TF32 / autotuning settings do not leak into the caller's process
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
            torch.backends.cudnn.benchmark) == before  # fmt: skip
    ev = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    steps = [e for e in ev if e["event"] == "step"]
    assert len(steps) == 6 and all(e["loss"] == e["loss"] for e in steps)
    assert ev[-1]["event"] == "finished"
    # an explicit total_steps re-plans a resumed run
    cfg2 = TinyTrainConfig(**{**cfg.__dict__, "total_steps": 8})
    assert (
        train(cfg2, tmp_path / "run", device="cuda", resume=True, quiet=True, explicit={"total_steps"})
        == EXIT_OK
    )
    ev = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert ev[-1]["event"] == "finished" and ev[-1]["step"] == 8


def test_replay_with_prefetch_draws_the_batches_of_the_synchronous_path(tmp_path):
    from lite3r.training.train_tiny import EXIT_OK, StepData, TinyTrainConfig, train

    cfg = TinyTrainConfig(preset="micro", views=(2, 4), views_per_step=8, replay=2, replay_window=3,
                          total_steps=5, warmup_steps=2, eval_every=0, eval_scenes=0, log_every=1)  # fmt: skip
    dev = torch.device("cuda")
    threaded = StepData(cfg, 56, dev, lambda: cfg.total_steps)
    plain = StepData(dataclasses.replace(cfg, prefetch=False), 56, dev, lambda: cfg.total_steps)
    assert threaded.use_thread and not plain.use_thread
    for k in range(5):  # the side-stream producer fills the pool exactly as the synchronous path
        a, b = threaded.get(k, prefetch_next=k < 4), plain.get(k)
        assert all(torch.equal(a[n], b[n]) for n in a), k
    threaded.close()
    assert train(cfg, tmp_path / "run", device="cuda", quiet=True) == EXIT_OK
