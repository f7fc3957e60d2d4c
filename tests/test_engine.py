"""Reconstructor on CPU with the reduced VGGT parity checkpoint and real photos."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from conftest import PHOTOS_DIR
from engine_fixtures import small_vggt

from lite3r.engine.reconstructor import Reconstructor, select_frames
from lite3r.errors import CancelledError, Lite3RError, UnsupportedError
from lite3r.geometry import unproject_depth
from lite3r.io.preprocess import preprocess

PAIR = [PHOTOS_DIR / "motorcycle_left.jpg", PHOTOS_DIR / "motorcycle_right.jpg"]
SIZE = 126  # small model input for speed: 126 × 84 for the 741 × 500 pair


@pytest.fixture(scope="module")
def fp32_result():
    events, partials = [], []
    rc = Reconstructor(small_vggt(), precision="fp32", device="cpu", frames_chunk_size=1, input_size=SIZE)
    rec = rc.reconstruct(
        PAIR,
        progress=lambda s, f, m: events.append((s, f, m)),
        on_partial=lambda r: partials.append(
            (r.metadata["views_done"], np.isfinite(r.depth).all(axis=(1, 2)))
        ),
    )
    return rc, rec, events, partials


def test_result_contents(fp32_result):
    _rc, rec, _, _ = fp32_result
    assert rec.num_views == 2 and rec.image_size == (84, 126)
    assert rec.images.dtype == np.uint8 and rec.images.shape == (2, 84, 126, 3)
    for a in (rec.depth, rec.depth_conf, rec.points_from_depth, rec.world_points, rec.world_points_conf):
        assert np.isfinite(a).all()
    assert (rec.depth > 0).all() and (rec.depth_conf >= 1).all()
    assert rec.extrinsics.shape == (2, 3, 4) and rec.intrinsics.shape == (2, 3, 3)
    assert rec.original_sizes == [(500, 741), (500, 741)]
    assert rec.image_paths == [str(p) for p in PAIR]
    # principal point at the model image centre ↔ the original photo's centre
    np.testing.assert_allclose(rec.intrinsics[:, :2, 2], [[63, 42]] * 2)
    np.testing.assert_allclose(rec.intrinsics_original[:, :2, 2], [[370.5, 250.0]] * 2, rtol=1e-6)
    np.testing.assert_allclose(
        rec.intrinsics_original[0, 0, 0], rec.intrinsics[0, 0, 0] * 741 / 126, rtol=1e-5
    )
    # points from depth = the geometry module's unprojection with the predicted cameras
    np.testing.assert_allclose(
        rec.points_from_depth,
        unproject_depth(rec.depth, rec.extrinsics, rec.intrinsics),
        rtol=1e-5,
        atol=1e-5,
    )
    assert rec.precision == "fp32" and rec.attention.startswith("dense · ") and "CPU" in rec.attention
    assert rec.device == "cpu" and rec.peak_memory_bytes is None
    assert set(rec.timings_ms) == {"preprocess", "trunk", "heads", "postprocess", "total"}
    assert rec.metadata["preprocess"]["rule"] == "vggt_crop" and rec.metadata["views_done"] == 2
    assert "partial" not in rec.metadata
    xyz, rgb, _conf = rec.point_cloud(conf_percentile=50)
    assert 0 < len(xyz) <= 2 * 84 * 126 and rgb.dtype == np.uint8


def test_matches_model_forward(fp32_result):
    """Chunked heads and the lean trunk give exactly the reference forward's numbers."""
    rc, rec, _, _ = fp32_result
    x = preprocess(PAIR, "vggt_crop", size=SIZE).tensor()
    with torch.inference_mode():
        ref = rc.model(x)
    np.testing.assert_allclose(rec.depth, ref["depth"][0, ..., 0].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rec.world_points, ref["world_points"][0].numpy(), rtol=1e-5, atol=1e-5)
    from lite3r.geometry import pose_encoding_to_extri_intri

    ext, _intr = pose_encoding_to_extri_intri(ref["pose_enc"], (84, 126))
    np.testing.assert_allclose(rec.extrinsics, ext[0].numpy(), atol=1e-5)


def test_progress_and_partials(fp32_result):
    _, _, events, partials = fp32_result
    fractions = [f for _, f, _ in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert next(s for s, _, _ in events) == "preprocess"
    assert {"trunk", "cameras", "depth", "points", "postprocess"} <= {s for s, _, _ in events}
    assert [p[0] for p in partials] == [0, 1, 2]  # cameras first, then each one-frame depth chunk
    assert list(partials[0][1]) == [False, False] and list(partials[1][1]) == [True, False]


def test_bf16_close_to_fp32(fp32_result):
    _, ref, _, _ = fp32_result
    rc = Reconstructor(small_vggt(), precision="bf16", device="cpu", input_size=SIZE)
    rec = rc.reconstruct(PAIR)
    assert rec.precision == "bf16 trunk · fp32 heads" and rec.metadata["precision_name"] == "bf16"
    assert next(rc.model.aggregator.parameters()).dtype == torch.bfloat16
    assert next(rc.model.depth_head.parameters()).dtype == torch.float32
    rel = np.abs(rec.depth - ref.depth).mean() / np.abs(ref.depth).mean()
    assert rel < 0.05


def test_single_view_runs_monocular():
    rc = Reconstructor(small_vggt(), precision="fp32", device="cpu", input_size=SIZE)
    rec = rc.reconstruct([PAIR[0]])
    assert rec.num_views == 1 and np.isfinite(rec.points_from_depth).all() and rc.has_point_head


def test_cancel_between_chunks():
    cancel = threading.Event()
    rc = Reconstructor(small_vggt(), precision="fp32", device="cpu", frames_chunk_size=1, input_size=SIZE)
    seen = []

    def on_partial(r):
        seen.append(r.metadata["views_done"])
        if r.metadata["views_done"] == 1:
            cancel.set()

    with pytest.raises(CancelledError):
        rc.reconstruct(PAIR, cancel=cancel, on_partial=on_partial)
    assert seen == [0, 1]
    cancel.set()
    with pytest.raises(CancelledError):  # set before the run: stops right after preprocessing
        rc.reconstruct(PAIR, cancel=cancel)


def test_unsupported_paths_raise():
    with pytest.raises(UnsupportedError, match="fp8"):
        Reconstructor(small_vggt(), precision="fp8", device="cpu")
    with pytest.raises(UnsupportedError, match="CUDA"):
        if torch.cuda.is_available():
            pytest.skip("has a GPU")
        Reconstructor(small_vggt(), precision="bf16", device="cuda")
    try:
        import lite3r.convert  # noqa: F401
    except ImportError:
        with pytest.raises(UnsupportedError, match="sparse-linear"):
            Reconstructor(small_vggt(), precision="fp32", device="cpu", attention="sla")
    with pytest.raises(UnsupportedError, match="attention"):
        Reconstructor(small_vggt(), precision="fp32", device="cpu", attention="flash")


def test_out_of_memory_becomes_user_error(monkeypatch):
    rc = Reconstructor(small_vggt(), precision="fp32", device="cpu", input_size=SIZE)

    def boom(images):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80 GiB")

    monkeypatch.setattr(rc.model, "encode", boom)
    with pytest.raises(Lite3RError, match="out of GPU memory reconstructing 2 views") as e:
        rc.reconstruct(PAIR)
    assert "fewer views" in e.value.hint


def test_pad_rule_masks_padding():
    rc = Reconstructor(
        small_vggt(), precision="fp32", device="cpu", preprocess_rule="vggt_pad", input_size=SIZE
    )
    rec = rc.reconstruct(PAIR)
    assert rec.image_size == (126, 126)
    top, _, bottom, _ = rec.metadata["view_transforms"][0]["content_box"]
    assert top > 0 and bottom < 126
    assert np.isnan(rec.points_from_depth[:, :top]).all() and np.isnan(rec.world_points[:, bottom:]).all()
    assert np.isfinite(rec.points_from_depth[:, top:bottom]).all()
    assert len(rec.point_cloud()[0]) == 2 * (bottom - top) * 126


# ---- a DA3-like stand-in: ImageNet input, no point head, a world frame that is not camera 0 ----------


@dataclass
class _Feats:
    tokens: torch.Tensor  # [B, S, N, C]
    image_hw: tuple[int, int]


class _FakeDA3(torch.nn.Module):
    family = "da3"
    input_normalization = "imagenet"

    def __init__(self):
        super().__init__()
        self.backbone = torch.nn.Linear(3, 4)
        self.head = torch.nn.Linear(4, 1)
        self.seen_inputs = []

    def encode(self, images):
        self.seen_inputs.append(images.detach().clone())
        B, S = images.shape[:2]
        return _Feats(
            images.mean(dim=(3, 4), keepdim=False)[:, :, None, :].expand(B, S, 5, 3), tuple(images.shape[-2:])
        )

    def decode_cameras(self, feats, image_hw):
        S = feats.tokens.shape[1]
        ang = torch.linspace(0.3, 0.9, S)
        R = torch.stack(
            [torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) for c, s in zip(ang.cos(), ang.sin())]
        )
        t = torch.stack([torch.tensor([1.0 + i, 2.0, 3.0]) for i in range(S)])
        ext = torch.cat([R, t[..., None]], -1)[None]
        H, W = image_hw
        K = torch.tensor([[100.0, 0, W / 2], [0, 100.0, H / 2], [0, 0, 1]]).expand(1, S, 3, 3)
        return ext, K

    def decode_depth(self, feats, images, frames_chunk_size=8):
        B, S, _, H, W = images.shape
        assert feats.tokens.shape[1] == S  # the engine sliced the features to this chunk
        depth = torch.ones(B, S, H, W) * (1 + feats.tokens[:, :, 0, :1, None])
        return depth, torch.full((B, S, H, W), 2.0)

    def decode_points(self, feats, images, frames_chunk_size=8):
        return None

    def head_modules(self):
        return ["head"]

    def trunk_modules(self):
        return ["backbone"]


def test_da3_family_conventions():
    pytest.importorskip("cv2")
    model = _FakeDA3()
    rc = Reconstructor(model, precision="fp32", device="cpu", frames_chunk_size=1, input_size=126)
    rec = rc.reconstruct(PAIR)
    x = model.seen_inputs[0]
    assert x.min() < -1.0 and x.max() > 1.0  # ImageNet-normalised, not [0, 1]
    assert rec.metadata["preprocess"]["rule"] == "da3_upper_bound_resize"
    np.testing.assert_allclose(rec.extrinsics[0], np.eye(3, 4), atol=1e-6)  # world re-expressed = camera 0
    assert rec.world_points is None and rec.world_points_conf is None
    # relative poses are kept: camera 1 relative to camera 0 is unchanged by the re-expression
    ext, _ = model.decode_cameras(_Feats(torch.zeros(1, 2, 5, 3), (84, 126)), (84, 126))
    E = torch.cat([ext[0], torch.tensor([[[0, 0, 0, 1.0]]]).expand(2, 1, 4)], 1).double()
    rel = (E[1] @ torch.linalg.inv(E[0]))[:3].numpy()
    np.testing.assert_allclose(rec.extrinsics[1], rel, atol=1e-5)
    with pytest.raises(ValueError, match="no point head"):
        rec.point_cloud("points")


def test_select_frames_generic_slicing():
    feats = {"layers": {4: torch.zeros(1, 5, 7, 2), 11: torch.zeros(1, 5, 7, 2)}, "idx": 5, "hw": (28, 42)}
    out = select_frames(torch.nn.Module(), feats, 1, 3, 5)
    assert out["layers"][4].shape == (1, 2, 7, 2) and out["idx"] == 5 and out["hw"] == (28, 42)
    assert select_frames(torch.nn.Module(), feats, 0, 5, 5) is feats


def test_protocol_is_checked():
    with pytest.raises(TypeError, match="model protocol"):
        Reconstructor(torch.nn.Linear(2, 2), device="cpu")
