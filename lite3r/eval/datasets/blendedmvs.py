"""BlendedMVS low-resolution set (768×576; data.md §1.5).

Layout: ``ROOT/PID/blended_images/{id:08d}.jpg`` (``*_masked.jpg`` skipped), ``ROOT/PID/cams/
{id:08d}_cam.txt`` (K for 768×576, depth line ``DEPTH_MIN DEPTH_INTERVAL DEPTH_NUM DEPTH_MAX``),
``ROOT/PID/cams/pair.txt``, ``ROOT/PID/rendered_depth_maps/{id:08d}.pfm`` (0 = no surface).

Splits: ``val`` (default) = the official 7-PID validation list, held out of every Lite3R training run;
``train`` = ``training_list.txt`` in the root if present, else every scene except the 7; ``all``;
or a path to a list file (one PID per line). GT masks: ``valid`` (finite and > 0) or
``lite3r_reference`` (the reference loader's mask — ≥ 0.5·DEPTH_MIN, ≤ 1.5·DEPTH_MAX, ≤ 5 × the
view's median valid depth — with DEPTH_MAX read correctly from the fourth number).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from lite3r.errors import InputError
from lite3r.eval.datasets.base import EvalDataset, Sample, load_rgb, require_file, resize_depth_nearest
from lite3r.eval.datasets.mvsnet import read_cam_file, read_pair_file, read_pfm

BLENDEDMVS_VALIDATION_PIDS = (
    "5b7a3890fc8fcf6781e2593a",
    "5c189f2326173c3a09ed7ef3",
    "5b950c71608de421b1e7318f",
    "5a6400933d809f1d8200af15",
    "59d2657f82ca7774b1ec081d",
    "5ba19a8a360c7c30c1c169df",
    "59817e4a1bd4b175e7038d19",
)
GT_MASKS = ("valid", "lite3r_reference")
_IMAGE_RE = re.compile(r"^(\d{8})\.jpg$")


class BlendedMVS(EvalDataset):
    name = "blendedmvs"
    default_strategy = "random"

    def __init__(
        self,
        root,
        split: str = "val",
        gt_mask: str = "valid",
        normalization: str = "vggt",
        scenes: list[str] | None = None,
    ) -> None:
        super().__init__(root, normalization)
        if gt_mask not in GT_MASKS:
            raise InputError(f"unknown BlendedMVS GT mask {gt_mask!r}", f"choose one of {GT_MASKS}")
        self.split, self.gt_mask = split, gt_mask
        present = sorted(p.name for p in self.root.iterdir() if (p / "blended_images").is_dir())
        if not present:
            raise InputError(f"no BlendedMVS scenes under {self.root}", self.layout_hint())
        self._scenes = self._select(present, split, scenes)
        self._views: dict[str, list[int]] = {}

    @classmethod
    def layout_hint(cls) -> str:
        return (
            "expected ROOT/<PID>/blended_images/00000000.jpg, ROOT/<PID>/cams/00000000_cam.txt and "
            "ROOT/<PID>/rendered_depth_maps/00000000.pfm (the BlendedMVS low-res release, unzipped)"
        )

    def _select(self, present: list[str], split: str, scenes: list[str] | None) -> list[str]:
        if scenes is not None:
            wanted = list(scenes)
        elif split == "val":
            wanted = list(BLENDEDMVS_VALIDATION_PIDS)
        elif split == "all":
            return present
        elif split == "train":
            lst = self.root / "training_list.txt"
            if lst.is_file():
                wanted = lst.read_text().split()
            else:
                return [p for p in present if p not in BLENDEDMVS_VALIDATION_PIDS]
        else:
            lst = Path(split)
            if not lst.is_file():
                raise InputError(
                    f"unknown BlendedMVS split {split!r}", "use val, train, all or the path of a list file"
                )
            wanted = lst.read_text().split()
        missing = [s for s in wanted if s not in present]
        if missing:
            raise InputError(
                f"BlendedMVS root {self.root} lacks {len(missing)} scene(s) of split {split!r}: "
                + ", ".join(missing[:8])
                + (" …" if len(missing) > 8 else ""),
                "download the full set, or pass the scenes you have explicitly",
            )
        return sorted(wanted)

    def describe(self) -> dict:
        return {**super().describe(), "split": self.split, "gt_mask": self.gt_mask, "scenes": self._scenes}

    def scenes(self) -> list[str]:
        return list(self._scenes)

    def views(self, scene: str) -> list[int]:
        if scene not in self._views:
            folder = self.root / scene / "blended_images"
            ids = sorted(int(m.group(1)) for p in folder.iterdir() if (m := _IMAGE_RE.match(p.name)))
            self._views[scene] = ids
        return list(self._views[scene])

    def pairs(self, scene: str):
        return read_pair_file(
            require_file(self.root / scene / "cams" / "pair.txt", "pair file", self.layout_hint())
        )

    def load_raw(self, scene: str, view_ids: list[int]) -> Sample:
        base = self.root / scene
        images, E, K, depths, valids, paths, ranges = [], [], [], [], [], [], []
        for vid in view_ids:
            img_path = require_file(base / "blended_images" / f"{vid:08d}.jpg", "image", self.layout_hint())
            cam_path = require_file(base / "cams" / f"{vid:08d}_cam.txt", "camera file", self.layout_hint())
            dep_path = require_file(
                base / "rendered_depth_maps" / f"{vid:08d}.pfm", "depth map", self.layout_hint()
            )
            img = load_rgb(img_path)
            cam = read_cam_file(cam_path)
            depth = read_pfm(dep_path)
            if depth.ndim != 2:
                raise InputError(
                    f"depth map {dep_path} has {depth.shape[2]} channels", "expected a 1-channel Pf"
                )
            if depth.shape != img.shape[:2]:
                depth = resize_depth_nearest(depth, img.shape[:2])
            depth = np.where(np.isfinite(depth) & (depth > 0), depth, 0.0).astype(np.float32)
            images.append(img)
            E.append(cam.extrinsic_3x4)
            K.append(cam.intrinsic)
            depths.append(depth)
            valids.append(self._mask(depth, cam))
            paths.append(str(img_path))
            ranges.append([cam.depth_min, cam.depth_max])
        return Sample(
            self.name,
            scene,
            list(view_ids),
            images,
            np.stack(E),
            np.stack(K),
            depths,
            valids,
            paths,
            {"depth_ranges": ranges, "gt_mask": self.gt_mask},
        )

    def _mask(self, depth: np.ndarray, cam) -> np.ndarray:
        m = depth > 0
        if self.gt_mask == "lite3r_reference":
            dmin, dmax = cam.depth_min, cam.depth_max
            if dmax is not None and dmax > 0 and np.isfinite(dmax):
                m &= (depth >= 0.5 * dmin) & (depth <= 1.5 * dmax)
            if m.any():
                med = float(np.median(depth[m]))
                if med > 0:
                    m &= depth <= 5.0 * med
        return m
