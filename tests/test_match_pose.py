"""Pose read-out from attention matches (lite3r.models.vggt.match_pose) and its evaluation script."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lite3r.errors import InputError
from lite3r.eval.metrics import relative_pose_errors
from lite3r.models.vggt.attention_capture import GlobalQKCapture
from lite3r.models.vggt.match_pose import (
    MatchPoseConfig,
    ViewMatches,
    encode_with_match_scores,
    estimate_poses,
    match_log_probs,
    patch_centers,
    patch_matches,
)
from lite3r.training.data.synthetic import SynthConfig, render_scene
from lite3r.training.match_pose_eval import gt_matches
from lite3r.training.tiny import build_tiny

PS = 14
SIZE = 112
VIEWS = 4


@pytest.fixture(scope="module")
def scene():
    s = render_scene(10_000_003, VIEWS, SIZE, "cpu", SynthConfig(supersample=1))
    d = s.depth.double().numpy()
    v = s.valid.numpy()
    K = s.intrinsics.double().numpy()
    E = s.extrinsics.double().numpy()
    return d * v, v, K, E


def _relative_to_view0(E: np.ndarray) -> np.ndarray:
    R0, t0 = E[0, :, :3], E[0, :, 3]
    R = E[:, :, :3] @ R0.T
    return np.concatenate([R, (E[:, :, 3] - np.einsum("sab,b->sa", R, t0))[..., None]], 2)


def _gt(scene, quantize=False):
    d, v, K, E = scene
    grid = (SIZE // PS, SIZE // PS)
    return [None] + [gt_matches(d, v, K, E, i, grid, PS, quantize) for i in range(1, VIEWS)]


def test_exact_gt_matches_and_depth_recover_the_gt_poses(scene):
    d, _, K, E = scene
    matches = _gt(scene)
    assert all(len(m) >= 12 for m in matches[1:])
    res = estimate_poses(matches, d[0], K, MatchPoseConfig(solver="pnp"), PS)
    assert res.solved.all()
    gt = _relative_to_view0(E)
    np.testing.assert_allclose(res.extrinsics, gt, atol=1e-5)  # world = camera 0, metric (GT depth) units
    r, t = relative_pose_errors(res.extrinsics, E)
    assert r.max() < 1e-3 and t.max() < 1e-2
    # 3-D–3-D with both GT depths: near-exact (view-i depth is sampled bilinearly at sub-pixel points)
    res = estimate_poses(matches, d[0], K, MatchPoseConfig(solver="procrustes"), PS, depths=d)
    r, t = relative_pose_errors(res.extrinsics, E)
    assert res.solved.all() and np.median(r) < 0.5 and np.median(t) < 5


def test_pnp_ignores_outliers_and_is_deterministic(scene):
    d, _, K, E = scene
    rng = np.random.default_rng(0)
    noisy = [None]
    for m in _gt(scene)[1:]:
        bad = rng.random(len(m)) < 0.3
        px = m.view_px.copy()
        px[bad] = rng.uniform(0, SIZE, size=(int(bad.sum()), 2))
        noisy.append(ViewMatches(m.ref_px, px))
    for solver in ("pnp", "procrustes", "essential"):
        cfg = MatchPoseConfig(solver=solver, ransac_iterations=300)
        a = estimate_poses(noisy, d[0], K, cfg, PS, depths=d)
        b = estimate_poses(noisy, d[0], K, cfg, PS, depths=d)
        np.testing.assert_array_equal(a.extrinsics, b.extrinsics)
        np.testing.assert_array_equal(a.num_inliers, b.num_inliers)
        if solver == "pnp":
            r, _ = relative_pose_errors(a.extrinsics, E)
            assert r.max() < 0.5  # an outlier inside the 7-px inlier band may enter the LM refit


def test_quantised_gt_matches_sit_on_patch_centres(scene):
    centres = patch_centers((SIZE // PS, SIZE // PS), PS)
    for m in _gt(scene, quantize=True)[1:]:
        dist = np.abs(m.view_px[:, None] - centres[None]).sum(-1).min(1)
        assert dist.max() < 1e-9


def _shifted_attention(h: int, w: int, shift: int, S: int = 2, special: int = 1):
    """q, k [1, 1, S·P, D] whose logits put view-0 patch (r, c) on view-1 patch (r, c + shift)."""
    hw = h * w
    D = hw
    k = torch.zeros(1, 1, S, special + hw, D)
    q = torch.zeros(1, 1, S, special + hw, D)
    k[0, 0, :, special:] = torch.eye(hw) * 8
    for p in range(hw):
        r, c = divmod(p, w)
        if 0 <= c + shift < w:
            q[0, 0, 0, special + p, r * w + c + shift] = 8.0  # view 0 → view 1
            q[0, 0, 1, special + r * w + c + shift, p] = 8.0  # view 1 → view 0
    return q.flatten(2, 3), k.flatten(2, 3)


def test_attention_logits_give_the_planted_matches():
    h = w = 4
    q, k = _shifted_attention(h, w, 1)
    to_ref, from_ref = match_log_probs(q, k, 2, 1)
    assert to_ref.shape == from_ref.shape == (1, 2, h * w, h * w)
    m = patch_matches(to_ref[0, 1], from_ref[0, 1], (h, w), PS, MatchPoseConfig(refine_radius=0))
    c = patch_centers((h, w), PS)
    assert len(m) == h * (w - 1)  # the last column has no partner: its best match is not mutual
    np.testing.assert_allclose(m.view_px - m.ref_px, np.tile([PS, 0.0], (len(m), 1)))
    assert set(map(tuple, m.ref_px)) <= set(map(tuple, c))
    for direction in ("to_ref", "both"):
        md = patch_matches(
            to_ref[0, 1], from_ref[0, 1], (h, w), PS, MatchPoseConfig(direction=direction, refine_radius=0)
        )
        assert len(md) == h * (w - 1) * (2 if direction == "both" else 1)
        np.testing.assert_allclose(md.view_px - md.ref_px, np.tile([PS, 0.0], (len(md), 1)))
    # no motion: every match sits in the query's own grid cell, and drop_same_position removes them all
    q0, k0 = _shifted_attention(h, w, 0)
    a, b = match_log_probs(q0, k0, 2, 1)
    assert len(patch_matches(a[0, 1], b[0, 1], (h, w), PS, MatchPoseConfig())) == h * w
    assert len(patch_matches(a[0, 1], b[0, 1], (h, w), PS, MatchPoseConfig(drop_same_position=True))) == 0
    # refinement stays inside the window and is pulled toward the peak
    mr = patch_matches(to_ref[0, 1], from_ref[0, 1], (h, w), PS, MatchPoseConfig(refine_radius=1))
    assert np.abs(mr.view_px - m.view_px).max() < 0.5 * PS


def test_capture_works_without_autograd_and_leaves_the_model_output_unchanged():
    model = build_tiny("micro", seed=0).eval()
    images = torch.rand(1, 3, 3, 56, 56)
    with torch.no_grad():
        ref = model(images)["depth"]
        with GlobalQKCapture(model, (-1,), grad_only=False) as cap:
            out = model(images)["depth"]
            got = cap.pop()
        assert not cap.handles
        assert set(got) == {1} and got[1][0].shape[:2] == (1, 2)
        torch.testing.assert_close(out, ref, rtol=0, atol=0)
        with GlobalQKCapture(model, (-1,), grad_only=True) as cap:
            model(images)
            assert cap.pop() == {}
    feats, to_ref, from_ref = encode_with_match_scores(model, images, MatchPoseConfig(heads=None))
    assert to_ref.shape == from_ref.shape == (1, 3, 16, 16)
    for lp in (to_ref, from_ref):
        torch.testing.assert_close(lp.exp().sum(-1), torch.ones(1, 3, 16), rtol=0, atol=1e-5)
    assert feats.layers


def test_bad_input_is_refused(scene):
    d, _, K, _ = scene
    with pytest.raises(InputError, match="solver"):
        MatchPoseConfig(solver="ransac")
    with pytest.raises(InputError, match="direction"):
        MatchPoseConfig(direction="sideways")
    with pytest.raises(InputError, match="layers"):
        MatchPoseConfig(layers=())
    with pytest.raises(InputError, match="length"):
        ViewMatches(np.zeros((3, 2)), np.zeros((4, 2)))
    m = _gt(scene)
    with pytest.raises(InputError, match="intrinsics"):
        estimate_poses(m, d[0], K[:2], MatchPoseConfig(), PS)
    with pytest.raises(InputError, match="depth"):
        estimate_poses(m, d[0], K, MatchPoseConfig(solver="procrustes"), PS)
    with pytest.raises(InputError, match="depth_ref"):
        estimate_poses(m, d, K, MatchPoseConfig(), PS)
    with pytest.raises(InputError, match="frames"):
        match_log_probs(torch.zeros(1, 1, 10, 4), torch.zeros(1, 1, 10, 4), 3, 1)
    with pytest.raises(InputError, match="head"):
        match_log_probs(torch.zeros(1, 1, 10, 4), torch.zeros(1, 1, 10, 4), 2, 1, heads=(3,))
    with pytest.raises(InputError, match="2 views"):
        encode_with_match_scores(build_tiny("micro"), torch.rand(1, 1, 3, 56, 56), MatchPoseConfig())
    # too few matches: reported, not silently solved; the fallback pose is kept
    few = [None] + [ViewMatches(mm.ref_px[:3], mm.view_px[:3]) for mm in m[1:]]
    fb = np.tile(np.eye(4)[:3], (VIEWS, 1, 1))
    fb[1:, 0, 3] = 7.0
    res = estimate_poses(few, d[0], K, MatchPoseConfig(), PS, fallback=fb)
    assert not res.solved[1:].any() and (res.extrinsics[1:, 0, 3] == 7.0).all() and res.solved[0]


def test_eval_script_on_the_micro_preset(tmp_path):
    from lite3r.training.match_pose_eval import main
    from lite3r.training.tiny import export_tiny

    export_tiny(build_tiny("micro", seed=0), tmp_path / "w")
    out = tmp_path / "r.json"
    rc = main(["--weights", str(tmp_path / "w"), "--scenes", "2", "--views", "2", "3", "--solvers", "pnp",
               "--layers", "-1", "--heads", "0", "1", "--out", str(out)])  # fmt: skip
    assert rc == 0
    res = json.loads(out.read_text())["results"]["results"]
    for S in (2, 3):
        for row in ("camera_head", "identity", "identity_rand_t", "readout/pnp", "gt_depth/pnp",
                    "oracle_patch/pnp", "oracle_exact/pnp", "match_diagnostics", "depth"):  # fmt: skip
            assert res[f"{row}/{S}"]["n"] == 2
        assert res[f"identity/{S}"]["rta@15"] == 0.0
        assert res[f"depth/{S}"]["abs_rel_lsq_view"] <= res[f"depth/{S}"]["abs_rel_lsq_scene"] + 1e-9
    assert out.with_suffix(".md").is_file()


def test_poses_from_scores_turns_match_scores_into_the_matches_poses(scene):
    """Scores peaked on the quantised GT matches (both directions) give the same poses as solving
    those matches directly, through patch_matches with the mutual check."""
    from lite3r.models.vggt.match_pose import poses_from_scores

    d, _v, K, E = scene
    grid = (SIZE // PS, SIZE // PS)
    hw = grid[0] * grid[1]
    centres = patch_centers(grid, PS)
    idx = lambda px: np.abs(px[:, None] - centres[None]).sum(-1).argmin(1)
    to_ref = np.full((VIEWS, hw, hw), -30.0)
    from_ref = np.full((VIEWS, hw, hw), -30.0)
    for i, m in enumerate(_gt(scene, quantize=True)[1:], start=1):
        a, b = idx(m.ref_px), idx(m.view_px)
        first = {}
        for ai, bi in zip(a, b):
            first.setdefault(bi, ai)  # one partner per view-i patch keeps the matches mutual
        for bi, ai in first.items():
            from_ref[i, ai, bi] = 0.0
            to_ref[i, bi, ai] = 0.0
    to_ref = torch.from_numpy(to_ref).log_softmax(-1)
    from_ref = torch.from_numpy(from_ref).log_softmax(-1)
    cfg = MatchPoseConfig(solver="pnp", refine_radius=0)
    res = poses_from_scores(to_ref, from_ref, d, K, cfg, PS)
    assert res.solved.all()
    matches = [None] + [patch_matches(to_ref[i], from_ref[i], grid, PS, cfg) for i in range(1, VIEWS)]
    direct = estimate_poses(matches, d[0], K, cfg, PS, depths=d)
    np.testing.assert_array_equal(res.extrinsics, direct.extrinsics)
    r, _ = relative_pose_errors(res.extrinsics, E)
    assert np.median(r) < 10.0  # 8×8 patches at 112 px: quantisation, not the path, limits accuracy
    with pytest.raises(InputError, match="views of match scores"):
        poses_from_scores(to_ref[:2], from_ref[:2], d, K, cfg, PS)


def test_bundle_adjustment_undoes_distorted_reference_depth(scene):
    """View 0's depth range-compressed (d^0.8, as lite3r-tiny's comes out) bends every PnP pose; the
    joint refinement over all views moves the tracks' depths and straightens the poses."""
    d, v, K, E = scene
    matches = _gt(scene)
    bent = np.where(v[0], d[0] ** 0.8 * np.median(d[0][v[0]]) ** 0.2, 0.0)
    errs = {}
    for ba in (False, True):
        cfg = MatchPoseConfig(solver="pnp", bundle_adjust=ba)
        res = estimate_poses(matches, bent, K, cfg, PS)
        assert res.solved.all() and res.solver == ("pnp+ba" if ba else "pnp")
        errs[ba] = relative_pose_errors(res.extrinsics, E)
    (r0, t0), (r1, t1) = errs[False], errs[True]
    assert r0.mean() > 0.5 and t0.mean() > 2.0  # the distortion matters
    assert r1.mean() < 0.5 * r0.mean() and t1.mean() < 0.5 * t0.mean()
    # with the exact depth the refinement keeps the exact poses
    res = estimate_poses(matches, d[0], K, MatchPoseConfig(solver="pnp", bundle_adjust=True), PS)
    np.testing.assert_allclose(res.extrinsics, _relative_to_view0(E), atol=1e-4)


def test_bundle_tracks_join_views_that_saw_the_same_reference_pixel():
    from lite3r.models.vggt.match_bundle import BundleObservations

    a = np.array([[6.5, 6.5], [20.5, 6.5]])
    obs = BundleObservations.from_matches(
        {1: (a, a + 1, np.array([2.0, 3.0])), 2: (a[1:], a[1:] + 2, np.array([3.0]))}
    )
    assert len(obs.ref_px) == 2 and list(obs.track) == [0, 1, 1] and list(obs.view) == [1, 1, 2]
    np.testing.assert_array_equal(obs.ref_depth, [2.0, 3.0])
