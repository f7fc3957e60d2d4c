"""DTU in the MVSNet layouts, and the DTU64 pose benchmark (data.md §1.4).

* :class:`DTUTrain` — MVSNet training set ("dtu_training"): ``Cameras/pair.txt``,
  ``Cameras/train/{vid:08d}_cam.txt`` (K for the 160×128 depth maps), ``Rectified/scanN_train/
  rect_{vid+1:03d}_{light}_r5000.png`` (640×512, **1-based** file numbers), ``Depths/scanN_train/
  depth_map_{vid:04d}.pfm`` (160×128). Depth is brought to the image resolution by nearest
  neighbour and K is scaled with it. Split ``test`` (default) = the 22 MVSNet test scans.
* :class:`DTUTest` — MVSNet test set: ``scanN/images/{id:08d}.jpg``, ``scanN/cams/{id:08d}_cam.txt``
  (full-resolution K), ``scanN/pair.txt``. No depth ground truth here: pose-only.
* :class:`DTU64` — DA3's pose benchmark: shared ``Cameras/{id:08d}_cam.txt`` and ``scanN/image/*.png``
  (view id = int(file stem): DA3's ``{id}.png`` and the Lite3R reference's ``{id:06d}.png`` both work),
  the 13 scans below, view 33 first as the reference. Pose-only.

Cameras are in millimetres; samples are normalised per sample like every dataset.
"""

from __future__ import annotations

import re

import numpy as np

from lite3r.errors import InputError
from lite3r.eval.datasets.base import (
    EvalDataset,
    Sample,
    load_rgb,
    require_file,
    resize_depth_nearest,
    scale_intrinsics,
)
from lite3r.eval.datasets.mvsnet import read_cam_file, read_pair_file, read_pfm

DTU_TEST_SCANS = (1, 4, 9, 10, 11, 12, 13, 15, 23, 24, 29, 32, 33, 34, 48, 49, 62, 75, 77, 110, 114, 118)
DTU64_SCANS = (24, 37, 40, 55, 63, 65, 69, 83, 97, 105, 114, 118, 122)
DTU_REFERENCE_VIEW = 33
_SCAN_RE = re.compile(r"^scan(\d+)(?:_train)?$")


def _scan_number(name: str) -> int:
    m = _SCAN_RE.match(name)
    if not m:
        raise ValueError(name)
    return int(m.group(1))


def _select_scans(present: dict[int, str], split, default: tuple[int, ...], root, dataset: str) -> list[str]:
    if split == "all":
        wanted = sorted(present)
    elif split in ("test", "dtu64"):
        wanted = list(default)
    else:
        try:
            wanted = [int(str(s).removeprefix("scan")) for s in split]
        except (TypeError, ValueError):
            raise InputError(
                f"unknown {dataset} split {split!r}", "use 'test', 'all' or a list of scan numbers"
            ) from None
    missing = [n for n in wanted if n not in present]
    if missing:
        raise InputError(
            f"{dataset} root {root} lacks scan(s) {', '.join(map(str, missing))}",
            "download the missing scans or pass the scans you have explicitly",
        )
    return [present[n] for n in sorted(wanted)]


class DTUTrain(EvalDataset):
    name = "dtu_train"
    default_strategy = "reference"

    def __init__(self, root, split="test", light: int = 3, normalization: str = "vggt") -> None:
        super().__init__(root, normalization)
        self.light, self.split = int(light), split
        rect = self.root / "Rectified"
        if not rect.is_dir() or not (self.root / "Cameras" / "train").is_dir():
            raise InputError(f"{self.root} is not an MVSNet DTU training root", self.layout_hint())
        present = {}
        for p in rect.iterdir():
            if p.is_dir() and p.name.endswith("_train"):
                try:
                    present[_scan_number(p.name)] = p.name.removesuffix("_train")
                except ValueError:
                    continue
        if not present:
            raise InputError(f"no Rectified/scanN_train folders under {self.root}", self.layout_hint())
        self._scenes = _select_scans(present, split, DTU_TEST_SCANS, self.root, self.name)
        self._pairs = None

    @classmethod
    def layout_hint(cls) -> str:
        return (
            "expected ROOT/Cameras/pair.txt, ROOT/Cameras/train/00000000_cam.txt, "
            "ROOT/Rectified/scanN_train/rect_001_3_r5000.png and ROOT/Depths/scanN_train/depth_map_0000.pfm"
        )

    def describe(self) -> dict:
        return {**super().describe(), "split": self.split, "light": self.light, "scenes": self._scenes}

    def scenes(self) -> list[str]:
        return list(self._scenes)

    def pairs(self, scene: str):
        if self._pairs is None:
            self._pairs = read_pair_file(
                require_file(self.root / "Cameras" / "pair.txt", "pair file", self.layout_hint())
            )
        return self._pairs

    def views(self, scene: str) -> list[int]:
        return sorted(self.pairs(scene))

    def reference_view(self, scene: str) -> int | None:
        return DTU_REFERENCE_VIEW

    def load_raw(self, scene: str, view_ids: list[int]) -> Sample:
        images, E, K, depths, paths = [], [], [], [], []
        for vid in view_ids:
            img_path = require_file(
                self.root / "Rectified" / f"{scene}_train" / f"rect_{vid + 1:03d}_{self.light}_r5000.png",
                "image",
                self.layout_hint(),
            )
            cam = read_cam_file(
                require_file(
                    self.root / "Cameras" / "train" / f"{vid:08d}_cam.txt", "camera file", self.layout_hint()
                )
            )
            dep = read_pfm(
                require_file(
                    self.root / "Depths" / f"{scene}_train" / f"depth_map_{vid:04d}.pfm",
                    "depth map",
                    self.layout_hint(),
                )
            )
            img = load_rgb(img_path)
            hw = img.shape[:2]
            K.append(scale_intrinsics(cam.intrinsic, dep.shape[:2], hw))  # cams/train K is for the depth map
            if dep.shape[:2] != hw:
                dep = resize_depth_nearest(dep, hw)
            depths.append(np.where(np.isfinite(dep) & (dep > 0), dep, 0.0).astype(np.float32))
            images.append(img)
            E.append(cam.extrinsic_3x4)
            paths.append(str(img_path))
        return Sample(
            self.name,
            scene,
            list(view_ids),
            images,
            np.stack(E),
            np.stack(K),
            depths,
            None,
            paths,
            {"light": self.light, "units": "mm"},
        )


class DTUTest(EvalDataset):
    name = "dtu_test"
    default_strategy = "reference"
    pose_only = True

    def __init__(self, root, split="test", normalization: str = "vggt") -> None:
        super().__init__(root, normalization)
        self.split = split
        present = {}
        for p in self.root.iterdir():
            if p.is_dir() and (p / "images").is_dir() and (p / "cams").is_dir():
                try:
                    present[_scan_number(p.name)] = p.name
                except ValueError:
                    continue
        if not present:
            raise InputError(f"no scanN/images + scanN/cams folders under {self.root}", self.layout_hint())
        self._scenes = _select_scans(present, split, DTU_TEST_SCANS, self.root, self.name)
        self._pairs: dict[str, dict] = {}

    @classmethod
    def layout_hint(cls) -> str:
        return "expected ROOT/scanN/images/00000000.jpg, ROOT/scanN/cams/00000000_cam.txt and ROOT/scanN/pair.txt"

    def describe(self) -> dict:
        return {**super().describe(), "split": self.split, "scenes": self._scenes}

    def scenes(self) -> list[str]:
        return list(self._scenes)

    def pairs(self, scene: str):
        if scene not in self._pairs:
            self._pairs[scene] = read_pair_file(
                require_file(self.root / scene / "pair.txt", "pair file", self.layout_hint())
            )
        return self._pairs[scene]

    def views(self, scene: str) -> list[int]:
        return sorted(int(p.stem) for p in (self.root / scene / "images").glob("*.jpg") if p.stem.isdigit())

    def reference_view(self, scene: str) -> int | None:
        return DTU_REFERENCE_VIEW

    def load_raw(self, scene: str, view_ids: list[int]) -> Sample:
        images, E, K, paths = [], [], [], []
        for vid in view_ids:
            img_path = require_file(
                self.root / scene / "images" / f"{vid:08d}.jpg", "image", self.layout_hint()
            )
            cam = read_cam_file(
                require_file(
                    self.root / scene / "cams" / f"{vid:08d}_cam.txt", "camera file", self.layout_hint()
                )
            )
            images.append(load_rgb(img_path))
            E.append(cam.extrinsic_3x4)
            K.append(cam.intrinsic)
            paths.append(str(img_path))
        return Sample(
            self.name,
            scene,
            list(view_ids),
            images,
            np.stack(E),
            np.stack(K),
            None,
            None,
            paths,
            {"units": "mm"},
        )


class DTU64(EvalDataset):
    name = "dtu64"
    default_strategy = "reference"
    pose_only = True

    def __init__(self, root, split="dtu64", normalization: str = "vggt") -> None:
        super().__init__(root, normalization)
        self.split = split
        if not (self.root / "Cameras").is_dir():
            raise InputError(f"{self.root} has no Cameras/ folder", self.layout_hint())
        present = {}
        for p in self.root.iterdir():
            if p.is_dir() and (p / "image").is_dir():
                try:
                    present[_scan_number(p.name)] = p.name
                except ValueError:
                    continue
        if not present:
            raise InputError(f"no scanN/image folders under {self.root}", self.layout_hint())
        self._scenes = _select_scans(present, split, DTU64_SCANS, self.root, self.name)
        self._files: dict[str, dict[int, str]] = {}

    @classmethod
    def layout_hint(cls) -> str:
        return "expected ROOT/Cameras/00000033_cam.txt (shared by all scans) and ROOT/scanN/image/000033.png"

    def describe(self) -> dict:
        return {**super().describe(), "split": self.split, "scenes": self._scenes}

    def scenes(self) -> list[str]:
        return list(self._scenes)

    def _index(self, scene: str) -> dict[int, str]:
        if scene not in self._files:
            files = {}
            for p in sorted((self.root / scene / "image").glob("*.png")):
                if p.stem.isdigit():
                    files[int(p.stem)] = p.name
            self._files[scene] = files
        return self._files[scene]

    def views(self, scene: str) -> list[int]:
        return sorted(self._index(scene))

    def reference_view(self, scene: str) -> int | None:
        return DTU_REFERENCE_VIEW

    def load_raw(self, scene: str, view_ids: list[int]) -> Sample:
        files = self._index(scene)
        images, E, K, paths = [], [], [], []
        for vid in view_ids:
            if vid not in files:
                raise InputError(
                    f"missing image for view {vid} in {self.root / scene / 'image'}", self.layout_hint()
                )
            img_path = self.root / scene / "image" / files[vid]
            cam = read_cam_file(
                require_file(self.root / "Cameras" / f"{vid:08d}_cam.txt", "camera file", self.layout_hint())
            )
            images.append(load_rgb(img_path))
            E.append(cam.extrinsic_3x4)
            K.append(cam.intrinsic)
            paths.append(str(img_path))
        return Sample(
            self.name,
            scene,
            list(view_ids),
            images,
            np.stack(E),
            np.stack(K),
            None,
            None,
            paths,
            {"units": "mm"},
        )
