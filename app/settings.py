"""User preferences, stored with QSettings in an INI file (typed reads: INI stores strings).

Keys: ``model/*`` (last run settings), ``weights/<backbone>`` (weights file per backbone),
``adapters/list`` (trained Lite3R adapters, JSON), ``recent/folders`` (JSON), ``view/*``,
``window/*``. Tests redirect the file with ``QSettings.setPath`` (see tests/app/conftest.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from PySide6.QtCore import QSettings

from .project import RunSettings

ORGANIZATION = "lite3r"
APPLICATION = "lite3r"
MAX_RECENT = 10


def open_settings() -> QSettings:
    return QSettings(QSettings.Format.IniFormat, QSettings.Scope.UserScope, ORGANIZATION, APPLICATION)


class Preferences:
    """Typed accessors over one QSettings object (every read passes ``type=``)."""

    def __init__(self, settings: QSettings | None = None) -> None:
        self.qs = settings or open_settings()

    # ---- generic typed helpers ---------------------------------------------------------------------

    def _get(self, key: str, default, typ):
        return self.qs.value(key, default, type=typ)

    def _get_json(self, key: str, default):
        raw = self.qs.value(key, "", type=str)
        if not raw:
            return default
        try:
            return json.loads(raw)
        except ValueError:
            return default

    def _set_json(self, key: str, value) -> None:
        self.qs.setValue(key, json.dumps(value))

    def sync(self) -> None:
        self.qs.sync()

    # ---- run settings --------------------------------------------------------------------------------

    def run_settings(self) -> RunSettings:
        d = RunSettings()
        try:
            s = RunSettings(
                backbone=self._get("model/backbone", d.backbone, str),
                adapter=self._get("model/adapter", "", str) or None,
                attention=self._get("model/attention", d.attention, str),
                kept_fraction=self._get("model/kept_fraction", d.kept_fraction, float),
                precision=self._get("model/precision", d.precision, str),
                device=self._get("model/device", d.device, str),
                heads_precision=self._get("model/heads_precision", d.heads_precision, str),
            )
        except ValueError:  # a hand-edited or outdated INI: start from defaults rather than crash
            s = d
        return s.with_(weights=self.weights_path(s.backbone))

    def set_run_settings(self, s: RunSettings) -> None:
        self.qs.setValue("model/backbone", s.backbone)
        self.qs.setValue("model/adapter", s.adapter or "")
        self.qs.setValue("model/attention", s.attention)
        self.qs.setValue("model/kept_fraction", float(s.kept_fraction))
        self.qs.setValue("model/precision", s.precision)
        self.qs.setValue("model/device", s.device)
        self.qs.setValue("model/heads_precision", s.heads_precision)

    # ---- weights and adapters ------------------------------------------------------------------------

    def weights_path(self, backbone: str) -> str | None:
        return self._get(f"weights/{backbone}", "", str) or None

    def set_weights_path(self, backbone: str, path: str | None) -> None:
        if path:
            self.qs.setValue(f"weights/{backbone}", str(path))
        else:
            self.qs.remove(f"weights/{backbone}")

    def adapters(self) -> list[dict]:
        """Trained adapters: ``[{"path", "backbone", "name", "keep"}]`` (missing files dropped)."""
        items = self._get_json("adapters/list", [])
        return [a for a in items if isinstance(a, dict) and a.get("path") and Path(a["path"]).exists()]

    def add_adapter(self, path: str, backbone: str, name: str | None = None) -> None:
        """Remember an adapter; its name and kept fraction come from the file's own metadata."""
        from .adapter_files import read_adapter_info

        keep = None
        try:
            info = read_adapter_info(path)
            name, keep, backbone = name or info.name, info.keep_ratio, info.base_model
        except Exception:  # listed anyway: running it reports the problem with the fix
            name = name or Path(path).stem
        items = [a for a in self.adapters() if a["path"] != str(path)]
        items.append({"path": str(path), "backbone": backbone, "name": name, "keep": keep})
        self._set_json("adapters/list", items)

    def remove_adapter(self, path: str) -> None:
        self._set_json("adapters/list", [a for a in self.adapters() if a["path"] != str(path)])

    # ---- recent folders ------------------------------------------------------------------------------

    def recent_folders(self) -> list[str]:
        items = self._get_json("recent/folders", [])
        return [f for f in items if isinstance(f, str)]

    def add_recent_folder(self, folder: str | Path) -> None:
        folder = str(folder)
        items = [folder] + [f for f in self.recent_folders() if f != folder]
        self._set_json("recent/folders", items[:MAX_RECENT])

    def clear_recent_folders(self) -> None:
        self._set_json("recent/folders", [])

    # ---- view ----------------------------------------------------------------------------------------

    def point_size(self) -> int:
        return self._get("view/point_size", 2, int)

    def set_point_size(self, v: int) -> None:
        self.qs.setValue("view/point_size", int(v))

    def conf_percentile(self) -> int:
        return self._get("view/conf_percentile", 25, int)

    def set_conf_percentile(self, v: int) -> None:
        self.qs.setValue("view/conf_percentile", int(v))

    def background(self) -> str:
        return self._get("view/background", "#1e1f24", str)

    def set_background(self, color: str) -> None:
        self.qs.setValue("view/background", color)

    def display_budget(self) -> int:
        """Most points drawn at rest (a random subset above it; the label says so)."""
        return self._get("view/display_budget", 3_000_000, int)

    def set_display_budget(self, v: int) -> None:
        self.qs.setValue("view/display_budget", int(v))

    def lod_budget(self) -> int:
        """Most points drawn while the camera moves (docs/app.md §3.4: ≤ 300 k on software GL)."""
        return self._get("view/lod_budget", 300_000, int)

    def set_lod_budget(self, v: int) -> None:
        self.qs.setValue("view/lod_budget", int(v))

    def worker_threads(self) -> int:
        """CPU threads for the model worker (0 = torch's default)."""
        return self._get("worker/threads", 0, int)

    def set_worker_threads(self, v: int) -> None:
        self.qs.setValue("worker/threads", int(v))

    def compare_threshold(self) -> float:
        """Agreement threshold in compare mode, as % of the scene depth."""
        return self._get("compare/threshold_pct", 2.0, float)

    def set_compare_threshold(self, v: float) -> None:
        self.qs.setValue("compare/threshold_pct", float(v))
