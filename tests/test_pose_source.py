"""Where a reconstruction's poses come from (lite3r.engine.poses): the camera head or the weights'
attention-match read-out, chosen at build time, recorded in the result, never silently swapped."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lite3r.engine.poses import resolve_pose_source
from lite3r.engine.reconstructor import Reconstructor
from lite3r.errors import CheckpointError, UnsupportedError
from lite3r.geometry import unproject_depth
from lite3r.models.vggt.match_pose import MatchPoseConfig
from lite3r.models.vggt.model import VGGT
from lite3r.training.tiny import build_tiny

READOUT = MatchPoseConfig(layers=(-1,), heads=(0,), solver="pnp", min_inliers=4)


def _micro(readout=READOUT) -> VGGT:
    m = build_tiny("micro", seed=3)
    m.pose_readout = readout
    return m


def _views(n: int = 3, size: int = 56) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (size, size + 8, 3), dtype=np.uint8)
    return [np.ascontiguousarray(base[:, i * 4 : i * 4 + size]) for i in range(n)]  # shifted crops


def test_auto_follows_the_weights_declaration():
    assert resolve_pose_source(_micro(None), "auto", "none").kind == "camera-head"
    src = resolve_pose_source(_micro(), "auto", "none")
    assert src.kind == "matches" and src.readout == READOUT and "declared" in src.note
    assert resolve_pose_source(_micro(), "camera-head", "none").kind == "camera-head"


def test_matches_that_cannot_run_are_refused_or_reported(caplog):
    with pytest.raises(UnsupportedError, match="declare no pose_readout"):
        resolve_pose_source(_micro(None), "matches", "none")
    with pytest.raises(UnsupportedError, match="compiled trunk"):
        resolve_pose_source(_micro(), "matches", "default")
    with caplog.at_level("WARNING"):
        src = resolve_pose_source(_micro(), "auto", "default")  # declared, not runnable: loud
    assert src.kind == "camera-head" and src.note.startswith("match read-out not used")
    assert "camera head, not the weights' match read-out" in caplog.text
    with pytest.raises(UnsupportedError, match="unknown pose source"):
        resolve_pose_source(_micro(), "colmap", "none")


def test_reconstruction_with_the_match_readout_is_consistent():
    views = _views()
    head = Reconstructor(_micro(), precision="fp32", device="cpu", poses="camera-head").reconstruct(views)
    rc = Reconstructor(_micro(), precision="fp32", device="cpu")
    assert "poses: attention matches (global block last, head 0) · pnp" in rc.describe()
    events, partials = [], []
    rec = rc.reconstruct(
        views, progress=lambda *e: events.append(e), on_partial=lambda r: partials.append(r.extrinsics.copy())
    )
    fractions = [f for _, f, _ in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0  # still monotone with the read-out
    np.testing.assert_array_equal(partials[-1], head.extrinsics)  # partials: the camera head's poses
    meta = rec.metadata["poses"]
    assert meta["source"] == "matches" and meta["solver"] == "pnp"
    assert sorted(meta["solved_views"] + meta["kept_head"]) == [1, 2]
    np.testing.assert_allclose(rec.extrinsics[0], np.eye(4)[:3], atol=1e-6)
    for i in meta["kept_head"]:  # unsolved views keep the camera head's pose, and are listed
        np.testing.assert_allclose(rec.extrinsics[i], head.extrinsics[i], atol=1e-5)
    # same trunk and heads: depth and intrinsics do not depend on the pose source
    np.testing.assert_allclose(rec.depth, head.depth, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rec.intrinsics, head.intrinsics, rtol=1e-5)
    # the points are unprojected with the final (read-out) poses
    pts = unproject_depth(
        torch.from_numpy(rec.depth), torch.from_numpy(rec.extrinsics), torch.from_numpy(rec.intrinsics)
    ).numpy()
    np.testing.assert_allclose(rec.points_from_depth, pts, rtol=1e-4, atol=1e-5)
    line, _ = rec.pose_summary()
    assert line.startswith("attention matches (pnp,")
    assert head.pose_summary() == ("camera head", None)


def test_one_view_needs_no_readout():
    rec = Reconstructor(_micro(), precision="fp32", device="cpu").reconstruct(_views(1))
    assert rec.metadata["poses"]["solved_views"] == [] and rec.metadata["poses"]["kept_head"] == []


def test_pose_readout_round_trips_through_config_json(tmp_path):
    m = _micro()
    m.save_pretrained(tmp_path / "w")
    back = VGGT.from_pretrained(tmp_path / "w")
    assert back.pose_readout == READOUT
    m.pose_readout = None
    m.save_pretrained(tmp_path / "plain")
    assert VGGT.from_pretrained(tmp_path / "plain").pose_readout is None
    cfg = (tmp_path / "w" / "config.json").read_text().replace('"solver": "pnp"', '"solver": "pnp", "x": 1')
    (tmp_path / "w" / "config.json").write_text(cfg)
    with pytest.raises(CheckpointError, match="invalid pose_readout"):
        VGGT.from_pretrained(tmp_path / "w")
