"""Metrics and alignment: hand-computed cases and invariances (lite3r.eval.metrics / align / evaluate)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lite3r.eval import metrics as M
from lite3r.eval.align import Sim3, align_cameras, camera_centers, umeyama, umeyama_ransac
from lite3r.eval.evaluate import (
    GroundTruth,
    MetricConfig,
    Prediction,
    evaluate_sample,
    flatten,
)
from lite3r.geometry import unproject_depth


def rot(axis: str, deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def random_rotation(rng) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def look_at_extrinsics(centers: np.ndarray, target=(0.0, 0.0, 0.0)) -> np.ndarray:
    """World→camera OpenCV extrinsics of cameras at ``centers`` looking at ``target``."""
    out = []
    for c in centers:
        z = np.asarray(target) - c
        z = z / np.linalg.norm(z)
        x = np.cross(z, [0.0, 1.0, 0.3])
        x /= np.linalg.norm(x)
        y = np.cross(z, x)
        R = np.stack([x, y, z])
        out.append(np.concatenate([R, (-R @ c)[:, None]], axis=1))
    return np.stack(out)


def random_sim3(rng, scale=2.3) -> Sim3:
    return Sim3(scale, random_rotation(rng), rng.normal(size=3) * 3)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# ---------------------------------------------------------------------------------------------- align


def test_umeyama_recovers_known_similarity(rng):
    src = rng.normal(size=(50, 3))
    sim = random_sim3(rng)
    est = umeyama(src, sim.apply(src))
    assert est.scale == pytest.approx(2.3, rel=1e-10)
    np.testing.assert_allclose(est.rotation, sim.rotation, atol=1e-10)
    np.testing.assert_allclose(est.translation, sim.translation, atol=1e-10)
    rigid = umeyama(src, sim.apply(src), with_scale=False)
    assert rigid.scale == 1.0 and np.linalg.det(rigid.rotation) == pytest.approx(1.0)


def test_umeyama_reflection_is_not_returned(rng):
    src = rng.normal(size=(20, 3))
    dst = src * np.array([-1.0, 1.0, 1.0])  # a mirror image: best proper rotation, det = +1
    assert np.linalg.det(umeyama(src, dst).rotation) == pytest.approx(1.0)


def test_umeyama_degenerate_and_too_few_raise():
    with pytest.raises(ValueError, match="at least 3"):
        umeyama(np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="degenerate"):
        umeyama(np.ones((5, 3)), np.zeros((5, 3)))


def test_umeyama_ransac_ignores_outlier_cameras(rng):
    src = rng.normal(size=(12, 3)) * 2
    sim = random_sim3(rng, scale=0.7)
    dst = sim.apply(src)
    dst[[2, 7]] += np.array([[5.0, -4, 3], [-6, 2, 5]])  # two wildly wrong cameras
    est, inliers = umeyama_ransac(src, dst, seed=42)
    assert not inliers[2] and not inliers[7] and inliers.sum() == 10
    assert est.scale == pytest.approx(0.7, rel=1e-9)
    plain = umeyama(src, dst)
    assert abs(plain.scale - 0.7) > 1e-3  # the plain fit is pulled off by the outliers


def test_sim3_on_extrinsics_moves_centres_and_keeps_relative_poses(rng):
    E = look_at_extrinsics(rng.normal(size=(5, 3)) * 4)
    sim = random_sim3(rng)
    E2 = sim.apply_to_extrinsics(E)
    np.testing.assert_allclose(camera_centers(E2), sim.apply(camera_centers(E)), atol=1e-10)
    np.testing.assert_allclose(
        E2[:, :, :3] @ np.swapaxes(E2[:, :, :3], 1, 2), np.broadcast_to(np.eye(3), (5, 3, 3)), atol=1e-12
    )
    # a point seen by camera k keeps its direction and gets depth × scale
    X = rng.normal(size=3)
    x1 = E[0, :, :3] @ X + E[0, :, 3]
    x2 = E2[0, :, :3] @ sim.apply(X) + E2[0, :, 3]
    np.testing.assert_allclose(x2, sim.scale * x1, atol=1e-10)


@pytest.mark.parametrize("method", ["centers", "first_camera"])
def test_align_cameras_recovers_inverse_similarity(rng, method):
    gt = look_at_extrinsics(rng.normal(size=(6, 3)) * 3)
    sim = random_sim3(rng)
    pred = sim.apply_to_extrinsics(gt)  # prediction lives in the frame X' = sim(X)
    est = align_cameras(pred, gt, method=method)
    np.testing.assert_allclose(est.apply(camera_centers(pred)), camera_centers(gt), atol=1e-9)
    np.testing.assert_allclose(est.apply_to_extrinsics(pred), gt, atol=1e-9)


def test_align_cameras_two_views_first_camera_only(rng):
    gt = look_at_extrinsics(np.array([[0, 0, -4.0], [1.5, 0.2, -3.5]]))
    pred = random_sim3(rng).apply_to_extrinsics(gt)
    np.testing.assert_allclose(
        align_cameras(pred, gt, "first_camera").apply_to_extrinsics(pred), gt, atol=1e-9
    )
    with pytest.raises(ValueError, match="at least 3"):
        align_cameras(pred, gt, "centers")


# ---------------------------------------------------------------------------------------------- depth


def test_depth_metrics_hand_computed():
    pred = np.ones((1, 2, 2))
    gt = np.array([[[1.0, 1.0], [1.0, 2.0]]])
    m = M.depth_metrics(pred, gt, policy="lsq_scene", min_valid=1)
    # s = Σgp/Σp² = 5/4; s·p = 1.25 → errors 0.25, 0.25, 0.25, 0.75
    assert m["scale"] == pytest.approx(1.25)
    assert m["abs_rel"] == pytest.approx((0.25 * 3 + 0.375) / 4)
    assert m["rmse"] == pytest.approx(math.sqrt((3 * 0.0625 + 0.5625) / 4))
    assert (m["delta1"], m["delta2"], m["delta3"]) == (0.0, 0.75, 1.0)  # ratios 1.25 ×3 and 1.6
    assert m["scale_policy"] == "lsq_scene" and m["n_valid"] == 4
    med = M.depth_metrics(pred, gt, policy="median_view", min_valid=1)
    assert med["scale"] == pytest.approx(1.0) and med["abs_rel"] == pytest.approx(0.5 / 4 / 1)


def test_depth_policies_scale_invariance_and_per_view(rng):
    gt = rng.uniform(1, 5, size=(3, 8, 8))
    per_view = np.array([2.0, 0.5, 3.0])[:, None, None]
    pred = gt / per_view  # each view off by its own scale
    assert M.depth_metrics(pred, gt, policy="median_view")["abs_rel"] == pytest.approx(0, abs=1e-12)
    assert M.depth_metrics(pred, gt, policy="lsq_view")["abs_rel"] == pytest.approx(0, abs=1e-12)
    assert M.depth_metrics(pred, gt, policy="lsq_scene")["abs_rel"] > 0.1  # not multi-view consistent
    noisy = gt * rng.uniform(0.8, 1.2, size=gt.shape)
    for policy in ("lsq_scene", "median_scene", "median_view", "lsq_view"):
        a = M.depth_metrics(noisy, gt, policy=policy)
        b = M.depth_metrics(noisy * 7.0, gt, policy=policy)
        for k in ("abs_rel", "rmse", "delta1"):
            assert a[k] == pytest.approx(b[k], rel=1e-9)
    none = M.depth_metrics(gt * 2, gt, policy="none")
    assert none["abs_rel"] == pytest.approx(1.0) and none["scale_policy"] == "none"
    given = M.depth_metrics(gt * 2, gt, scale=0.5)
    assert given["abs_rel"] == pytest.approx(0) and given["scale_policy"] == "given"


def test_depth_masks_invalid_and_too_few():
    gt = np.array([[[0.0, np.nan], [2.0, 4.0]]])
    pred = np.array([[[99.0, 99.0], [1.0, 2.0]]])
    m = M.depth_metrics(pred, gt, min_valid=1)
    assert m["n_valid"] == 2 and m["abs_rel"] == pytest.approx(0)
    assert math.isnan(M.depth_metrics(pred, gt)["abs_rel"])  # < 100 valid pixels
    zero = M.depth_metrics(np.zeros((1, 2, 2)), np.full((1, 2, 2), 3.0), policy="none", min_valid=1)
    assert zero["abs_rel"] == pytest.approx(1.0, abs=1e-5) and zero["delta3"] == 0.0
    with pytest.raises(ValueError, match="unknown depth scale policy"):
        M.depth_metrics(pred, gt, policy="mean", min_valid=1)


# ----------------------------------------------------------------------------------------------- pose


def test_rotation_and_translation_angles():
    for deg in (0.0, 1e-6, 2.5, 90.0, 179.9):
        assert M.rotation_angle_deg(np.eye(3), rot("y", deg)) == pytest.approx(deg, abs=1e-9)
    t = np.array([1.0, 0, 0])
    assert M.translation_angle_deg(t, -t) == pytest.approx(0.0)  # sign folded
    assert M.translation_angle_deg(t, -t, fold_sign=False) == pytest.approx(180.0)
    assert M.translation_angle_deg(t, np.array([1.0, 1.0, 0])) == pytest.approx(45.0)
    assert M.translation_angle_deg(t, np.array([-1.0, 1.0, 0])) == pytest.approx(45.0)
    assert M.translation_angle_deg(t, np.zeros(3)) == 90.0


def test_pose_auc_perfect_and_sim3_invariant(rng):
    gt = look_at_extrinsics(rng.normal(size=(8, 3)) * 4)
    for pred in (gt, random_sim3(rng).apply_to_extrinsics(gt)):
        m = M.pose_metrics(pred, gt)
        assert m["n_pairs"] == 28
        for tau in (3, 5, 15, 30):
            assert m[f"auc@{tau}"] == pytest.approx(100.0)
            assert m[f"rra@{tau}"] == 100.0 and m[f"rta@{tau}"] == 100.0
        assert m["rot_err_mean"] < 1e-6 and m["trans_err_mean"] < 1e-6


def test_pose_auc_known_rotation_error():
    gt = look_at_extrinsics(np.array([[0, 0, -4.0], [2.0, 0.5, -3.0]]))
    pred = gt.copy()
    # rotate camera 1 by 2.5° about its own optical axis, keeping its centre
    C1 = camera_centers(gt)[1]
    pred[1, :, :3] = rot("z", 2.5) @ gt[1, :, :3]
    pred[1, :, 3] = -pred[1, :, :3] @ C1
    r, t = M.relative_pose_errors(pred, gt)
    assert r[0] == pytest.approx(2.5, abs=1e-9) and t[0] == pytest.approx(0.0, abs=1e-6)
    m = M.pose_metrics(pred, gt)
    assert m["auc@3"] == pytest.approx(100 / 3)  # cumsum over bins [0,1),[1,2),[2,3] = 0,0,1
    assert m["auc@5"] == pytest.approx(60.0)
    assert m["auc@30"] == pytest.approx(100 * 28 / 30)
    assert m["rra@3"] == 100.0 and m["rra@5"] == 100.0
    assert M.pose_metrics(pred, gt, thresholds=(2,))["rra@2"] == 0.0


def test_pose_auc_known_translation_error():
    gt = look_at_extrinsics(np.array([[0, 0, -4.0], [2.0, 0, -4.0]]))
    pred = gt.copy()
    # move camera 1's centre so that the baseline direction (in camera 0) turns by 10°, rotation kept
    C = camera_centers(gt)
    base = C[1] - C[0]
    new_base = np.linalg.norm(base) * (rot("y", 10.0) @ (base / np.linalg.norm(base)))
    pred[1, :, 3] = -gt[1, :, :3] @ (C[0] + new_base)
    r, t = M.relative_pose_errors(pred, gt)
    assert r[0] == pytest.approx(0.0, abs=1e-6) and t[0] == pytest.approx(10.0, abs=1e-9)
    assert M.pose_auc(r, t, 30) == pytest.approx(100 * 20 / 30)
    assert M.pose_auc(np.array([31.0]), np.array([0.0]), 30) == 0.0


def test_ate_zero_after_alignment_nan_for_two_views(rng):
    gt = look_at_extrinsics(rng.normal(size=(5, 3)) * 4)
    pred = random_sim3(rng).apply_to_extrinsics(gt)
    a = M.ate(pred, gt, normalizer=10.0)
    assert a["ate_rmse"] == pytest.approx(0, abs=1e-9) and a["ate_rmse_rel"] == pytest.approx(0, abs=1e-9)
    assert math.isnan(M.ate(pred[:2], gt[:2])["ate_rmse"])
    # one camera displaced by d in GT → non-zero ATE, smaller than the raw displacement
    gt2 = gt.copy()
    gt2[2, :, 3] -= gt2[2, :, :3] @ np.array([0.5, 0, 0])
    e = M.ate(gt, gt2)["ate_rmse"]
    assert 0 < e < 0.5


# ------------------------------------------------------------------------------------------- clouds


def test_chamfer_fscore_hand_computed():
    pred = np.array([[0.0, 0, 0]])
    gt = np.array([[1.0, 0, 0], [3.0, 0, 0]])
    m = M.chamfer_fscore(pred, gt, {"1.5": 1.5})
    assert (m["acc"], m["comp"], m["chamfer"]) == (1.0, 2.0, 1.5)
    assert m["precision@1.5"] == 1.0 and m["recall@1.5"] == 0.5
    assert m["fscore@1.5"] == pytest.approx(2 / 3)
    same = M.chamfer_fscore(gt, gt, {"t": 1e-9})
    assert same["chamfer"] == 0 and same["fscore@t"] == 1.0
    empty = M.chamfer_fscore(np.zeros((0, 3)), gt, {"t": 1})
    assert math.isnan(empty["chamfer"]) and empty["fscore@t"] == 0.0


def test_helpers():
    corners = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], dtype=float)
    assert M.scene_diagonal(corners) == pytest.approx(math.sqrt(3))
    np.testing.assert_array_equal(M.top_fraction_mask(np.array([1, 4, 2, 3.0])), [False, True, False, True])
    np.testing.assert_array_equal(
        M.top_fraction_mask(np.array([1, 4, 2, 3.0]), 0.5, within=np.array([1, 0, 1, 1], bool)),
        [False, False, True, True],  # ⌈50 % of 3⌉ = 2 kept
    )
    a = M.subsample(np.arange(100)[:, None], 10, seed=3)
    assert len(a) == 10 and np.all(np.diff(a[:, 0]) > 0)
    np.testing.assert_array_equal(a, M.subsample(np.arange(100)[:, None], 10, seed=3))


def test_lite3r_reference_metrics_hand_computed():
    gt = look_at_extrinsics(np.array([[0, 0, -4.0], [2.0, 0.5, -3.0]]))
    pred = gt.copy()
    C1 = camera_centers(gt)[1]
    pred[1, :, :3] = rot("z", 10.0) @ gt[1, :, :3]
    pred[1, :, 3] = -pred[1, :, :3] @ C1
    ref = M.lite3r_reference_pose_metrics(pred, gt)
    assert ref["rot_err_deg"] == pytest.approx(5.0)  # mean over both views incl. the trivial view 0
    scaled = gt.copy()
    scaled[:, :, 3] *= 3.0
    assert M.lite3r_reference_pose_metrics(scaled, gt)["trans_err"] == pytest.approx(0, abs=1e-9)
    a, b = np.array([[0.0, 0, 0]]), np.array([[1.0, 0, 0], [3.0, 0, 0]])
    assert M.lite3r_reference_chamfer_l2(a, b) == pytest.approx(0.5 * (1 + (1 + 9) / 2))  # squared
    assert M.lite3r_reference_fscore(a, b, tau=1.5) == pytest.approx(2 / 3)
    g = np.array([[[1.0, 2.0], [3.0, 4.0]]] * 50)
    d = M.lite3r_reference_depth_metrics(g * 2, g)
    assert d["abs_rel"] == pytest.approx(0) and d["delta1"] == 1.0
    assert math.isnan(M.lite3r_reference_depth_metrics(g[:1] * 2, g[:1])["abs_rel"])  # < 100 pixels


# --------------------------------------------------------------------------------------- end to end


def make_gt(rng, S=4, H=12, W=16):
    E = look_at_extrinsics(rng.normal(size=(S, 3)) * 0.8 + np.array([0, 0, -5.0]))
    K = np.broadcast_to(
        np.array([[20.0, 0, (W - 1) / 2], [0, 20.0, (H - 1) / 2], [0, 0, 1]]), (S, 3, 3)
    ).copy()
    depth = rng.uniform(3.0, 6.0, size=(S, H, W))
    depth[:, 0, :3] = 0.0  # some invalid GT pixels
    return GroundTruth(E, K, depth)


def test_evaluate_sample_sim3_transformed_prediction_scores_perfectly(rng):
    gt = make_gt(rng)
    sim = random_sim3(rng, scale=0.37)
    conf = rng.uniform(1, 5, size=gt.depth.shape)
    pred = Prediction(
        depth=gt.depth * sim.scale,
        depth_conf=conf,
        extrinsics=sim.apply_to_extrinsics(gt.extrinsics),
        intrinsics=gt.intrinsics.copy(),
    )
    np.testing.assert_allclose(  # consistency: unprojected predicted points = sim(GT points)
        unproject_depth(pred.depth, pred.extrinsics, pred.intrinsics),
        sim.apply(unproject_depth(gt.depth, gt.extrinsics, gt.intrinsics)),
        atol=1e-9,
    )
    res = evaluate_sample(pred, gt, MetricConfig(fscore_absolute=(0.05,)))
    for p in ("lsq_scene", "median_view"):
        assert res["depth"][p]["abs_rel"] == pytest.approx(0, abs=1e-12)
        assert res["depth"][p]["delta1"] == 1.0
    assert res["pose"]["auc@3"] == pytest.approx(100.0)
    assert res["ate"]["ate_rmse"] == pytest.approx(0, abs=1e-9)
    pts = res["points"]["depth"]
    assert pts["alignment"]["scale"] == pytest.approx(1 / 0.37)
    assert pts["all"]["chamfer"] == pytest.approx(0, abs=1e-9)
    assert pts["all"]["fscore@0.5%diag"] == 1.0 and pts["all"]["fscore@0.05abs"] == 1.0
    assert pts["conf50"]["acc"] == pytest.approx(0, abs=1e-9) and pts["conf50"]["precision@0.5%diag"] == 1.0
    assert pts["conf50"]["n_pred"] == pytest.approx(pts["all"]["n_pred"] / 2, abs=2)
    assert pts["conf50"]["recall@1%diag"] < 1.0  # half the pixels dropped → less complete
    ref = res["lite3r_reference"]
    assert ref["pose"]["rot_err_deg"] == pytest.approx(0, abs=1e-6)
    assert ref["chamfer_l2"] > 1.0  # no alignment: the reference metric sees the scale mismatch
    flat = flatten(res)
    assert flat["points.depth.all.chamfer"] == pytest.approx(0, abs=1e-9)
    assert "depth.lsq_scene.abs_rel" in flat and "lite3r_reference.fscore_5cm" in flat


def test_pixel_points_match_dense_unprojection(rng):
    from lite3r.eval.evaluate import pixel_points

    gt = make_gt(rng)
    dense = unproject_depth(gt.depth, gt.extrinsics, gt.intrinsics)
    pix = (np.array([0, 3, 2]), np.array([5, 11, 0]), np.array([15, 2, 7]))
    np.testing.assert_allclose(
        pixel_points(gt.depth, gt.intrinsics, gt.extrinsics, pix), dense[pix], atol=1e-12
    )


def test_evaluate_sample_pose_only_and_shape_errors(rng):
    gt = make_gt(rng)
    pose_only = GroundTruth(gt.extrinsics, gt.intrinsics)
    pred = Prediction(gt.depth, None, gt.extrinsics, gt.intrinsics)
    res = evaluate_sample(pred, pose_only)
    assert "depth" not in res and res["pose"]["auc@30"] == pytest.approx(100)
    assert res["ate"]["ate_normalizer"] == "gt_camera_diagonal" and res["ate"]["ate_rmse_rel"] < 1e-9
    assert set(res["lite3r_reference"]) == {"pose"}
    bad = Prediction(gt.depth[:, :-1], None, gt.extrinsics, gt.intrinsics)
    with pytest.raises(ValueError, match="GT resolution"):
        evaluate_sample(bad, gt)
