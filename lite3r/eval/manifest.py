"""Fixed, seeded view sampling written to a JSON manifest.

Two model variants are compared on *identical* samples by evaluating the same manifest: the views of
every sample are drawn once, saved, and re-read. Each scene draws from its own generator seeded with
(seed, crc32(scene name), sample index), so adding or removing scenes never changes the others.

Strategies:

* ``random`` — a random anchor, then S − 1 other random views (draw order kept; the anchor is view 0).
* ``reference`` — the dataset's reference view first (DTU / DTU64: 33; else the first view), then
  S − 1 random others in ascending id order; with S = all views this is DA3's "view 33 first" order.
* ``pair`` — a random anchor, then its best S − 1 sources from pair.txt; if pair.txt lists fewer,
  the rest are drawn at random and the sample records ``"filled": k``.
* ``all`` — every view in dataset order (S is ignored).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from lite3r.errors import InputError

log = logging.getLogger(__name__)

STRATEGIES = ("random", "reference", "pair", "all")
MANIFEST_VERSION = 1


@dataclass
class SampleSpec:
    scene: str
    views: list[int]
    index: int = 0  # sample number within the scene
    filled: int = 0  # pair strategy: sources drawn at random because pair.txt had too few

    @property
    def sample_id(self) -> str:
        return f"{self.scene}#{self.index}"


@dataclass
class Manifest:
    dataset: dict  # EvalDataset.describe()
    num_views: int
    seed: int
    strategy: str
    samples: list[SampleSpec]
    skipped: list[dict] = field(default_factory=list)
    version: int = MANIFEST_VERSION

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Manifest:
        if d.get("version") != MANIFEST_VERSION:
            raise InputError(
                f"manifest version {d.get('version')} is not supported (expected {MANIFEST_VERSION})"
            )
        samples = [SampleSpec(**s) for s in d["samples"]]
        return cls(d["dataset"], d["num_views"], d["seed"], d["strategy"], samples, d.get("skipped", []))

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self.to_dict(), f, indent=1)
                f.write("\n")
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Manifest:
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            raise InputError(f"manifest {path} does not exist") from None
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise InputError(f"manifest {path} is not a valid Lite3R manifest: {exc}") from None


def scene_rng(seed: int, scene: str, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(scene.encode()), int(index)])


def sample_views(dataset, scene: str, num_views: int, strategy: str, seed: int, index: int = 0) -> SampleSpec:
    """Draw one sample's views (see module doc); raises ValueError when the scene has too few views."""
    avail = list(dataset.views(scene))
    if strategy == "all":
        return SampleSpec(scene, avail, index)
    if num_views < 1:
        raise ValueError(f"num_views must be ≥ 1 (or use strategy 'all'), got {num_views}")
    if len(avail) < num_views:
        raise ValueError(f"{scene} has {len(avail)} views, {num_views} needed")
    rng = scene_rng(seed, scene, index)
    if strategy == "random":
        pick = rng.choice(len(avail), size=num_views, replace=False)
        return SampleSpec(scene, [int(avail[i]) for i in pick], index)
    if strategy == "reference":
        ref = dataset.reference_view(scene)
        ref = avail[0] if ref is None or ref not in avail else ref
        others = [v for v in avail if v != ref]
        pick = sorted(int(others[i]) for i in rng.choice(len(others), size=num_views - 1, replace=False))
        return SampleSpec(scene, [int(ref), *pick], index)
    if strategy == "pair":
        pairs = dataset.pairs(scene)
        if pairs is None:
            raise ValueError(f"{dataset.name} has no pair.txt; use strategy 'random' or 'reference'")
        anchor = int(avail[rng.integers(len(avail))])
        srcs = [s for s, _ in pairs.get(anchor, []) if s in avail and s != anchor][: num_views - 1]
        rest = [v for v in avail if v != anchor and v not in srcs]
        filled = num_views - 1 - len(srcs)
        extra = [int(rest[i]) for i in rng.choice(len(rest), size=filled, replace=False)] if filled else []
        return SampleSpec(scene, [anchor, *srcs, *extra], index, filled)
    raise ValueError(f"unknown sampling strategy {strategy!r}; choose one of {STRATEGIES}")


def build_manifest(
    dataset,
    num_views: int,
    seed: int = 0,
    strategy: str | None = None,
    samples_per_scene: int = 1,
    max_samples: int | None = None,
) -> Manifest:
    """Draw every sample of ``dataset`` (scenes in sorted order); scenes with too few views are listed
    in ``skipped`` with the reason (and logged), never silently dropped."""
    strategy = strategy or dataset.default_strategy
    if strategy not in STRATEGIES:
        raise InputError(f"unknown sampling strategy {strategy!r}", f"choose one of {', '.join(STRATEGIES)}")
    samples, skipped = [], []
    for scene in dataset.scenes():
        for k in range(samples_per_scene if strategy != "all" else 1):
            try:
                samples.append(sample_views(dataset, scene, num_views, strategy, seed, k))
            except ValueError as exc:
                skipped.append({"scene": scene, "reason": str(exc)})
                log.warning("skipping %s: %s", scene, exc)
                break
        if max_samples is not None and len(samples) >= max_samples:
            samples = samples[:max_samples]
            break
    if not samples:
        raise InputError(
            f"no {dataset.name} sample with {num_views} views under {dataset.root}",
            "use fewer views (--views) or check the dataset root",
        )
    return Manifest(dataset.describe(), num_views, seed, strategy, samples, skipped)
