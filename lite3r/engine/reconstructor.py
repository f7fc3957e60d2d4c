"""Photos → :class:`Reconstruction`: preprocessing, one trunk pass, chunked heads, progressive results.

Memory-lean by construction: ``model.encode`` keeps only the layer outputs its heads read; the heads
run on frame chunks; everything runs under ``torch.inference_mode``; the precision and attention paths
are set once at construction (:mod:`lite3r.engine.policy`) and named in the result. Optional memory
options (off by default): ``feature_storage="fp8"`` keeps the head-feeding trunk outputs in FP8 and
dequantises them per head chunk (:meth:`Reconstructor.frame_features`, :meth:`~Reconstructor.
camera_features`); ``mlp_chunk_tokens=N`` runs the trunk MLPs N tokens at a time.

Progress: ``progress(stage, fraction, message)`` with ``fraction`` the *overall* fraction done (0 → 1,
monotone) and ``stage`` one of :data:`STAGES`. Cancel: a ``threading.Event`` checked between stages and
between head chunks (→ :class:`CancelledError`). Partial results: ``on_partial(reconstruction)`` is
called once the cameras exist and after every depth chunk. A partial result shares its arrays with the
final one; views not yet decoded hold NaN (``metadata["views_done"]`` says how many are ready), and
rows already handed out are never changed again. With poses from attention matches
(:mod:`lite3r.engine.poses`) the partial results carry the camera head's poses; the final result
holds the read-out's poses and points unprojected with them, in new arrays (partials keep theirs).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lite3r.engine.policy import (
    apply_attention,
    apply_memory_options,
    apply_precision,
    compile_trunk,
    memory_options_on,
    preflight,
    resolve_device,
    resolve_qk_kernel,
    tf32_state,
)
from lite3r.engine.poses import MatchCapture, resolve_pose_source, solve_poses
from lite3r.engine.reconstruction import Reconstruction
from lite3r.errors import CancelledError, InputError, Lite3RError, UnsupportedError
from lite3r.io.images import resolve_sources
from lite3r.io.preprocess import Preprocessed, PreprocessRule, get_rule, preprocess

log = logging.getLogger(__name__)

STAGES = ("preprocess", "trunk", "cameras", "depth", "points", "postprocess")
# Overall-progress span of each stage (rough shares of the run time at a few dozen views).
_SPAN = {
    "preprocess": (0.0, 0.10),
    "trunk": (0.10, 0.55),
    "cameras": (0.55, 0.60),
    "depth": (0.60, 0.85),
    "points": (0.85, 0.97),
    "postprocess": (0.97, 1.0),
}
DEFAULT_RULES = {"vggt": "vggt_crop", "da3": "da3_upper_bound_resize"}
_PROTOCOL = ("family", "input_normalization", "encode", "decode_cameras", "decode_depth", "decode_points",
             "head_modules", "trunk_modules")  # fmt: skip

ProgressFn = Callable[[str, float, str], None]
Sources = str | os.PathLike | Sequence[Any] | Preprocessed


class Reconstructor:
    """One model, set up once for a device, precision and attention path; call :meth:`reconstruct`."""

    def __init__(
        self,
        model: nn.Module,
        precision: str = "bf16",
        device: str | torch.device = "cuda",
        attention: str = "dense",
        sla: Any = None,
        compile: str = "none",
        frames_chunk_size: int = 8,
        *,
        model_name: str | None = None,
        preprocess_rule: str | PreprocessRule | None = None,
        input_size: int | None = None,
        sdpa_backend: str | None = None,
        adapter: str | os.PathLike | None = None,
        fp8_fast_accum: bool | None = None,
        feature_storage: str = "native",
        mlp_chunk_tokens: int | None = None,
        head_precision: str = "fp32",
        qk_kernel: str | None = None,
        poses: str = "auto",
    ) -> None:
        missing = [a for a in _PROTOCOL if not hasattr(model, a)]
        if missing:
            raise TypeError(f"{type(model).__name__} does not follow the model protocol (missing {missing})")
        if frames_chunk_size < 1:
            raise ValueError(f"frames_chunk_size must be ≥ 1, got {frames_chunk_size}")
        self.device = resolve_device(device)
        self.model = model.eval().requires_grad_(False)
        self.family = model.family
        self.model_name = model_name or getattr(model, "name", None) or model.family
        self.frames_chunk_size = int(frames_chunk_size)
        # Structure first (attention conversion), then dtypes, so the precision sees the final modules.
        self.qk_kernel = resolve_qk_kernel(qk_kernel, self.device)  # how the trunk does qk-norm + RoPE
        self.attention = apply_attention(
            model,
            attention,
            sla,
            precision,
            self.device,
            sdpa_backend,
            adapter=adapter,
            qk_kernel=self.qk_kernel,
            memory_lean=memory_options_on(feature_storage, mlp_chunk_tokens),
        )
        self.attention_mode = attention
        self.precision_setup = apply_precision(
            model, precision, self.device, fp8_fast_accum, head_precision=head_precision
        )
        self.precision = self.precision_setup.description
        # Memory options after the dtypes (FP8 modules in place), before compile (blocks guard on them).
        self.memory = apply_memory_options(model, feature_storage, mlp_chunk_tokens, self.device)
        self.compile_mode = compile
        self.compile = compile_trunk(model, compile)
        # where the cameras come from (lite3r.engine.poses): the head, or the weights' match read-out
        self.poses = resolve_pose_source(model, poses, compile)
        rule = preprocess_rule or DEFAULT_RULES.get(self.family)
        if rule is None:
            raise UnsupportedError(
                f"no preprocessing rule for model family {self.family!r}", "pass preprocess_rule"
            )
        self.rule = get_rule(rule, input_size)
        self.weights: str | None = None  # the checkpoint file, when built by from_name
        self.weights_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())

    # ---- construction from the registry ------------------------------------------------------------

    @classmethod
    def from_name(cls, name: str, weights: str | os.PathLike | None = None, *, strict: bool = True, **kwargs):
        """Build from the model registry (``vggt-1b``, ``da3-large``, ``lite3r-tiny``). Weights come from
        ``weights`` or the registry's default location; missing weights raise WeightsNotFoundError."""
        from lite3r.models import registry

        spec = registry.get_spec(name)
        preflight(
            kwargs.get("precision", "bf16"),
            kwargs.get("device", "cuda"),
            kwargs.get("attention", "dense"),
            feature_storage=kwargs.get("feature_storage", "native"),
        )
        model = registry.load_model(name, weights=weights, strict=strict, device="cpu")
        kwargs.setdefault("preprocess_rule", spec.preprocessing)
        kwargs.setdefault("input_size", spec.default_input_size)
        rc = cls(model, model_name=name, **kwargs)
        report = getattr(model, "load_report", None)
        rc.weights = str(getattr(report, "source", None) or weights or spec.default_weights_path)
        return rc

    # ---- the run -----------------------------------------------------------------------------------

    def encode(self, images: torch.Tensor):
        """The trunk on device images [B,S,3,H,W] (model input range), in the trunk's dtype."""
        if self.compile_mode == "reduce-overhead":
            from lite3r.quant.compile import mark_step

            mark_step()  # a new CUDA-graph step: the previous run's graph outputs may be overwritten
        return self.model.encode(_trunk_input(images, self.precision_setup.trunk_dtype))

    def camera_features(self, features):
        """What ``decode_cameras`` reads. FP8-stored VGGT features: only the special tokens
        (``patch_start_idx`` per frame, the camera token among them) are dequantised; models whose
        camera decoder reads separate tokens (DA3, kept in the trunk dtype) get the features as
        they are."""
        from lite3r.quant.fp8_features import dequantize_tokens, has_quantized

        if self.memory.feature_storage != "fp8" or not has_quantized(features):
            return features
        special = getattr(features, "patch_start_idx", None)
        if special is None:
            return features
        return dequantize_tokens(features, 0, int(special), self.precision_setup.trunk_dtype)

    def frame_features(self, features, a: int, b: int, S: int):
        """Features of frames a..b−1 for the per-frame heads: a view (:func:`select_frames`), or, with
        FP8 storage, those frames dequantised to the trunk dtype (all frames never are at once)."""
        if self.memory.feature_storage == "fp8":
            from lite3r.quant.fp8_features import dequantize_frames

            return dequantize_frames(features, a, b, self.precision_setup.trunk_dtype)
        return select_frames(self.model, features, a, b, S)

    def reconstruct(
        self,
        images_or_paths: Sources,
        progress: ProgressFn | None = None,
        cancel: threading.Event | None = None,
        on_partial: Callable[[Reconstruction], None] | None = None,
    ) -> Reconstruction:
        """Reconstruct one scene from a folder, a list of files, PIL images / uint8 arrays, or an already
        :class:`Preprocessed` set. Returns a complete :class:`Reconstruction` (numpy only)."""
        run = _Run(self, progress, cancel, on_partial)
        return run.execute(images_or_paths)

    @property
    def has_point_head(self) -> bool:
        """Whether ``world_points`` will be filled (VGGT with a point head; DA3 and the authors'
        Lite3R checkpoints have none)."""
        return self.family == "vggt" and getattr(self.model, "point_head", None) is not None

    def describe(self) -> str:
        poses = "" if self.poses.kind == "camera-head" else f" · poses: {self.poses.describe()}"
        return f"{self.model_name} · {self.precision} · {self.attention}{poses} · {self.device}"


class _Run:
    """State of one reconstruct() call (timings, partial-result arrays)."""

    def __init__(self, rc: Reconstructor, progress, cancel, on_partial) -> None:
        self.rc = rc
        self.progress_fn = progress
        self.cancel = cancel
        self.on_partial = on_partial
        self.timings: dict[str, float] = {}
        self.cuda = rc.device.type == "cuda"

    # -- helpers
    def report(self, stage: str, within: float, message: str) -> None:
        if self.progress_fn is None:
            return
        lo, hi = _SPAN[stage]
        self.progress_fn(stage, lo + (hi - lo) * min(max(within, 0.0), 1.0), message)

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise CancelledError("reconstruction cancelled", None)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.rc.device)

    def clock(self, key: str, start: float) -> float:
        self.sync()
        now = time.perf_counter()
        self.timings[key] = self.timings.get(key, 0.0) + 1000.0 * (now - start)
        return now

    # -- stages
    def load(self, sources: Sources) -> Preprocessed:
        if isinstance(sources, Preprocessed):
            if sources.rule.family != self.rc.rule.family:
                raise InputError(
                    f"images were preprocessed with {sources.rule.name}, but {self.rc.model_name} needs {self.rc.rule.name}",
                    "pass the photos themselves",
                )
            # decoded earlier (e.g. by the CLI, before loading the model): count that time here too
            self.timings["preprocess"] = float(sources.metadata.get("elapsed_ms", 0.0))
            return sources
        items = _as_items(sources)
        self.report("preprocess", 0.0, f"loading {len(items)} photos")
        return preprocess(
            items,
            self.rc.rule,
            progress=lambda i, n: self.report("preprocess", i / n, f"photo {i}/{n}"),
        )

    def execute(self, sources: Sources) -> Reconstruction:
        t = time.perf_counter()
        pre = self.load(sources)
        t = self.clock("preprocess", t)
        self.check_cancel()
        S = pre.num_views
        oom = False
        try:
            with torch.inference_mode(), tf32_state(self.rc.precision_setup.tf32 if self.cuda else None):
                rec = self.infer(pre, t)
        except torch.OutOfMemoryError:
            oom = True
        if oom:
            if self.cuda:
                torch.cuda.empty_cache()
            H, W = pre.image_size
            raise Lite3RError(
                f"out of GPU memory reconstructing {S} views at {H}×{W} with {self.rc.precision}",
                "use fewer views, --precision bf16 (or fp8 on Hopper), or a smaller frames chunk",
            )
        return rec

    def infer(self, pre: Preprocessed, t: float) -> Reconstruction:
        rc, model, dev = self.rc, self.rc.model, self.rc.device
        S, (H, W) = pre.num_views, pre.image_size
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(dev)
        images = pre.tensor(model.input_normalization, device=dev)  # [1, S, 3, H, W] float32
        t = self.clock("preprocess", t)

        self.report("trunk", 0.0, f"trunk on {S} views at {H}×{W}")
        with MatchCapture(model, rc.poses, S) as matches:
            features = rc.encode(images)
        t = self.clock("trunk", t)
        self.report("trunk", 1.0, "trunk done")
        self.check_cancel()

        self.report("cameras", 0.0, "cameras")
        cams = model.decode_cameras(rc.camera_features(features), (H, W))
        ext_t, intr_t = cams[0][0].float(), cams[1][0].float()  # [S, 3, 4], [S, 3, 3]
        world_frame = "camera 0 (as predicted)"
        if rc.family == "da3":
            ext_t = _relative_to_first(ext_t)
            world_frame = "camera 0 (re-expressed from the model's reference view)"
        t = self.clock("heads", t)
        extrinsics = ext_t.cpu().numpy().astype(np.float32)
        intrinsics = intr_t.cpu().numpy().astype(np.float32)
        t = self.clock("postprocess", t)

        masks = pre.content_masks()
        rec = Reconstruction(
            images=pre.colors,
            depth=np.full((S, H, W), np.nan, np.float32),
            depth_conf=np.full((S, H, W), np.nan, np.float32),
            extrinsics=extrinsics,
            intrinsics=intrinsics,
            points_from_depth=np.full((S, H, W, 3), np.nan, np.float32),
            intrinsics_original=np.stack(
                [tr.intrinsics_to_original(k) for tr, k in zip(pre.transforms, intrinsics)]
            ).astype(np.float32),
            image_paths=list(pre.paths),
            original_sizes=list(pre.original_sizes),
            model_name=rc.model_name,
            precision=rc.precision,
            attention=rc.attention,
            device=_device_name(dev),
            metadata=self.metadata(pre, world_frame),
        )
        self.report("cameras", 1.0, "cameras ready")
        self.partial(rec, 0)
        self.check_cancel()

        chunk = rc.frames_chunk_size
        for a in range(0, S, chunk):
            b = min(S, a + chunk)
            self.report("depth", a / S, f"depth {a + 1}–{b} of {S}")
            feats = rc.frame_features(features, a, b, S)
            depth, conf = model.decode_depth(feats, images[:, a:b], frames_chunk_size=chunk)
            t = self.clock("heads", t)
            pts = _unproject(depth[0], ext_t[a:b], intr_t[a:b])
            rec.depth[a:b] = depth[0].float().cpu().numpy()
            rec.depth_conf[a:b] = conf[0].float().cpu().numpy()
            p = pts.cpu().numpy()
            p[~masks[a:b]] = np.nan  # padding is not part of any photo
            rec.points_from_depth[a:b] = p
            t = self.clock("postprocess", t)
            self.partial(rec, b)  # with the camera head's poses until a read-out replaces them
            self.check_cancel()

        if rc.poses.kind == "matches":
            self.report("depth", 1.0, "camera poses from attention matches")
            patch = model.config.aggregator.patch_size
            rec.extrinsics, rec.metadata["poses"] = solve_poses(
                matches, rec.depth, masks, rec.intrinsics, rec.extrinsics, patch
            )
            ext_t = torch.from_numpy(rec.extrinsics)
            pts = _unproject(torch.from_numpy(rec.depth), ext_t, intr_t.cpu()).numpy()
            pts[~masks] = np.nan
            rec.points_from_depth = pts.astype(np.float32)
            t = self.clock("postprocess", t)

        wp = wc = None
        for a in range(0, S, chunk):
            b = min(S, a + chunk)
            self.report("points", a / S, f"point map {a + 1}–{b} of {S}")
            out = model.decode_points(
                rc.frame_features(features, a, b, S), images[:, a:b], frames_chunk_size=chunk
            )
            t = self.clock("heads", t)
            if out is None:
                break
            if wp is None:
                wp = np.full((S, H, W, 3), np.nan, np.float32)
                wc = np.full((S, H, W), np.nan, np.float32)
            p = out[0][0].float().cpu().numpy()
            p[~masks[a:b]] = np.nan
            wp[a:b], wc[a:b] = p, out[1][0].float().cpu().numpy()
            t = self.clock("postprocess", t)
            self.check_cancel()
        rec.world_points, rec.world_points_conf = wp, wc
        del features

        self.report("postprocess", 0.5, "finishing")
        rec.peak_memory_bytes = int(torch.cuda.max_memory_allocated(dev)) if self.cuda else None
        rec.metadata["views_done"] = S
        rec.metadata.pop("partial", None)
        self.clock("postprocess", t)
        rec.timings_ms = {k: round(v, 3) for k, v in self.timings.items()}
        rec.timings_ms["total"] = round(sum(self.timings.values()), 3)
        self.report("postprocess", 1.0, "done")
        return rec

    def partial(self, rec: Reconstruction, views_done: int) -> None:
        if self.on_partial is None:
            return
        meta = dict(rec.metadata, views_done=views_done, partial=True)
        self.on_partial(dataclasses.replace(rec, metadata=meta, timings_ms=dict(self.timings)))

    def metadata(self, pre: Preprocessed, world_frame: str) -> dict:
        rc = self.rc
        return {
            "family": rc.family,
            "precision_name": rc.precision_setup.precision,
            "precision_report": _to_dict(rc.precision_setup.report),
            "attention_mode": rc.attention_mode,
            "compile": rc.compile,
            "memory": rc.memory.to_dict(),
            "frames_chunk_size": rc.frames_chunk_size,
            "tf32": bool(rc.precision_setup.tf32) if self.cuda else None,
            "weights": rc.weights,
            "weights_bytes": int(rc.weights_bytes),
            "preprocess": pre.metadata,
            "view_transforms": [t.as_dict() for t in pre.transforms],
            "world_frame": world_frame,
            "poses": {"source": rc.poses.kind, "note": rc.poses.note}
            if rc.poses.kind == "camera-head"
            else {"source": "matches (solving after depth)"},
            "pixel_convention": "intrinsics_original: origin at the top-left image corner (COLMAP); "
            "points are unprojected on the integer pixel grid of the model image (VGGT reference)",
            "torch": torch.__version__,
            "views_done": 0,
        }


# ---- helpers --------------------------------------------------------------------------------------


def _as_items(sources: Sources) -> list:
    if isinstance(sources, (str, os.PathLike)):
        return list(resolve_sources(sources))
    items = list(sources)
    if not items:
        raise InputError("no photos given", "pass a folder of photos or at least one image file")
    if all(isinstance(s, (str, os.PathLike)) for s in items):
        return list(resolve_sources(items))
    return items


def _trunk_input(images: torch.Tensor, trunk_dtype: torch.dtype) -> torch.Tensor:
    """The trunk's input dtype. The models normalise in the input's dtype and their patch embedding
    needs its weights' dtype, so the images are cast here (once, [0,1] or ImageNet-normalised)."""
    return images if images.dtype == trunk_dtype else images.to(trunk_dtype)


def _relative_to_first(ext: torch.Tensor) -> torch.Tensor:
    """World→camera [S,3,4] re-expressed so camera 0 is the identity: E_i ← E_i · E_0⁻¹.

    In float64: a 3×3 product on the GPU may run in TF32 (1e-3 relative), which would leave camera 0
    visibly off the identity."""
    e = ext.double()
    R0, t0 = e[0, :, :3], e[0, :, 3]
    R = e[:, :, :3] @ R0.T
    t = e[:, :, 3] - (R @ t0[:, None])[..., 0]
    return torch.cat([R, t[..., None]], dim=-1).to(ext.dtype)


def _unproject(depth: torch.Tensor, ext: torch.Tensor, intr: torch.Tensor) -> torch.Tensor:
    from lite3r.geometry import unproject_depth

    return unproject_depth(depth.float(), ext.float(), intr.float()).float()


def select_frames(model: nn.Module, features: Any, a: int, b: int, S: int) -> Any:
    """Features of frames a..b−1 for the per-frame heads. Uses ``model.select_frames`` when the model
    defines it; otherwise slices every tensor whose dim 1 is the frame axis (size S) inside dataclasses,
    dicts, lists and tuples, leaving everything else as it is."""
    if a == 0 and b == S:
        return features
    if hasattr(model, "select_frames"):
        return model.select_frames(features, a, b)
    return _slice_tree(features, a, b, S)


def _slice_tree(obj: Any, a: int, b: int, S: int) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj[:, a:b] if obj.ndim >= 2 and obj.shape[1] == S else obj
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(
            obj,
            **{f.name: _slice_tree(getattr(obj, f.name), a, b, S) for f in dataclasses.fields(obj) if f.init},
        )
    if isinstance(obj, dict):
        return {k: _slice_tree(v, a, b, S) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) and not (
        isinstance(obj, tuple) and all(isinstance(v, int) for v in obj)
    ):
        out = [_slice_tree(v, a, b, S) for v in obj]
        return type(obj)(*out) if hasattr(obj, "_fields") else type(obj)(out)
    return obj


def _to_dict(report: Any) -> dict | None:
    if report is None:
        return None
    to_dict = getattr(report, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    return dataclasses.asdict(report) if dataclasses.is_dataclass(report) else {"value": str(report)}


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return f"{dev} ({torch.cuda.get_device_name(dev)})"
    return "cpu"


def reconstruct(
    images_or_paths: Sources | Iterable[str],
    model: str | nn.Module = "vggt-1b",
    weights: str | Path | None = None,
    **kwargs,
) -> Reconstruction:
    """One-call convenience: build a :class:`Reconstructor` and run it once."""
    run_kw = {k: kwargs.pop(k) for k in ("progress", "cancel", "on_partial") if k in kwargs}
    rc = (
        Reconstructor.from_name(model, weights, **kwargs)
        if isinstance(model, str)
        else Reconstructor(model, **kwargs)
    )
    return rc.reconstruct(images_or_paths, **run_kw)
