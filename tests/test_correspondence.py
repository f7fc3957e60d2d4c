"""Correspondence supervision of global attention (issue #6): targets, loss, hooks, config; the
translation-direction camera term."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lite3r.errors import InputError
from lite3r.training.correspondence import (
    AttentionCapture,
    correspondence_loss,
    patch_correspondences,
    resolve_layers,
)
from lite3r.training.losses import LossConfig, camera_loss
from lite3r.training.tiny import build_tiny
from lite3r.training.train_tiny import TinyTrainConfig, build_parser

PS = 14


def _plane_pair(h: int = 4, w: int = 4, shift_px: float = PS):
    """Two views of a fronto-parallel plane at z = 2; camera 1 moved along +x so every point moves
    ``shift_px`` pixels left in view 1. Returns world_points, valid, depth, E, K ([1, 2, ...])."""
    H, W = h * PS, w * PS
    f, z = 50.0, 2.0
    K = torch.tensor([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1.0]]).expand(1, 2, 3, 3).clone()
    dx = shift_px * z / f
    E = torch.zeros(1, 2, 3, 4)
    E[..., :3] = torch.eye(3)
    E[0, 1, 0, 3] = -dx  # camera 1 at world x = +dx
    v, u = torch.meshgrid(
        torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij"
    )
    pts0 = torch.stack([(u - W / 2) / f * z, (v - H / 2) / f * z, torch.full_like(u, z)], -1)
    pts1 = pts0 + torch.tensor([dx, 0.0, 0.0])  # world points seen by view 1's pixels
    world = torch.stack([pts0, pts1])[None]
    depth = torch.full((1, 2, H, W), z)
    valid = torch.ones(1, 2, H, W, dtype=torch.bool)
    return world, valid, depth, E, K


def test_targets_map_a_point_to_the_patch_of_the_other_view_that_sees_it():
    h = w = 4
    world, valid, depth, E, K = _plane_pair(h, w)
    t = patch_correspondences(world, valid, depth, E, K, PS)
    assert t.shape == (1, 2, h * w, 2)
    assert (t[0, :, :, 0][0] == -1).all() and (t[0, 1, :, 1] == -1).all()  # never a view with itself
    for p in range(h * w):
        r, c = divmod(p, w)
        # view 0 → 1: one patch to the left (the first column leaves the frame)
        assert int(t[0, 0, p, 1]) == (r * w + c - 1 if c > 0 else -1)
        # view 1 → 0: one patch to the right (the last column leaves the frame)
        assert int(t[0, 1, p, 0]) == (r * w + c + 1 if c < w - 1 else -1)


def test_targets_drop_occluded_and_invalid_points():
    world, valid, depth, E, K = _plane_pair()
    depth[0, 1, :PS] = 1.0  # an occluder in front of the top patch row of view 1
    valid[0, 0, PS : 2 * PS] = False  # no GT in the second patch row of view 0
    t = patch_correspondences(world, valid, depth, E, K, PS)
    assert (t[0, 0, :4, 1] == -1).all()  # row 0 of view 0 lands on the occluded row of view 1
    assert (t[0, 0, 4:8, 1] == -1).all()  # invalid source points
    assert (t[0, 0, 9:12, 1] >= 0).all()


def _gt_attention(targets: torch.Tensor, patch_start: int, strength: float):
    """q, k [1, 1, S·P, D] whose logits peak at the target patch (2 views, one-hot keys)."""
    _, S, hw, _ = targets.shape
    P = patch_start + hw
    D = hw
    k = torch.zeros(1, 1, S, P, D)
    q = torch.zeros(1, 1, S, P, D)
    k[0, 0, :, patch_start:] = torch.eye(hw) * strength
    for i in range(S):
        for p in range(hw):
            j = 1 - i
            if targets[0, i, p, j] >= 0:
                q[0, 0, i, patch_start + p, int(targets[0, i, p, j])] = strength
    return q.flatten(2, 3), k.flatten(2, 3)


def test_loss_is_near_zero_for_ground_truth_attention_and_high_for_random():
    world, valid, depth, E, K = _plane_pair(4, 4)
    t = patch_correspondences(world, valid, depth, E, K, PS)
    q, k = _gt_attention(t, patch_start=2, strength=8.0)
    loss, acc = correspondence_loss(q, k, t, num_views=2, patch_start=2, queries=16)
    assert float(loss) < 1e-3 and float(acc) == 1.0
    g = torch.Generator().manual_seed(0)
    qr, kr = torch.randn(q.shape, generator=g) * 0.01, torch.randn(k.shape, generator=g) * 0.01
    loss_r, _ = correspondence_loss(qr, kr, t, num_views=2, patch_start=2, queries=16)
    assert abs(float(loss_r) - math.log(16)) < 0.05  # uniform over the 16 patches of the other view
    none = torch.full_like(t, -1)
    zero, _ = correspondence_loss(q, k, none, num_views=2, patch_start=2)
    assert float(zero) == 0.0


def test_capture_hooks_are_inert_and_feed_gradients_to_the_trunk():
    torch.manual_seed(0)
    model = build_tiny("micro", point_head=False).eval()
    images = torch.rand(1, 2, 3, 56, 56)
    with torch.no_grad():
        ref = model(images)["pose_enc"]
    cap = AttentionCapture(model, (-1,))
    assert cap.layers == (model.aggregator.depth - 1,)
    with torch.no_grad():
        out = model(images)["pose_enc"]
    assert torch.equal(out, ref) and cap.pop() == {}  # nothing kept without autograd
    out = model(images)["pose_enc"]
    torch.testing.assert_close(out, ref, rtol=0, atol=0)  # the model's own output is unchanged
    ((q, k, frame_len),) = cap.pop().values()
    P = model.aggregator.patch_start_idx + 16
    assert q.shape == (1, 2, 2 * P, 16) and frame_len == P
    t = torch.randint(-1, 16, (1, 2, 16, 2))
    loss, _ = correspondence_loss(q, k, t, 2, model.aggregator.patch_start_idx)
    loss.backward()
    assert model.aggregator.global_blocks[-1].attn.qkv.weight.grad.abs().sum() > 0
    assert model.aggregator.frame_blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    cap.remove()
    assert not model.aggregator.global_blocks[-1].attn._forward_hooks


def test_layers_config_and_resume_defaults():
    assert resolve_layers(None, 4) == (2,) and resolve_layers((-1, 0), 3) == (0, 2)
    with pytest.raises(ValueError):
        resolve_layers((3,), 3)
    old = TinyTrainConfig().to_dict()
    for name in ("corr_weight", "corr_layers", "corr_queries", "corr_heads", "corr_depth_tol"):
        old.pop(name)
    assert TinyTrainConfig.from_dict(old).corr_weight == 0.0  # a pre-correspondence checkpoint: off
    args = build_parser().parse_args(["--out", "x", "--corr-weight", "0.5", "--corr-layers", "1", "2"])
    assert args.corr_weight == 0.5 and args.corr_layers == [1, 2]
    with pytest.raises(InputError, match="compile"):
        TinyTrainConfig(corr_weight=1.0, compile=True).validate()


def test_translation_direction_term_is_scale_free():
    cfg = LossConfig(trans_dir_weight=2.0)
    gt = torch.zeros(1, 2, 9)
    gt[0, 1, :3] = torch.tensor([0.3, 0.0, 0.4])
    gt[..., 6] = 1.0
    ok = torch.tensor([True])
    same_dir = gt.clone()
    same_dir[0, 1, :3] *= 0.2  # right direction, wrong length
    out = camera_loss([same_dir], gt, ok, cfg)
    assert float(out["cam_Tdir"]) < 1e-6 and float(out["cam_T"]) > 0
    opposite = gt.clone()
    opposite[0, 1, :3] *= -1
    out = camera_loss([opposite], gt, ok, cfg)
    torch.testing.assert_close(out["cam_Tdir"], torch.tensor(2.0))
    torch.testing.assert_close(out["camera"], out["cam_T"] + out["cam_R"] + 0.5 * out["cam_FoV"] + 4.0)
    assert "cam_Tdir" not in camera_loss([gt], gt, ok, LossConfig())  # off by default


def test_training_logs_the_new_terms_and_resume_keeps_them(tmp_path):
    from lite3r.training.train_tiny import EXIT_OK, train

    cfg = TinyTrainConfig(preset="micro", views=(2, 2), views_per_step=2, total_steps=2, warmup_steps=1,
                          supersample=1, eval_every=0, eval_scenes=0, log_every=1, corr_weight=1.0,
                          loss={"trans_dir_weight": 1.0})  # fmt: skip
    out = tmp_path / "run"
    assert train(cfg, out, device="cpu", max_steps=1, quiet=True) == EXIT_OK
    steps = [e for e in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if e["event"] == "step"]
    assert {"corr", "corr_acc", "cam_Tdir"} <= set(steps[0]["terms"])
    with pytest.raises(InputError, match="keeps its trajectory"):
        train(TinyTrainConfig(corr_weight=0.5), out, device="cpu", resume=True, quiet=True,
              explicit={"corr_weight"})  # fmt: skip
    assert train(TinyTrainConfig(), out, device="cpu", resume=True, quiet=True, explicit=set()) == EXIT_OK
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 2 and ckpt["config"]["corr_weight"] == 1.0
