"""VGGT training losses: target normalisation, camera / depth / point terms, the distillation entry."""

from __future__ import annotations

import math

import pytest
import torch

from lite3r.geometry import extri_intri_to_pose_encoding
from lite3r.training.data.synthetic import SynthConfig, render_batch
from lite3r.training.losses import (
    LossConfig,
    camera_loss,
    distillation_task_loss,
    log_depth_term,
    normalize_targets,
    regression_loss,
    vggt_loss,
)


@pytest.fixture(scope="module")
def batch():
    return render_batch([1, 2], 3, 42, config=SynthConfig(supersample=1))


def _similarity(E: torch.Tensor, s: float, seed: int = 0):
    """World change X' = s R X + tr applied to world->camera extrinsics."""
    g = torch.Generator().manual_seed(seed)
    R = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))[0]
    R = R * torch.sign(torch.linalg.det(R))
    tr = torch.randn(3, generator=g, dtype=torch.float64)
    E = E.double()
    Rn = E[..., :3] @ R.T
    tn = s * E[..., 3] - (Rn @ tr[:, None])[..., 0]
    return torch.cat([Rn, tn[..., None]], -1).float()


def test_targets_are_canonical_and_scale_free(batch):
    t = normalize_targets(batch.extrinsics, batch.intrinsics, batch.depth, batch.valid)
    assert torch.equal(t.extrinsics[:, 0], torch.eye(3, 4).expand(2, 3, 4))
    assert torch.allclose(t.pose_enc[:, 0, :7], torch.tensor([0, 0, 0, 0, 0, 0, 1.0]).expand(2, 7))
    mean_dist = torch.stack([t.world_points[b].norm(dim=-1)[t.valid[b]].mean() for b in range(2)])
    assert torch.allclose(mean_dist, torch.ones(2), atol=1e-5)
    # the same scene in another world frame and unit gives the same targets
    t2 = normalize_targets(
        _similarity(batch.extrinsics, 3.7), batch.intrinsics, batch.depth * 3.7, batch.valid
    )
    for name in ("pose_enc", "depth", "world_points", "extrinsics"):
        torch.testing.assert_close(getattr(t2, name), getattr(t, name), atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(t2.scale, t.scale * 3.7, rtol=1e-5, atol=0)
    # camera-0 points = unprojected depth; view-0 depth is the z of its points
    torch.testing.assert_close(t.world_points[:, 0, ..., 2], t.depth[:, 0])
    assert torch.equal(t.frame_ok, torch.tensor([True, True]))


def test_camera_loss_weights_iterations_and_components():
    cfg = LossConfig()
    gt = torch.zeros(1, 2, 9)
    ok = torch.tensor([True])
    err = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    preds = [gt + err * (i + 1) for i in range(4)]  # iteration i off by (i+1)·err
    out = camera_loss(preds, gt, ok, cfg)
    w = [0.6**3, 0.6**2, 0.6, 1.0]
    lt = sum(w[i] * (i + 1) * err[:3].mean() for i in range(4)) / 4
    lr = sum(w[i] * (i + 1) * err[3:7].mean() for i in range(4)) / 4
    lf = sum(w[i] * (i + 1) * err[7:].mean() for i in range(4)) / 4
    torch.testing.assert_close(out["cam_T"], lt)
    torch.testing.assert_close(out["camera"], lt + lr + 0.5 * lf)
    assert float(camera_loss([gt.clone()], gt, ok, cfg)["camera"]) == 0.0
    assert float(camera_loss(preds, gt, torch.tensor([False]), cfg)["camera"]) == 0.0  # no valid frame


def test_regression_loss_terms():
    cfg = LossConfig()
    g = torch.Generator().manual_seed(0)
    gt = torch.rand(1, 2, 32, 32, 1, generator=g) + 1
    mask = torch.ones(1, 2, 32, 32, dtype=torch.bool)
    conf = torch.full((1, 2, 32, 32), 3.0)
    perfect = regression_loss(gt.clone(), gt, mask, conf, cfg, "grad")
    torch.testing.assert_close(perfect["conf"], -0.2 * torch.log(torch.tensor(3.0)))
    assert float(perfect["reg"]) == 0.0 and float(perfect["grad"]) == 0.0
    # a constant offset has no gradient term; noise has one
    shifted = regression_loss(gt + 0.5, gt, mask, conf, cfg, "grad")
    assert float(shifted["grad"]) < 1e-6 and abs(float(shifted["reg"]) - 0.5) < 1e-5
    noisy = regression_loss(gt + 0.1 * torch.randn(gt.shape, generator=g), gt, mask, conf, cfg, "grad")
    assert float(noisy["grad"]) > 0.01
    # quantile trimming drops the worst 2 %: a few huge outliers barely move the mean
    bad = gt + 0.01 * torch.rand(gt.shape, generator=g)
    bad.view(-1)[:10] += 1e4
    trimmed = regression_loss(bad, gt, mask, conf, cfg, "none")
    assert float(trimmed["reg"]) < 0.01
    untrimmed = regression_loss(bad, gt, mask, conf, LossConfig(valid_range=-1), "none")
    assert float(untrimmed["reg"]) > 40
    # points: the normal term vanishes for a rigidly shifted point map and not for a bent one
    v, u = torch.meshgrid(torch.linspace(-1, 1, 16), torch.linspace(-1, 1, 16), indexing="ij")
    pts = torch.stack([u, v, torch.ones_like(u)], -1)[None, None]
    m = torch.ones(1, 1, 16, 16, dtype=torch.bool)
    c = torch.ones(1, 1, 16, 16) * 2
    assert float(regression_loss(pts + 1.0, pts, m, c, cfg, "normal")["grad"]) < 1e-6
    bent = pts.clone()
    bent[..., 2] += u**2
    assert float(regression_loss(bent, pts, m, c, cfg, "normal")["grad"]) > 1e-3


def _gathered_regression(pred, gt, mask, conf, cfg, min_elements=1000, hard_max=100.0):
    """The regression terms by boolean indexing (the straightforward form the dense loss replaces)."""

    def trim(v):
        if v.numel() <= min_elements or cfg.valid_range <= 0:
            return v
        v = v.clamp(max=hard_max)
        k = round(cfg.valid_range * (v.numel() - 1)) + 1
        keep = v < min(float(torch.kthvalue(v.detach(), k).values), hard_max)
        return v[keep] if int(keep.sum()) > min_elements else v

    err = torch.linalg.vector_norm(gt[mask] - pred[mask], dim=-1)
    c = conf[mask]
    return trim(cfg.conf_gamma * err * c - cfg.conf_alpha * torch.log(c)).mean(), trim(err).mean()


@pytest.mark.parametrize("valid_fraction", [0.05, 0.6, 1.0])  # ≤ 1000 masked pixels (no trimming), trimmed
def test_dense_regression_terms_equal_the_gathered_form(valid_fraction):
    g = torch.Generator().manual_seed(1)
    shape = (2, 3, 24, 32)
    gt = torch.rand(*shape, 3, generator=g) + 0.5
    mask = torch.rand(shape, generator=g) < valid_fraction
    gt = torch.where(mask[..., None], gt, torch.zeros_like(gt))  # invalid GT is zero, as in the targets
    pred = (gt + 0.2 * torch.randn(gt.shape, generator=g)).requires_grad_()
    pred.data.view(-1)[:40] += 300.0  # outliers beyond hard_max and the quantile
    conf = (1 + torch.rand(shape, generator=g) * 3).requires_grad_()
    cfg = LossConfig()
    dense = regression_loss(pred, gt, mask, conf, cfg, "none")
    ref_conf, ref_reg = _gathered_regression(pred, gt, mask, conf, cfg)
    torch.testing.assert_close(dense["conf"], ref_conf, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dense["reg"], ref_reg, rtol=1e-5, atol=1e-6)
    gd = torch.autograd.grad(dense["conf"] + dense["reg"], (pred, conf))
    gr = torch.autograd.grad(ref_conf + ref_reg, (pred, conf))
    for a, b in zip(gd, gr, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_dense_normal_term_equals_the_gathered_form():
    from lite3r.training.losses import _normal_term, _normals

    g = torch.Generator().manual_seed(2)
    v, u = torch.meshgrid(torch.linspace(-1, 1, 20), torch.linspace(-1, 1, 20), indexing="ij")
    gt = torch.stack([u, v, 1 + 0.3 * u * v], -1)[None].repeat(2, 1, 1, 1)
    pred = (gt + 0.05 * torch.randn(gt.shape, generator=g)).requires_grad_()
    mask = torch.rand(2, 20, 20, generator=g) < 0.8
    dense = _normal_term(pred, gt, mask, 3)
    ref = pred.sum() * 0.0
    for k in range(3):
        st = 2**k
        p, q, m = pred[:, ::st, ::st], gt[:, ::st, ::st], mask[:, ::st, ::st]
        (npd, vp), (ngt, vg) = _normals(p, m), _normals(q, m)
        ok = vp & vg
        if int(ok.sum()) >= 10:
            ref = ref + (1 - (npd[ok] * ngt[ok]).sum(-1).clamp(-1 + 1e-8, 1 - 1e-8)).mean()
    ref = ref / 3
    torch.testing.assert_close(dense, ref, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(
        torch.autograd.grad(dense, pred)[0], torch.autograd.grad(ref, pred)[0], rtol=1e-4, atol=1e-7
    )


def test_vggt_loss_backpropagates_through_a_small_vggt(batch):
    from lite3r.training.tiny import build_tiny

    model = build_tiny("micro", seed=0)
    preds = model(batch.images)
    t = normalize_targets(batch.extrinsics, batch.intrinsics, batch.depth, batch.valid)
    total, terms = vggt_loss(preds, t)
    assert torch.isfinite(total) and {"camera", "depth", "cam_T", "depth_grad"} <= set(terms)
    total.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert float(model.depth_head.scratch.output_conv2[-1].weight.grad.abs().sum()) > 0
    # GT = prediction → zero camera loss
    enc = extri_intri_to_pose_encoding(t.extrinsics, t.intrinsics, batch.images.shape[-2:])
    assert float(camera_loss([enc], t.pose_enc, t.frame_ok, LossConfig())["camera"]) < 1e-6


def test_distillation_entry_and_options(batch):
    class RunLossConfig:  # the fields of lite3r.training.config.LossConfig
        camera_weight, depth_weight, options = 2.0, 0.5, {"valid_range": -1.0}

    t = normalize_targets(batch.extrinsics, batch.intrinsics, batch.depth, batch.valid)
    preds = {"pose_enc_list": [t.pose_enc + 0.1], "depth": (t.depth * 1.1)[..., None],
             "depth_conf": torch.full_like(t.depth, 2.0)}  # fmt: skip
    data = {
        "extrinsics": batch.extrinsics,
        "intrinsics": batch.intrinsics,
        "depth": batch.depth,
        "valid": batch.valid,
    }
    total, terms = distillation_task_loss(preds, data, RunLossConfig())
    torch.testing.assert_close(total, 2.0 * terms["camera"] + 0.5 * terms["depth"])
    with pytest.raises(ValueError, match="unknown loss options"):
        RunLossConfig.options = {"valid_rnage": 0.9}
        distillation_task_loss(preds, data, RunLossConfig())


def test_log_depth_term_is_relative_and_optional(batch):
    t = normalize_targets(batch.extrinsics, batch.intrinsics, batch.depth, batch.valid)
    mask = t.valid & t.frame_ok[:, None, None, None]
    cfg = LossConfig(log_depth_weight=2.0, valid_range=-1.0)
    # a uniform 10 % over-estimate is log(1.1) everywhere, near and far alike
    term = log_depth_term(t.depth * 1.1, t.depth, mask, cfg)
    assert abs(float(term) - math.log(1.1)) < 1e-5
    preds = {"pose_enc_list": [t.pose_enc], "depth": (t.depth * 1.1)[..., None],
             "depth_conf": torch.full_like(t.depth, 2.0)}  # fmt: skip
    total_off, terms_off = vggt_loss(preds, t, LossConfig(valid_range=-1.0))
    total_on, terms_on = vggt_loss(preds, t, cfg)
    assert "depth_log" not in terms_off
    torch.testing.assert_close(terms_on["depth"], terms_off["depth"] + 2.0 * terms_on["depth_log"])
    torch.testing.assert_close(total_on - total_off, 2.0 * terms_on["depth_log"])
    # the invalid pixels (GT 0) do not make the term or its gradient non-finite
    pred = (t.depth * 0.9 + 0.01).requires_grad_()
    log_depth_term(pred, t.depth, mask, cfg).backward()
    assert torch.isfinite(pred.grad).all() and float(pred.grad[~mask].abs().sum()) == 0
