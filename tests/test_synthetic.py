"""SynthMV procedural generator: determinism, exact geometry, covisibility, conventions, splits, speed."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
import torch

from lite3r.training.data.synth_scenes import FAMILIES, OBJECT_KINDS, TEXTURE_KINDS, sample_scene
from lite3r.training.data.synthetic import (
    SPLITS,
    SynthConfig,
    SyntheticMultiView,
    cast_rays,
    render_batch,
    render_scene,
    split_of_seed,
    split_seeds,
    train_step_seeds,
)

FIELDS = ("images", "depth", "valid", "intrinsics", "extrinsics", "world_points", "covisibility")


@pytest.fixture(scope="module")
def scenes():
    """One small hard-tier scene per family (shared by the geometry tests)."""
    return {fam: render_scene(11, 4, 56, family=fam, tier="hard") for fam in FAMILIES}


def _centre(sample, i):
    R, t = sample.extrinsics[i, :, :3].double(), sample.extrinsics[i, :, 3].double()
    return -R.T @ t


def test_outputs_shapes_and_ranges(scenes):
    for fam, s in scenes.items():
        S, H, W = 4, 56, 56
        assert s.images.shape == (S, 3, H, W) and s.images.dtype == torch.float32
        assert s.depth.shape == (S, H, W) and s.valid.shape == (S, H, W) and s.valid.dtype == torch.bool
        assert s.intrinsics.shape == (S, 3, 3) and s.extrinsics.shape == (S, 3, 4)
        assert s.world_points.shape == (S, H, W, 3) and s.covisibility.shape == (S,)
        assert float(s.images.min()) >= 0.0 and float(s.images.max()) <= 1.0
        assert torch.equal(s.valid, s.depth > 0)
        assert not s.world_points[~s.valid].any()
        assert float(s.valid[0].float().mean()) >= SynthConfig().min_valid_view0
        assert s.metadata["family"] == fam and s.metadata["tier"] == "hard"
        assert float(s.images.std()) > 0.03  # not blank


def test_determinism_and_seed_sensitivity():
    a = render_scene(20_000_001, 3, 48)
    b = render_scene(20_000_001, 3, 48)
    c = render_scene(20_000_002, 3, 48)
    for name in FIELDS:
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.metadata == b.metadata
    assert not torch.equal(a.images, c.images)


def test_batch_and_mode_invariance():
    """A scene renders to the same bits alone, inside a mixed batch, and in single vs dense mode."""
    seeds = [3, 4, 5, 6]  # a mix of families
    dense = render_batch(seeds, 2, 32, config=SynthConfig(mode="dense"))
    single = render_batch(seeds, 2, 32, config=SynthConfig(mode="single"))
    assert len({m["family"] for m in dense.metadata}) >= 2
    for name in FIELDS:
        assert torch.equal(getattr(dense, name), getattr(single, name)), name
    alone = render_scene(seeds[2], 2, 32)
    for name in FIELDS:
        assert torch.equal(getattr(alone, name), getattr(dense, name)[2]), name


def test_camera_conventions(scenes):
    """A GT world point projects with K and w2c (OpenCV) onto its own pixel, at its own depth."""
    for s in scenes.values():
        S, H, W = s.depth.shape
        K = s.intrinsics.double()
        assert torch.all(K[:, 0, 2] == W / 2.0) and torch.all(K[:, 1, 2] == H / 2.0)
        assert torch.allclose(K[:, 0, 0], K[:, 1, 1])
        R = s.extrinsics[:, :, :3].double()
        assert torch.allclose(
            R @ R.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(S, 3, 3), atol=1e-5
        )
        assert torch.allclose(torch.linalg.det(R), torch.ones(S, dtype=torch.float64), atol=1e-5)
        v, u = torch.meshgrid(
            torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij"
        )
        for i in range(S):
            X = s.world_points[i].double()
            cam = torch.einsum("ij,hwj->hwi", R[i], X) + s.extrinsics[i, :, 3].double()
            pix = torch.einsum("ij,hwj->hwi", K[i], cam)
            m = s.valid[i]
            z = cam[..., 2][m]
            assert torch.allclose(z, s.depth[i][m].double(), rtol=1e-5, atol=1e-5)
            assert (pix[..., 0][m] / z - u[m]).abs().max() < 2e-3
            assert (pix[..., 1][m] / z - v[m]).abs().max() < 2e-3


def test_depth_is_exact_under_reintersection(scenes):
    """Recasting rays at GT points (from the same camera and from the other cameras) hits those points."""
    for fam, s in scenes.items():
        X = s.world_points[0][s.valid[0]]
        C0 = _centre(s, 0).float()
        t = cast_rays(s.metadata, C0.expand_as(X), X - C0)
        exact = (t - 1).abs() < 1e-4
        # analytic primitives: every point; the marched height field may lose a grazing crossing (<1 %)
        assert float(exact.float().mean()) >= (1.0 if fam != "flythrough" else 0.99), fam
        for j in range(1, s.depth.shape[0]):
            Cj = _centre(s, j).float()
            t = cast_rays(s.metadata, Cj.expand_as(X), X - Cj)
            # from another camera the point is either hit exactly or occluded (t < 1), never passed through
            passed = t > 1 + 1e-3
            assert float(passed.float().mean()) < (0.002 if fam != "flythrough" else 0.01), (fam, j)
            assert float(((t - 1).abs() < 1e-3).float().mean()) > 0.2


def _covis_numpy(s, i, j, rel_tol=0.03):
    d_i, d_j = s.depth[i].numpy().astype(np.float64), s.depth[j].numpy().astype(np.float64)
    H, W = d_i.shape
    X = s.world_points[i].numpy().astype(np.float64)[d_i > 0]
    R, t = s.extrinsics[j, :, :3].numpy().astype(np.float64), s.extrinsics[j, :, 3].numpy().astype(np.float64)
    cam = X @ R.T + t
    p = cam @ s.intrinsics[j].numpy().astype(np.float64).T
    z = cam[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u, v = np.round(p[:, 0] / z), np.round(p[:, 1] / z)
    ok = (z > 1e-6) & (u >= 0) & (u <= W - 1) & (v >= 0) & (v <= H - 1)
    zj = np.zeros_like(z)
    zj[ok] = d_j[v[ok].astype(int), u[ok].astype(int)]
    vis = ok & (zj > 0) & (np.abs(zj - z) <= rel_tol * z)
    return vis.sum() / (H * W)


def test_covisibility_with_view_zero(scenes):
    extra = render_batch([21, 22], 5, 40, tier="hard", family="room")
    samples = [*scenes.values(), extra.scene(0), extra.scene(1)]
    for s in samples:
        thr = SynthConfig().min_covisibility
        assert float(s.covisibility[0]) == 1.0
        assert float(s.covisibility[1:].min()) >= thr
        for j in range(1, s.depth.shape[0]):  # independent numpy re-check, both directions
            assert min(_covis_numpy(s, j, 0), _covis_numpy(s, 0, j)) >= thr - 1e-3


def test_split_ranges_are_disjoint():
    ranges = sorted(SPLITS.values())
    assert ranges[0] == (0, 10_000_000) and all(a[1] <= b[0] for a, b in itertools.pairwise(ranges))
    val, test = split_seeds("val"), split_seeds("test")
    assert len(val) == 128 and len(test) == 512 and not set(val) & set(test)
    assert all(split_of_seed(x) == "val" for x in val) and all(split_of_seed(x) == "test" for x in test)
    for step in range(50):
        seeds, S = train_step_seeds(7, step, 4, (2, 8))
        assert all(0 <= x < SPLITS["train"][1] for x in seeds) and 2 <= S <= 8
    assert train_step_seeds(7, 3, 4, (2, 8)) == train_step_seeds(7, 3, 4, (2, 8))
    with pytest.raises(ValueError):
        split_of_seed(-1)


def test_dataset_workers_get_separate_streams(monkeypatch):
    class Info:
        def __init__(self, wid):
            self.id, self.num_workers = wid, 2

    cfg = SynthConfig(supersample=1, shadows=False)
    seen = {}
    for wid in (0, 1):
        monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda w=wid: Info(w))
        train = SyntheticMultiView("train", num_views=(2, 3), image_size=28, config=cfg, seed=5, count=2)
        seen[wid] = [x.metadata["seed"] for x in train]
        assert all(split_of_seed(x) == "train" for x in seen[wid])
        test = SyntheticMultiView("test", num_views=2, image_size=28, config=cfg, count=4)
        got = [x.metadata["seed"] for x in test]
        assert got == split_seeds("test", 4)[wid::2]
    assert seen[0] != seen[1]


def test_ood_primitives_and_textures_are_held_out():
    ood_obj, ood_tex = OBJECT_KINDS.index("cone"), TEXTURE_KINDS.index("marble")
    found_ood = False
    for seed in range(40):
        for tier in ("easy", "medium", "hard"):
            spec, _ = sample_scene(seed, FAMILIES[seed % 3], tier)
            assert ood_obj not in spec.obj_kind and ood_tex not in spec.mat_kind
        spec, _ = sample_scene(seed, FAMILIES[seed % 3], "ood")
        found_ood |= ood_obj in spec.obj_kind or ood_tex in spec.mat_kind
    assert found_ood


def test_bad_arguments_raise():
    with pytest.raises(ValueError):
        SynthConfig(families=("forest",))
    with pytest.raises(ValueError):
        render_scene(1, 2, 28, tier="impossible")
    with pytest.raises(ValueError):
        SyntheticMultiView("holdout")


def test_speed_benchmark_cpu(capsys):
    """Printed measurement, not a timing assertion: one room scene, 8 views at 224 px, 1 CPU thread.
    benchmarks/bench_synthetic.py measures every family on CPU and GPU."""
    render_scene(1, 2, 28)  # warm-up
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the CI machine is shared: one thread gives a stable CPU-time figure
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        s = render_scene(20_000_000, 8, 224, family="room")
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        torch.set_num_threads(threads)
    assert s.images.shape == (8, 3, 224, 224)
    assert wall < 120  # sanity bound only
    with capsys.disabled():
        print(f"\nSynthMV CPU room 8x224 (1 thread): wall {wall:.2f} s, cpu {cpu:.2f} s")
