"""Where a reconstruction's camera poses come from: the model's camera head, or its attention matches.

VGGT-1B's camera head is what its authors ship and evaluate, so it stays the default. lite3r-tiny's
camera head never learned pose (AUC@30 ≈ 8 at 8 views), but its global attention was trained to match
patches across views, and a PnP read-out of those matches with the model's own depth and intrinsics is
several times more accurate (``benchmarks/results/tiny/``). Weights declare that read-out in their
``config.json`` (``pose_readout``, loaded as ``model.pose_readout``); ``poses="auto"`` follows it.

The read-out captures q, k of the chosen global blocks while the trunk runs (module hooks,
:class:`~lite3r.models.vggt.attention_capture.GlobalQKCapture`), turns them into match
log-probabilities right away (the captured tensors are freed), and solves every view's pose once the
depth maps exist. Views it cannot solve keep the camera head's pose, and the run's metadata says which.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from lite3r.errors import UnsupportedError

if TYPE_CHECKING:
    from lite3r.models.vggt.match_pose import MatchPoseConfig

log = logging.getLogger(__name__)

POSE_SOURCES = ("auto", "camera-head", "matches")


@dataclass(frozen=True)
class PoseSource:
    """The resolved choice: ``kind`` "camera-head" or "matches" (then ``readout`` is the
    MatchPoseConfig), and ``note``, why "auto" chose what it did (empty for an explicit choice). With
    ``kind`` "camera-head" a note means the weights' read-out was declared but could not run."""

    kind: str
    readout: MatchPoseConfig | None = None
    note: str = ""

    def describe(self) -> str:
        if self.kind == "camera-head":
            return "camera head"
        r = self.readout
        blocks = ", ".join("last" if i == -1 else str(i) for i in r.layers)
        heads = (
            "all heads"
            if r.heads is None
            else "head" + ("s " if len(r.heads) > 1 else " ") + ", ".join(str(h) for h in r.heads)
        )
        ba = " + bundle adjustment" if r.bundle_adjust else ""
        return f"attention matches (global block {blocks}, {heads}) · {r.solver}{ba}"


def resolve_pose_source(model: torch.nn.Module, poses: str, compile_mode: str) -> PoseSource:
    """Decide once, at build time. An explicit "matches" that cannot run raises; "auto" takes the
    weights' declared read-out when it can run and says so (log + ``note``) when it cannot."""
    if poses not in POSE_SOURCES:
        raise UnsupportedError(f"unknown pose source {poses!r}", f"choose one of {', '.join(POSE_SOURCES)}")
    if poses == "camera-head":
        return PoseSource("camera-head")
    readout = getattr(model, "pose_readout", None)
    why_not = None
    if getattr(model, "family", None) != "vggt":
        why_not = f"the {getattr(model, 'family', '?')} family has no global attention read-out"
    elif readout is None:
        why_not = "these weights declare no pose_readout (their attention was not trained to match views)"
    elif compile_mode != "none":
        why_not = (
            f"the read-out captures q, k through hooks on the global attention modules, which are not "
            f"supported with a compiled trunk (compile={compile_mode})"
        )
    if why_not is None:
        note = "the weights' declared read-out" if poses == "auto" else ""
        return PoseSource("matches", readout, note)
    if poses == "matches":
        raise UnsupportedError(
            f"poses from attention matches cannot run: {why_not}",
            "use poses='camera-head' (CLI: --poses camera-head)"
            + (", or compile 'none'" if compile_mode != "none" else ""),
        )
    if readout is not None:  # declared but not runnable: loud, not silent
        log.warning("poses from the camera head, not the weights' match read-out: %s", why_not)
        return PoseSource("camera-head", note=f"match read-out not used: {why_not}")
    return PoseSource("camera-head")


class MatchCapture:
    """Context around the trunk call: captures the read-out's q, k and leaves the match
    log-probabilities ([B, S, hw, hw] each, on the trunk's device) in ``to_ref`` / ``from_ref``."""

    def __init__(self, model: torch.nn.Module, source: PoseSource, num_views: int) -> None:
        self.model, self.source, self.num_views = model, source, num_views
        self.to_ref = self.from_ref = None
        self._stack = contextlib.ExitStack()
        self._cap = None

    def __enter__(self) -> MatchCapture:
        if self.source.kind == "matches" and self.num_views > 1:
            from lite3r.models.vggt.attention_capture import GlobalQKCapture

            self._cap = self._stack.enter_context(
                GlobalQKCapture(self.model, self.source.readout.layers, grad_only=False)
            )
        return self

    def __exit__(self, exc_type, *exc) -> None:
        try:
            if exc_type is None and self._cap is not None:
                from lite3r.models.vggt.match_pose import scores_from_captured

                captured = self._cap.pop()
                self.to_ref, self.from_ref = scores_from_captured(
                    captured,
                    self._cap.layers,
                    self.num_views,
                    self.model.aggregator.patch_start_idx,
                    self.source.readout,
                )
        finally:
            self._stack.close()


def solve_poses(
    capture: MatchCapture,
    depth: np.ndarray,
    valid: np.ndarray,
    intrinsics: np.ndarray,
    head_extrinsics: np.ndarray,
    patch_size: int,
) -> tuple[np.ndarray, dict]:
    """Extrinsics [S, 3, 4] from the captured matches, the predicted depth [S, H, W] (``valid``: the
    photo's pixels, not padding) and intrinsics; unsolved views keep ``head_extrinsics``. Returns the
    extrinsics and a metadata record of what was solved."""
    from lite3r.models.vggt.match_pose import poses_from_scores

    S = depth.shape[0]
    cfg = capture.source.readout
    if capture.to_ref is None:  # one view: nothing to solve
        return head_extrinsics, {
            "source": "matches",
            "readout": cfg.to_dict(),
            "solver": cfg.solver,
            "solved_views": [],
            "kept_head": [],
            "matches": [0],
            "inliers": [0],
        }
    d = np.where(valid & np.isfinite(depth) & (depth > 0), depth, np.nan)
    res = poses_from_scores(
        capture.to_ref[0], capture.from_ref[0], d, intrinsics, cfg, patch_size, fallback=head_extrinsics
    )
    kept = [int(i) for i in range(1, S) if not res.solved[i]]
    if kept:
        log.warning(
            "match read-out could not solve view(s) %s (matches %s): they keep the camera head's pose",
            kept,
            [int(res.num_matches[i]) for i in kept],
        )
    meta = {
        "source": "matches",
        "readout": cfg.to_dict(),
        "solver": cfg.solver,
        "solved_views": [int(i) for i in range(1, S) if res.solved[i]],
        "kept_head": kept,
        "matches": [int(n) for n in res.num_matches],
        "inliers": [int(n) for n in res.num_inliers],
    }
    return res.extrinsics.astype(np.float32), meta
