"""The main window: photos and model on the left, 3D / Compare / Training tabs, log, status bar.

The window is a thin controller between the Qt-free :class:`Project`, the views, and the worker
processes. Nothing slow runs on the GUI thread: inference runs in the persistent worker process,
results and thumbnails load on worker threads, exports write on worker threads. Errors become
readable dialogs (message + fix, details in the log); closing the window cancels what runs.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
from PySide6.QtCore import QByteArray, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QImage, QKeySequence
from PySide6.QtWidgets import (
    QDockWidget,
    QFileDialog,
    QLabel,
    QMainWindow,
    QMessageBox,
    QProgressBar,
    QSizePolicy,
    QSplitter,
    QTabWidget,
    QWidget,
)
from superqt.utils import thread_worker

from lite3r.engine.reconstruction import Reconstruction
from lite3r.errors import Lite3RError

from . import export
from .compare_view import CompareView, format_bytes, latency_s
from .image_panel import ImagePanel, _pixmap_from_array
from .jobs import InferenceClient
from .log_panel import LogPanel
from .model_panel import ModelPanel
from .photos import expand_paths, load_thumbnail, scan_photos
from .project import Project, RunSettings
from .scene_view import SceneView
from .settings import Preferences

log = logging.getLogger("lite3r.app")
PREVIEW_SIZE = 640


@thread_worker(ignore_errors=True)
def _load_result(path):
    return Reconstruction.load(path)


@thread_worker(ignore_errors=True)
def _run_in_thread(fn, *args, **kwargs):
    return fn(*args, **kwargs)


@thread_worker(ignore_errors=True)
def _load_preview(path, size):
    return load_thumbnail(path, size)


class MainWindow(QMainWindow):
    result_shown = Signal(object)  # Reconstruction (final results only)
    compare_shown = Signal()
    run_finished = Signal(str)  # "done" | "cancelled" | "error"
    export_finished = Signal(object)  # Path, or an exception
    error_shown = Signal(str)

    def __init__(
        self,
        *,
        prefs: Preferences | None = None,
        backend: str | None = None,
        worker_env: dict[str, str] | None = None,
        start_worker: bool = True,
        show_dialogs: bool = True,
        dev_models: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.setWindowTitle("Lite3R")
        self.setAcceptDrops(True)
        self.prefs = prefs or Preferences()
        self.project = Project(settings=self.prefs.run_settings())
        self.show_dialogs = show_dialogs
        self.dialogs: list[QMessageBox] = []
        self.errors: list[str] = []  # every error shown, for tests and the smoke test
        self.workdir = Path(tempfile.mkdtemp(prefix="lite3r-app-"))
        self.capabilities: dict | None = None
        self._runs: list[tuple[str, RunSettings]] = []
        self._active: dict | None = None  # the request in flight: id, purpose, settings, t0
        self._compare_results: dict[str, Reconstruction] = {}
        self._threads: list = []  # keep thread workers alive until they finish
        self._closing = False
        self.selected_view: int | None = None  # camera / photo shown in the preview
        self.preview_path: Path | None = None

        self.dev_models = dict(dev_models or {})
        self.client = InferenceClient(
            backend=backend,
            threads=self.prefs.worker_threads(),
            env=worker_env,
            dev_models=self.dev_models,
            parent=self,
        )
        self.client.ready.connect(self._worker_ready)
        self.client.event.connect(self._worker_event)
        self.client.text.connect(lambda t: self.log_panel.worker(t))
        self.client.stopped.connect(self._worker_stopped)

        self._build_ui()
        self._build_menus()
        self._connect_project()
        self._restore_geometry()
        logging.getLogger("lite3r").addHandler(self.log_panel.handler)
        if start_worker:
            QTimer.singleShot(0, self.request_capabilities)  # warm the worker up in the background

    # ---- construction --------------------------------------------------------------------------------

    def _build_ui(self) -> None:
        p = self.prefs
        view_opts = dict(
            point_size=p.point_size(),
            conf_percentile=p.conf_percentile(),
            background=p.background(),
            display_budget=p.display_budget(),
            lod_budget=p.lod_budget(),
        )
        self.image_panel = ImagePanel(self.project)
        self.image_panel.set_recent_folders(p.recent_folders())
        self.model_panel = ModelPanel(
            self.project.settings, extra_backbones={n: f"{n} (dev)" for n in self.dev_models}
        )
        self.model_panel.set_adapters(p.adapters())
        self.model_panel.set_weights_paths(self._weights_paths())
        self.preview = QLabel("Click a camera in the 3D view, or a photo in the list, to see it here.")
        self.preview.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.preview.setWordWrap(True)
        self.preview.setMinimumHeight(120)
        self.preview.setStyleSheet("color: palette(mid);")

        left = QSplitter(Qt.Orientation.Vertical)
        left.addWidget(self.image_panel)
        left.addWidget(self.model_panel)
        left.addWidget(self.preview)
        left.setStretchFactor(0, 3)
        left.setStretchFactor(1, 0)
        left.setStretchFactor(2, 2)

        self.scene_view = SceneView(**view_opts)
        self.compare_view = CompareView(threshold_pct=p.compare_threshold(), **view_opts)
        self.tabs = QTabWidget()
        self.tabs.addTab(self.scene_view, "3D view")
        self.tabs.addTab(self.compare_view, "Compare")
        self.training_tab = self._make_training_tab()
        if self.training_tab is not None:
            self.tabs.addTab(self.training_tab, "Training")

        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(left)
        split.addWidget(self.tabs)
        split.setStretchFactor(0, 0)
        split.setStretchFactor(1, 1)
        split.setSizes([330, 950])
        self.setCentralWidget(split)

        self.log_panel = LogPanel()
        dock = QDockWidget("Log", self)
        dock.setObjectName("log")
        dock.setWidget(self.log_panel)
        dock.setFeatures(
            QDockWidget.DockWidgetFeature.DockWidgetMovable | QDockWidget.DockWidgetFeature.DockWidgetClosable
        )
        self.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, dock)
        self.resizeDocks([dock], [130], Qt.Orientation.Vertical)
        self.log_dock = dock

        sb = self.statusBar()
        self.device_label = QLabel("device: starting the model worker…")
        self.last_run_label = QLabel("")
        self.last_run_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.stage_label = QLabel("")
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setFixedWidth(220)
        self.progress.setTextVisible(True)
        self.progress.setVisible(False)
        sb.addWidget(self.device_label)
        sb.addWidget(self.last_run_label, 1)
        sb.addPermanentWidget(self.stage_label)
        sb.addPermanentWidget(self.progress)

        self.image_panel.open_folder_requested.connect(self.choose_folder)
        self.image_panel.recent_folder_requested.connect(lambda f: self.open_paths([f]))
        self.image_panel.photo_selected.connect(self._photo_row_selected)
        self.model_panel.settings_changed.connect(self._settings_changed)
        self.model_panel.run_clicked.connect(self.run)
        self.model_panel.compare_clicked.connect(self.run_compare)
        self.model_panel.cancel_clicked.connect(self.cancel)
        self.model_panel.preferences_requested.connect(self.open_preferences)
        self.model_panel.notice.connect(self._notice)
        self.project.set_settings(self.model_panel.current_settings())  # what the panel can offer so far
        self.scene_view.view_picked.connect(self.select_view)
        self.scene_view.screenshot_requested.connect(self.choose_screenshot)
        self.compare_view.view_picked.connect(self.select_view)

    def _make_training_tab(self):
        from .training_tab import TrainingTab

        tab = TrainingTab(self.prefs, parent=self)
        tab.adapter_ready.connect(self._adapter_ready)
        tab.message.connect(lambda level, text: self.log_panel.append_message(level, text))
        tab.error.connect(lambda title, msg, details: self.show_error(title, msg, None, details))
        return tab

    def _build_menus(self) -> None:
        m = self.menuBar()
        file = m.addMenu("&File")
        self.act_open = self._action(file, "Open folder…", self.choose_folder, QKeySequence.StandardKey.Open)
        self._action(file, "Open photos…", self.choose_files)
        self.recent_menu = file.addMenu("Recent folders")
        self._fill_recent_menu()
        file.addSeparator()
        self.act_export_ply = self._action(
            file, "Export point cloud (PLY)…", self.choose_export_ply, "Ctrl+E"
        )
        self.act_export_cams = self._action(file, "Export cameras (PLY)…", self.choose_export_cameras)
        self.act_export_colmap = self._action(file, "Export COLMAP model…", self.choose_export_colmap)
        self.act_screenshot = self._action(
            file, "Save screenshot (PNG)…", self.choose_screenshot, "Ctrl+Shift+S"
        )
        file.addSeparator()
        self._action(file, "Preferences…", self.open_preferences, QKeySequence.StandardKey.Preferences)
        file.addSeparator()
        self._action(file, "Quit", self.close, QKeySequence.StandardKey.Quit)
        run = m.addMenu("&Run")
        self.act_run = self._action(run, "Reconstruct", self.run, "Ctrl+R")
        self._action(run, "Compare dense vs Lite3R", self.run_compare, "Ctrl+Shift+R")
        self._action(run, "Cancel", self.cancel, "Esc")
        view = m.addMenu("&View")
        self._action(view, "Reset view (photo 1)", lambda: self._active_view().reset_view())
        self._action(view, "Fit everything", lambda: self._active_view().fit_view(), "F")
        self._action(view, "Background colour…", self.scene_view.choose_background)
        view.addAction(self.log_dock.toggleViewAction())
        help_ = m.addMenu("&Help")
        self._action(help_, "About Lite3R", self.about)
        self._update_actions()

    def _action(self, menu, text, slot, shortcut=None) -> QAction:
        act = QAction(text, self)
        if shortcut is not None:
            act.setShortcut(QKeySequence(shortcut))
        act.triggered.connect(lambda _=False: slot())
        menu.addAction(act)
        return act

    def _fill_recent_menu(self) -> None:
        self.recent_menu.clear()
        folders = self.prefs.recent_folders()
        for f in folders:
            self._action(self.recent_menu, f, lambda f=f: self.open_paths([f]))
        if folders:
            self.recent_menu.addSeparator()
            self._action(self.recent_menu, "Clear list", self._clear_recent)
        else:
            self.recent_menu.addAction("(none yet)").setEnabled(False)
        self.image_panel.set_recent_folders(folders)

    def _clear_recent(self) -> None:
        self.prefs.clear_recent_folders()
        self._fill_recent_menu()

    def _connect_project(self) -> None:
        self.project.result_changed.connect(self._result_changed)
        self.project.compare_changed.connect(lambda a, b: self.compare_view.set_pair(a, b))
        self.project.photos_changed.connect(self._update_actions)

    def _weights_paths(self) -> dict[str, str | None]:
        from .project import BACKBONES

        return {b: self.prefs.weights_path(b) for b in BACKBONES}

    def _restore_geometry(self) -> None:
        geo = self.prefs.qs.value("window/geometry", QByteArray(), type=QByteArray)
        if geo is not None and not geo.isEmpty():
            self.restoreGeometry(geo)
        else:
            self.resize(1400, 900)

    # ---- photos --------------------------------------------------------------------------------------

    def dragEnterEvent(self, event) -> None:
        md = event.mimeData()
        if md.hasUrls() and any(u.isLocalFile() and Path(u.toLocalFile()).exists() for u in md.urls()):
            event.acceptProposedAction()
        else:
            event.ignore()

    def dragMoveEvent(self, event) -> None:
        self.dragEnterEvent(event)

    def dropEvent(self, event) -> None:
        paths = [u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()]
        remote = [u.toString() for u in event.mimeData().urls() if not u.isLocalFile()]
        if remote:
            self.log_panel.warning(f"ignored {len(remote)} non-local item(s): {', '.join(remote[:3])}")
        if paths:
            event.acceptProposedAction()
            self.open_paths(paths)

    def choose_folder(self) -> None:
        start = self.prefs.recent_folders()[0] if self.prefs.recent_folders() else str(Path.home())
        folder = QFileDialog.getExistingDirectory(self, "Open a folder of photos", start)
        if folder:
            self.open_paths([folder])

    def choose_files(self) -> None:
        from .photos import io_images

        pattern = " ".join(f"*{e}" for e in io_images.IMAGE_EXTENSIONS)
        files, _ = QFileDialog.getOpenFileNames(self, "Open photos", "", f"Photos ({pattern});;All files (*)")
        if files:
            self.open_paths(files)

    def open_paths(self, paths: list[str]) -> bool:
        """Load photos from folders and/or files (dropped, chosen, recent)."""
        if self._active is not None or self._runs:
            self.cancel(reason="new photos were opened")
        files, folder = expand_paths(paths)
        if not files:
            where = ", ".join(str(p) for p in paths[:3])
            self.show_error(
                "No photos found",
                f"There are no photos in {where}.",
                "drop a folder that holds JPEG/PNG/TIFF/WebP/BMP photos, or the photos themselves",
            )
            return False
        entries = scan_photos(files)
        self.project.set_photos(entries, folder)
        if folder is not None:
            self.prefs.add_recent_folder(folder)
            self._fill_recent_menu()
        bad = self.project.problem_count
        msg = f"opened {len(entries)} photo{'s' if len(entries) != 1 else ''}" + (
            f" from {folder}" if folder else ""
        )
        if bad:
            msg += f"; {bad} cannot be used (see the list)"
            self.log_panel.warning(msg)
            for e in entries:
                if not e.ok:
                    self.log_panel.warning(f"  {e.path}: {e.message}")
        else:
            self.log_panel.info(msg)
        self.setWindowTitle(f"Lite3R — {folder.name if folder else 'photos'}")
        self.preview.setText("Click a camera in the 3D view, or a photo in the list, to see it here.")
        return True

    def _photo_row_selected(self, row: int) -> None:
        """A photo clicked in the list: show it, and highlight its camera when it has one."""
        if not 0 <= row < len(self.project.photos):
            return
        path = self.project.photos[row].path
        recon = self.project.current
        view = None
        if recon is not None:
            view = next((i for i, p in enumerate(recon.image_paths) if Path(p) == path), None)
        for v in (self.scene_view, self.compare_view.left, self.compare_view.right):
            if v.recon is not None:
                v.set_highlight(view)
        self.selected_view = view
        self._preview(path, row)

    def select_view(self, index: int) -> None:
        """Camera ``index`` picked in a 3D view: show its photo and select it in the list."""
        recon = self.project.current
        if index is None or index < 0 or recon is None or index >= len(recon.image_paths):
            return
        path = Path(recon.image_paths[index])
        row = next((i for i, p in enumerate(self.project.photos) if p.path == path), None)
        self.image_panel.select(row)
        self.scene_view.set_highlight(index)
        self.selected_view = index
        self._preview(path, index)

    def _preview(self, path: Path, index: int) -> None:
        worker = _load_preview(path, PREVIEW_SIZE)
        worker.returned.connect(lambda res, path=path, index=index: self._show_preview(path, index, *res))
        self._keep(worker)

    def _show_preview(self, path: Path, index: int, arr, problem) -> None:
        if arr is None:
            self.preview.setText(f"{path.name}: {problem.message if problem else 'cannot be shown'}")
            return
        pm = _pixmap_from_array(arr)
        w, h = max(100, self.preview.width() - 8), max(80, self.preview.height() - 8)
        self.preview.setPixmap(
            pm.scaled(w, h, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation)
        )
        self.preview.setToolTip(f"photo {index + 1}: {path}")
        self.preview_path = path

    # ---- settings ------------------------------------------------------------------------------------

    def _notice(self, text: str) -> None:
        self.log_panel.warning(text)
        self.statusBar().showMessage(text, 10000)

    def _settings_changed(self, s: RunSettings) -> None:
        self.project.set_settings(s)
        self.prefs.set_run_settings(s)

    def request_capabilities(self) -> None:
        self.client.request("capabilities")

    def _worker_ready(self, msg: dict) -> None:
        self.log_panel.info(f"model worker ready (pid {msg.get('pid')})")

    def _worker_stopped(self, code: int) -> None:
        if not self._closing and code not in (0, 3, 15, -1) and self._active is None:
            self.log_panel.warning(f"model worker exited (code {code})")

    # ---- running -------------------------------------------------------------------------------------

    def _check_ready_to_run(self, settings: RunSettings) -> bool:
        if not self.project.photos:
            self.show_error(
                "No photos",
                "Open a folder of photos first.",
                "drop a folder or photos anywhere on the window, or use File > Open folder…",
            )
            return False
        if not self.project.usable_photos:
            self.show_error(
                "No usable photos",
                "None of the photos can be read (see the list for the reasons).",
                "remove or re-export the flagged files",
            )
            return False
        problem = self.model_panel.weights_problem(settings.backbone)
        if problem:
            self.show_error(
                "Weights missing",
                f"Cannot run {settings.display_backbone}: {problem}.",
                "open File > Preferences… and set the weights file for this backbone",
            )
            return False
        return True

    def run(self) -> None:
        """Reconstruct the photos with the current settings (cached results are reused)."""
        if self.busy:
            return
        s = self.project.settings
        if not self._check_ready_to_run(s):
            return
        self._runs = [("main", s)]
        self._next_run()

    def run_compare(self) -> None:
        """Dense and Lite3R attention on the same photos, shown side by side."""
        if self.busy:
            return
        s = self.project.settings
        if not self._check_ready_to_run(s):
            return
        dense = s.with_(attention="dense", adapter=None)
        lite = s if s.attention == "sla" else s.with_(attention="sla")
        self._compare_results = {}
        self._runs = [("left", dense), ("right", lite)]
        self.tabs.setCurrentWidget(self.compare_view)
        self._next_run()

    @property
    def busy(self) -> bool:
        return self._active is not None or bool(self._runs)

    def _next_run(self) -> None:
        if not self._runs:
            self._set_busy(False)
            return
        purpose, s = self._runs[0]
        self._set_busy(True)
        cached = self.project.cached_path(s)
        if cached is not None:
            self.log_panel.info(f"{s.label()}: using the cached result")
            self._active = {"id": None, "purpose": purpose, "settings": s, "t0": time.perf_counter()}
            self._load(cached, final=True)
            return
        rid = self.client.request(
            "reconstruct",
            images=[str(p) for p in self.project.usable_photos],
            settings=s.to_dict(),
            out=str(self.workdir),
        )
        self._active = {
            "id": rid,
            "purpose": purpose,
            "settings": s,
            "t0": time.perf_counter(),
            "partials": 0,
        }
        n = len(self.project.usable_photos)
        self.log_panel.info(f"reconstructing {n} photo{'s' if n != 1 else ''} with {s.label()}")
        self._progress("starting the model worker" if not self.client.is_ready else "queued", 0.0, None)

    def cancel(self, reason: str = "cancelled by the user") -> None:
        if not self.busy:
            return
        ids = self.client.cancel()
        self._runs = []
        self._active = None
        self._set_busy(False)
        self.log_panel.warning(f"reconstruction cancelled ({reason})" + (f"; requests {ids}" if ids else ""))
        self.stage_label.setText("cancelled")
        if self.project.current is not None:
            self.scene_view.info.setText(self.scene_view.info.text() + " · cancelled: partial result")
        self.run_finished.emit("cancelled")
        if not self._closing:
            QTimer.singleShot(0, self.request_capabilities)  # start a fresh worker, warm, for the next run

    def _set_busy(self, busy: bool) -> None:
        self.model_panel.set_busy(busy)
        self.progress.setVisible(busy)
        if not busy:
            self.stage_label.setText("")
        self._update_actions()

    def _progress(self, stage: str, fraction: float, eta: float | None) -> None:
        self.progress.setValue(int(1000 * max(0.0, min(1.0, fraction))))
        text = f"{stage}"
        if eta is not None and np.isfinite(eta):
            text += f" · ETA {_duration(eta)}"
        self.progress.setFormat(f"{fraction:.0%}")
        self.stage_label.setText(text)

    def _worker_event(self, msg: dict) -> None:
        ev = msg.get("event")
        if ev == "capabilities":
            self._capabilities(msg)
            return
        if ev == "error" and msg.get("id") is None:
            if msg.get("fatal"):
                self.model_panel.set_capabilities(None, failure=msg.get("message"))
                self.device_label.setText("device: model worker unavailable")
                self.show_error(
                    "The model worker cannot start",
                    msg.get("message", ""),
                    msg.get("hint"),
                    msg.get("traceback"),
                )
            return
        a = self._active
        if a is None or msg.get("id") != a["id"]:
            return  # a reply to a cancelled request
        if ev == "progress":
            f = float(msg.get("fraction", 0.0))
            elapsed = time.perf_counter() - a["t0"]
            eta = elapsed * (1 - f) / f if f > 0.05 else None
            self._progress(msg.get("stage", ""), f, eta)
        elif ev == "partial":
            if a["purpose"] == "main":
                self._load(msg["path"], final=False, delete=True)
        elif ev == "result":
            self._progress("loading the result", 1.0, None)
            self._load(msg["path"], final=True)
        elif ev == "error":
            self._run_failed(msg)

    def _capabilities(self, caps: dict) -> None:
        self.capabilities = caps
        self.model_panel.set_capabilities(caps)
        self.device_label.setText(f"device: {caps.get('device', '?')}")
        if self.training_tab is not None:
            self.training_tab.set_capabilities(caps)

    def _load(self, path, final: bool, delete: bool = False) -> None:
        a = self._active
        worker = _load_result(path)
        worker.returned.connect(lambda recon, a=a: self._loaded(a, Path(path), recon, final, delete))
        worker.errored.connect(
            lambda exc, a=a: self._run_failed(
                {
                    "kind": type(exc).__name__,
                    "message": f"cannot read the result {path}: {exc}",
                    "hint": None,
                    "traceback": "".join(traceback.format_exception(exc)),
                },
                a,
            )
        )
        self._keep(worker)

    def _loaded(self, a: dict, path: Path, recon: Reconstruction, final: bool, delete: bool) -> None:
        if delete:
            path.unlink(missing_ok=True)
        if a is not self._active:
            return  # cancelled meanwhile
        s = a["settings"]
        if not final:
            self.project.show_result(recon, s, partial=True)
            return
        self.project.remember(s, path)
        wall = time.perf_counter() - a["t0"]
        lat = latency_s(recon)
        poses, pose_warning = recon.pose_summary()
        self.log_panel.info(
            f"done: {s.label()} — {recon.num_views} views, model latency "
            f"{f'{lat:.2f} s' if lat is not None else 'n/a'}, wall {wall:.1f} s, peak memory "
            f"{format_bytes(recon.peak_memory_bytes)}, attention path {recon.attention or '?'}, device {recon.device or '?'}, "
            f"poses from {poses}"
        )
        if pose_warning:
            self.log_panel.warning(pose_warning)
        self.last_run_label.setText(
            f"last run: {s.display_backbone} · {recon.attention or s.attention} · {recon.precision or s.precision} · "
            f"{f'{lat:.2f} s' if lat is not None else f'{wall:.1f} s wall'} · peak {format_bytes(recon.peak_memory_bytes)}"
            f" on {recon.device or '?'}"
        )
        purpose = a["purpose"]
        self._runs.pop(0)
        self._active = None
        if purpose == "main":
            self.project.show_result(recon, s, partial=False)
            self.tabs.setCurrentWidget(self.scene_view)
            self.result_shown.emit(recon)
        else:
            self._compare_results[purpose] = recon
            if purpose == "right" and "left" in self._compare_results:
                self.project.show_compare(self._compare_results["left"], recon)
                self.tabs.setCurrentWidget(self.compare_view)
                self.compare_shown.emit()
        if self._runs:
            self._next_run()
        else:
            self._set_busy(False)
            self.run_finished.emit("done")

    def _run_failed(self, msg: dict, a: dict | None = None) -> None:
        if a is not None and a is not self._active:
            return
        self._runs = []
        self._active = None
        self._set_busy(False)
        self.show_error(
            "Reconstruction failed",
            msg.get("message", "unknown error"),
            msg.get("hint"),
            msg.get("traceback"),
        )
        self.run_finished.emit("error")

    def _result_changed(self, recon: Reconstruction | None, partial: bool) -> None:
        self.scene_view.set_reconstruction(recon)
        if recon is not None and partial:
            self.scene_view.info.setText(self.scene_view.info.text() + " · partial result, still running…")
        self._update_actions()

    def _adapter_ready(self, path: str, backbone: str) -> None:
        self.prefs.add_adapter(path, backbone)
        self.model_panel.set_adapters(self.prefs.adapters())
        self.log_panel.info(f"new Lite3R adapter available in the model list: {path}")

    # ---- export --------------------------------------------------------------------------------------

    def _active_view(self) -> SceneView:
        return self.compare_view.left if self.tabs.currentWidget() is self.compare_view else self.scene_view

    def _update_actions(self, *_args) -> None:
        has = self.project.current is not None
        for act in (
            getattr(self, "act_export_ply", None),
            getattr(self, "act_export_cams", None),
            getattr(self, "act_export_colmap", None),
        ):
            if act is not None:
                act.setEnabled(has)

    def _export_source(self) -> tuple[Reconstruction | None, str, int]:
        v = self.scene_view
        return self.project.current, v.source, v.conf_percentile

    def _confirm_overwrite(self, what: str) -> bool:
        answer = QMessageBox.question(
            self,
            "Replace?",
            f"{what} already exists. Replace it?",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            QMessageBox.StandardButton.No,
        )
        return answer == QMessageBox.StandardButton.Yes

    def _start_export(self, label: str, fn, *args, **kwargs) -> None:
        worker = _run_in_thread(fn, *args, **kwargs)
        worker.returned.connect(lambda path: self._exported(label, path))
        worker.errored.connect(lambda exc: self._export_failed(label, exc))
        self.statusBar().showMessage(f"exporting {label}…")
        self._keep(worker)

    def _exported(self, label: str, path) -> None:
        self.statusBar().showMessage(f"saved {label}: {path}", 8000)
        self.log_panel.info(f"saved {label}: {path}")
        self.export_finished.emit(Path(path))

    def _export_failed(self, label: str, exc: Exception) -> None:
        hint = exc.hint if isinstance(exc, Lite3RError) else None
        msg = exc.message if isinstance(exc, Lite3RError) else str(exc)
        self.show_error(
            "Export failed",
            f"Could not save the {label}: {msg}",
            hint,
            "".join(traceback.format_exception(exc)),
        )
        self.export_finished.emit(exc)

    def _need_result(self) -> Reconstruction | None:
        recon = self.project.current
        if recon is None:
            self.show_error("Nothing to export", "There is no reconstruction yet.", "press Run first")
        return recon

    def export_ply(self, path, overwrite: bool | None = None) -> bool:
        """Write the shown (confidence-filtered) cloud as binary PLY on a worker thread.

        ``overwrite=None`` asks the user when the file exists; False refuses; True replaces.
        """
        recon, source, conf = self._export_source()
        if recon is None:
            self._need_result()
            return False
        path = Path(path)
        if path.exists() and overwrite is None:
            if not self._confirm_overwrite(str(path)):
                return False
            overwrite = True
        self._start_export(
            "point cloud",
            export.export_ply,
            path,
            recon,
            source=source,
            conf_percentile=conf,
            overwrite=bool(overwrite),
        )
        return True

    def export_cameras(self, path, overwrite: bool | None = None) -> bool:
        recon = self._need_result()
        if recon is None:
            return False
        path = Path(path)
        if path.exists() and overwrite is None:
            if not self._confirm_overwrite(str(path)):
                return False
            overwrite = True
        self._start_export("cameras", export.export_cameras_ply, path, recon, overwrite=bool(overwrite))
        return True

    def export_colmap(self, folder, overwrite: bool | None = None) -> bool:
        recon, source, conf = self._export_source()
        if recon is None:
            self._need_result()
            return False
        folder = Path(folder)
        existing = [n for n in export.COLMAP_FILES if (folder / n).exists()]
        if existing and overwrite is None:
            if not self._confirm_overwrite(f"A COLMAP model in {folder}"):
                return False
            overwrite = True
        self._start_export(
            "COLMAP model",
            export.export_colmap,
            folder,
            recon,
            source=source,
            conf_percentile=conf,
            overwrite=bool(overwrite),
        )
        return True

    def save_screenshot(self, path, overwrite: bool | None = None) -> bool:
        path = Path(path)
        if path.exists() and overwrite is None:
            if not self._confirm_overwrite(str(path)):
                return False
            overwrite = True
        widget = self.tabs.currentWidget()
        image = widget.screenshot() if hasattr(widget, "screenshot") else self.scene_view.screenshot()
        self._start_export("screenshot", export.save_png, path, image, overwrite=bool(overwrite))
        return True

    def _default_name(self, suffix: str) -> str:
        folder = self.project.folder or Path.home()
        s = self.project.current_settings
        tag = f"{s.backbone}-{s.attention}-{s.precision}" if s else "lite3r"
        return str(folder / f"{folder.name}-{tag}{suffix}")

    def choose_export_ply(self) -> None:
        if self._need_result() is None:
            return
        path, _ = QFileDialog.getSaveFileName(
            self, "Export point cloud", self._default_name(".ply"), "PLY (*.ply)"
        )
        if path:
            self.export_ply(path, overwrite=True)  # the file dialog already asked before replacing

    def choose_export_cameras(self) -> None:
        if self._need_result() is None:
            return
        path, _ = QFileDialog.getSaveFileName(
            self, "Export cameras", self._default_name("-cameras.ply"), "PLY (*.ply)"
        )
        if path:
            self.export_cameras(path, overwrite=True)

    def choose_export_colmap(self) -> None:
        if self._need_result() is None:
            return
        folder = QFileDialog.getExistingDirectory(
            self, "Export COLMAP model into folder", str(self.project.folder or Path.home())
        )
        if folder:
            self.export_colmap(folder, overwrite=None)

    def choose_screenshot(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self, "Save screenshot", self._default_name(".png"), "PNG (*.png)"
        )
        if path:
            self.save_screenshot(path, overwrite=True)

    # ---- dialogs -------------------------------------------------------------------------------------

    def show_error(
        self, title: str, message: str, hint: str | None = None, details: str | None = None
    ) -> None:
        """A readable, non-blocking dialog; the details go to the log (and behind 'Show Details…')."""
        text = message + (f"\n\nFix: {hint}" if hint else "")
        self.errors.append(f"{title}: {text}")
        self.log_panel.error(f"{title}: {message}" + (f" (fix: {hint})" if hint else ""))
        if details:
            self.log_panel.append_message("debug", details.rstrip())
        self.error_shown.emit(text)
        if not self.show_dialogs or self._closing:
            return
        box = QMessageBox(QMessageBox.Icon.Warning, title, message, QMessageBox.StandardButton.Ok, self)
        if hint:
            box.setInformativeText(f"Fix: {hint}")
        if details:
            box.setDetailedText(details)
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.finished.connect(lambda _r, box=box: box in self.dialogs and self.dialogs.remove(box))
        self.dialogs.append(box)
        box.open()

    def open_preferences(self) -> None:
        from .preferences_dialog import PreferencesDialog

        dlg = PreferencesDialog(self.prefs, self)
        if dlg.exec():
            self.model_panel.set_weights_paths(self._weights_paths())
            self.model_panel.set_adapters(self.prefs.adapters())
            for v in (self.scene_view, self.compare_view.left, self.compare_view.right):
                v.display_budget = self.prefs.display_budget()
                v.lod_budget = self.prefs.lod_budget()
                v.refresh_cloud()
            if self.client.threads != self.prefs.worker_threads() and not self.busy:
                self.client.threads = self.prefs.worker_threads()
                self.client.cancel()
                self.request_capabilities()

    def about(self) -> None:
        from lite3r import __version__

        QMessageBox.about(
            self,
            "About Lite3R",
            f"<b>Lite3R {__version__}</b><br>Fast feed-forward 3D reconstruction: VGGT-1B, "
            "Depth-Anything-3-Large and lite3r-tiny, with sparse-linear attention and FP8.",
        )

    # ---- lifetime ------------------------------------------------------------------------------------

    def _keep(self, worker) -> None:
        self._threads.append(worker)
        worker.finished.connect(lambda w=worker: w in self._threads and self._threads.remove(w))
        worker.start()

    def closeEvent(self, event) -> None:
        self.shutdown()
        super().closeEvent(event)

    def shutdown(self) -> None:
        """Cancel what runs, stop the workers, close the 3D views, save preferences. Idempotent."""
        if self._closing:
            return
        self._closing = True
        if self.busy:
            self.cancel(reason="the window was closed")
        if self.training_tab is not None:
            self.training_tab.shutdown()
        self.client.shutdown()
        self.image_panel.stop()
        self.prefs.qs.setValue("window/geometry", self.saveGeometry())
        self.prefs.set_point_size(self.scene_view.point_size.value())
        self.prefs.set_conf_percentile(self.scene_view.conf_percentile)
        self.prefs.set_background(self.scene_view.background)
        self.prefs.set_compare_threshold(self.compare_view.threshold.value())
        self.prefs.sync()
        for d in list(self.dialogs):
            d.close()
        self.scene_view.close_plotter()
        self.compare_view.close_plotters()
        logging.getLogger("lite3r").removeHandler(self.log_panel.handler)
        shutil.rmtree(self.workdir, ignore_errors=True)


def _duration(s: float) -> str:
    if s < 60:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


# used by tests that need a widget image including Qt labels
def widget_image(widget: QWidget) -> np.ndarray:
    img = widget.grab().toImage().convertToFormat(QImage.Format.Format_RGB888)
    w, h = img.width(), img.height()
    ptr = img.constBits()
    arr = np.frombuffer(ptr, dtype=np.uint8, count=img.bytesPerLine() * h).reshape(h, img.bytesPerLine())
    return arr[:, : 3 * w].reshape(h, w, 3).copy()
