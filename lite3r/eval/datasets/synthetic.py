"""SynthMV test/validation split as an evaluation dataset (data.md §4).

Scenes are regenerated from their seeds at evaluation time (test: seeds from 2·10⁷, validation: from
10⁷, never rendered during training) by ``lite3r.training.data.synthetic.render_scene(seed,
num_views, image_size, device, tier=…)``; each sample records the scene's SHA-256 (``scene_hash``) so
generator drift between two evaluations shows. The renderer's intrinsics use integer pixel coordinates
at pixel centres, the convention the GT mapping here assumes. A scene's views are exactly what the renderer returns for the
requested view count, so samples use the ``all`` strategy with S fixed when the dataset is opened.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from lite3r.errors import InputError, UnsupportedError
from lite3r.eval.datasets.base import NORMALIZATIONS, EvalDataset, Sample

SPLIT_SEED_BASE = {"test": 20_000_000, "val": 10_000_000}
SPLIT_SIZE = {"test": 512, "val": 128}


def _synthetic_module():
    try:
        from lite3r.training.data import synthetic
    except ImportError as exc:
        raise UnsupportedError(
            f"the SynthMV renderer is not available ({exc})",
            "lite3r.training.data.synthetic.render_scene is needed for the synthetic split",
        ) from exc
    return synthetic


def _get(out, *names):
    for n in names:
        v = out.get(n) if isinstance(out, dict) else getattr(out, n, None)
        if v is not None:
            return v
    return None


def _numpy(x) -> np.ndarray | None:
    if x is None:
        return None
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":
            x = x.float()
        x = x.numpy()
    return np.asarray(x)


def _images_uint8(img: np.ndarray) -> list[np.ndarray]:
    a = np.asarray(img)
    if a.ndim == 5:  # [1, S, ...]
        a = a[0]
    if a.shape[1] == 3 and a.shape[-1] != 3:  # [S, 3, H, W] → [S, H, W, 3]
        a = np.moveaxis(a, 1, -1)
    if a.dtype != np.uint8:
        a = np.clip(np.round(a.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    return [np.ascontiguousarray(v) for v in a]


class SynthMV(EvalDataset):
    name = "synthmv"
    default_strategy = "all"

    def __init__(
        self,
        root=None,
        split: str = "test",
        num_views: int = 8,
        image_size: int = 224,
        num_scenes: int | None = None,
        device: str = "cpu",
        normalization: str = "vggt",
        tier: str | None = None,
        renderer: Callable | None = None,
    ) -> None:
        # no folder: scenes are generated from seeds (``root`` is accepted for a uniform CLI and ignored)
        if normalization not in NORMALIZATIONS:
            raise InputError(f"unknown normalisation {normalization!r}", f"choose one of {NORMALIZATIONS}")
        if split not in SPLIT_SEED_BASE:
            raise InputError(f"unknown SynthMV split {split!r}", "use 'test' or 'val'")
        self.root = root
        self.normalization = normalization
        self.split, self.num_views, self.image_size, self.device = (
            split,
            int(num_views),
            int(image_size),
            device,
        )
        n = SPLIT_SIZE[split] if num_scenes is None else int(num_scenes)
        if not 0 < n <= SPLIT_SIZE[split]:
            raise InputError(f"SynthMV {split} has {SPLIT_SIZE[split]} scenes; {n} requested")
        self._seeds = [SPLIT_SEED_BASE[split] + i for i in range(n)]
        self.tier = tier
        self._hash = None
        if renderer is None:
            mod = _synthetic_module()
            if tier is not None and tier not in mod.TIERS:
                raise InputError(f"unknown SynthMV tier {tier!r}", f"choose one of {', '.join(mod.TIERS)}")
            renderer = functools.partial(mod.render_scene, tier=tier) if tier else mod.render_scene
            self._hash = mod.scene_hash
        self._render = renderer

    def describe(self) -> dict:
        return {
            "dataset": self.name,
            "split": self.split,
            "num_views": self.num_views,
            "image_size": self.image_size,
            "num_scenes": len(self._seeds),
            "normalization": self.normalization,
        }

    def scenes(self) -> list[str]:
        return [f"seed{s}" for s in self._seeds]

    def views(self, scene: str) -> list[int]:
        return list(range(self.num_views))

    def load_raw(self, scene: str, view_ids: list[int]) -> Sample:
        if list(view_ids) != list(range(len(view_ids))):
            raise ValueError("SynthMV samples take all rendered views in order (strategy 'all')")
        seed = int(scene.removeprefix("seed"))
        out = self._render(seed, len(view_ids), self.image_size, self.device)
        images = _images_uint8(_numpy(_get(out, "images", "image", "rgb")))
        E = _numpy(_get(out, "extrinsics", "w2c"))
        K = _numpy(_get(out, "intrinsics", "K"))
        depth = _numpy(_get(out, "depth", "depths"))
        valid = _numpy(_get(out, "valid", "valid_mask", "mask"))
        if images is None or E is None or K is None or depth is None:
            raise UnsupportedError("render_scene output lacks images/extrinsics/intrinsics/depth")
        E = np.asarray(E, np.float64).reshape(len(images), *E.shape[-2:])[:, :3, :]
        K = np.asarray(K, np.float64).reshape(len(images), 3, 3)
        depth = np.asarray(depth, np.float32).reshape(len(images), *images[0].shape[:2])
        valid = None if valid is None else np.asarray(valid, bool).reshape(depth.shape)
        meta = {"seed": seed}
        h = self._hash(out) if self._hash is not None else _get(out, "hash", "scene_hash")
        if h is not None:
            meta["scene_hash"] = str(h)
        extra = _get(out, "metadata") or {}
        for key in ("family", "tier"):
            v = extra.get(key) if isinstance(extra, dict) else None
            v = v if v is not None else _get(out, key)
            if v is not None:
                meta[key] = str(v)
        return Sample(
            self.name,
            scene,
            list(view_ids),
            images,
            E,
            K,
            list(depth),
            None if valid is None else list(valid),
            [],
            meta,
        )
