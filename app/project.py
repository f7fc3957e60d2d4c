"""The app's Qt-free model: photos, run settings and results.

Views observe a :class:`Project` through its signals and never hold state of their own that matters.
Results are cached per (photo set, run settings) as ``.npz`` files written by the worker process, so
switching between a dense and a Lite3R run, or opening compare mode, never recomputes (Meshroom's
lesson: cache per-stage outputs). Only the reconstructions on screen are held in memory.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from lite3r.engine.reconstruction import Reconstruction

from .events import Signal
from .photos import PhotoEntry

BACKBONES = {  # registry name → display name (the registry itself lives in the worker: it imports torch)
    "lite3r-tiny": "lite3r-tiny",
    "vggt-1b": "VGGT-1B",
    "da3-large": "DA3-Large",
}
ATTENTION_PATHS = ("dense", "sla")
PRECISIONS = ("fp32", "bf16", "fp8")
HEAD_PRECISIONS = ("fp32", "bf16")  # = lite3r.quant.precision.HEAD_PRECISIONS (test checks)


@dataclass(frozen=True)
class RunSettings:
    """What to run: the model, its attention path and precision. Immutable, so it can key a cache."""

    backbone: str = "lite3r-tiny"
    adapter: str | None = None  # a trained Lite3R adapter (implies the SLA attention path)
    attention: str = "dense"  # "dense" | "sla"
    kept_fraction: float = 0.1  # SLA: fraction of key blocks attended exactly
    precision: str = "fp32"  # "fp32" | "bf16" | "fp8"
    weights: str | None = None  # explicit weights file; None = the registry's default location
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    heads_precision: str = "fp32"  # depth/point heads: "fp32" | "bf16" (bf16/fp8 precision only)

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_PATHS:
            raise ValueError(f"attention must be one of {ATTENTION_PATHS}, got {self.attention!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not 0.0 < self.kept_fraction <= 1.0:
            raise ValueError(f"kept fraction must be in (0, 1], got {self.kept_fraction}")
        if self.heads_precision not in HEAD_PRECISIONS:
            raise ValueError(
                f"heads precision must be one of {HEAD_PRECISIONS}, got {self.heads_precision!r}"
            )
        if self.heads_precision == "bf16" and self.precision == "fp32":
            raise ValueError("bf16 heads need precision bf16 or fp8 (fp32 runs everything in float32)")

    @property
    def display_backbone(self) -> str:
        name = BACKBONES.get(self.backbone, self.backbone)
        return f"{name} + {Path(self.adapter).stem}" if self.adapter else name

    def label(self) -> str:
        """One line for labels and logs, e.g. ``VGGT-1B · SLA keep 10% · bf16``."""
        att = "dense" if self.attention == "dense" else f"SLA keep {self.kept_fraction:.0%}"
        heads = " · bf16 heads" if self.heads_precision == "bf16" else ""
        return f"{self.display_backbone} · {att} · {self.precision}{heads}"

    def with_(self, **changes) -> RunSettings:
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RunSettings:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


@dataclass
class Project:
    """Photos, the settings of the next run, and cached results. Change it only on the GUI thread."""

    photos: list[PhotoEntry] = field(default_factory=list)
    folder: Path | None = None
    settings: RunSettings = field(default_factory=RunSettings)
    current: Reconstruction | None = None
    current_settings: RunSettings | None = None
    compare_pair: tuple[Reconstruction, Reconstruction] | None = None
    max_cached: int = 8  # result files kept for instant re-display (each can be hundreds of MB)

    def __post_init__(self) -> None:
        self.photos_changed = Signal()  # ()
        self.photo_changed = Signal()  # (index)
        self.settings_changed = Signal()  # (RunSettings)
        self.result_changed = Signal()  # (Reconstruction | None, partial: bool)
        self.compare_changed = Signal()  # (left, right) or (None, None)
        self._results: dict[str, Path] = {}

    # ---- photos --------------------------------------------------------------------------------------

    def set_photos(self, entries: list[PhotoEntry], folder: Path | None = None) -> None:
        self.photos = list(entries)
        self.folder = folder
        self.current = None
        self.current_settings = None
        self.compare_pair = None
        self.photos_changed.emit()
        self.result_changed.emit(None, False)

    def flag_photo(self, index: int, problem: str, hint: str | None = None) -> None:
        """Mark a photo unusable (e.g. its full decode failed after the header looked fine)."""
        entry = self.photos[index]
        if entry.problem != problem:
            entry.problem, entry.hint = problem, hint
            self.photo_changed.emit(index)

    @property
    def usable_photos(self) -> list[Path]:
        return [p.path for p in self.photos if p.ok]

    @property
    def problem_count(self) -> int:
        return sum(not p.ok for p in self.photos)

    # ---- settings ------------------------------------------------------------------------------------

    def set_settings(self, settings: RunSettings) -> None:
        if settings != self.settings:
            self.settings = settings
            self.settings_changed.emit(settings)

    # ---- results -------------------------------------------------------------------------------------

    def result_key(self, settings: RunSettings) -> str:
        """Cache key: the usable photos (path, size, mtime) and everything in the settings."""
        h = hashlib.sha256()
        for p in self.usable_photos:
            try:
                st = p.stat()
                h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
            except OSError:
                h.update(f"{p}|missing\n".encode())
        h.update(json.dumps(settings.to_dict(), sort_keys=True).encode())
        return h.hexdigest()[:20]

    def cached_path(self, settings: RunSettings) -> Path | None:
        path = self._results.get(self.result_key(settings))
        return path if path is not None and path.exists() else None

    def remember(self, settings: RunSettings, path: Path) -> None:
        """Cache a result file; beyond ``max_cached`` the oldest files are deleted (they can be large)."""
        key = self.result_key(settings)
        self._results.pop(key, None)
        self._results[key] = Path(path)
        while len(self._results) > self.max_cached:
            old_key = next(iter(self._results))
            old = self._results.pop(old_key)
            if old != Path(path):
                old.unlink(missing_ok=True)

    def show_result(self, recon: Reconstruction | None, settings: RunSettings | None, partial=False) -> None:
        self.current = recon
        self.current_settings = settings
        self.result_changed.emit(recon, partial)

    def show_compare(self, left: Reconstruction | None, right: Reconstruction | None) -> None:
        self.compare_pair = (left, right) if left is not None and right is not None else None
        self.compare_changed.emit(left, right)
