"""The 3D view: a pyvistaqt QtInteractor showing one reconstruction, plus its controls.

Rules from docs/app.md that shape this widget:
- ``QtInteractor(auto_update=False)`` (the default re-renders 5×/s forever) and refreshes with
  ``plotter.update()`` (one render), never ``render()`` (two).
- MSAA off on software GL (llvmpipe: 2.5× slower); detected once with a throw-away GL context.
- Level of detail: while the mouse drags (the interactor style's StartInteractionEvent …
  EndInteractionEvent) a random subset of at most ``lod_budget`` points replaces the full cloud.
- At rest at most ``display_budget`` points are drawn (a random subset above it; the label says so).
- The interactor must not swallow drops (it would try to open folders as meshes): drops go to the
  main window.
All drawing goes through :mod:`lite3r.app.scene`, so tests can build the same scene off-screen.
"""

from __future__ import annotations

import functools
import logging

import numpy as np
from PySide6.QtCore import QEvent, QObject, QPoint, Qt, QTimer, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QCheckBox,
    QColorDialog,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QSizePolicy,
    QSlider,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from lite3r.engine.reconstruction import Reconstruction

from . import scene

log = logging.getLogger(__name__)
CLICK_SLOP_PX = 4


@functools.cache
def gl_renderer() -> str:
    """The OpenGL renderer string of this display ('' if no context can be made)."""
    from PySide6.QtGui import QOffscreenSurface, QOpenGLContext

    ctx = QOpenGLContext()
    if not ctx.create():
        return ""
    surf = QOffscreenSurface()
    surf.setFormat(ctx.format())
    surf.create()
    try:
        if not ctx.makeCurrent(surf):
            return ""
        name = ctx.functions().glGetString(0x1F01) or ""  # GL_RENDERER
        ctx.doneCurrent()
        return str(name)
    finally:
        surf.destroy()


def is_software_gl() -> bool:
    name = gl_renderer().lower()
    return any(s in name for s in ("llvmpipe", "softpipe", "swrast", "software"))


class _ClickFilter(QObject):
    """Turns a press+release without dragging on the 3D widget into a pick."""

    def __init__(self, view: SceneView) -> None:
        super().__init__(view)
        self.view = view
        self.press: QPoint | None = None

    def eventFilter(self, obj, ev) -> bool:
        t = ev.type()
        if t == QEvent.Type.MouseButtonPress and ev.button() == Qt.MouseButton.LeftButton:
            self.press = ev.position().toPoint()
        elif t == QEvent.Type.MouseButtonRelease and ev.button() == Qt.MouseButton.LeftButton:
            p = ev.position().toPoint()
            if self.press is not None and (p - self.press).manhattanLength() <= CLICK_SLOP_PX:
                QTimer.singleShot(0, lambda p=p: self.view.pick_at_widget(p.x(), p.y()))
            self.press = None
        return False


class SceneView(QWidget):
    """One reconstruction in 3D: cloud, frusta, confidence filter, LOD, picking, screenshot."""

    view_picked = Signal(int)  # camera index clicked in the view
    cloud_changed = Signal()  # the displayed points changed (filter, new result)
    camera_moved = Signal()  # the user moved the camera (for linked views)
    interaction = Signal(bool)  # a drag started (True) / ended (False): linked views follow the LOD
    screenshot_requested = Signal()

    def __init__(
        self,
        parent: QWidget | None = None,
        *,
        point_size: int = 2,
        conf_percentile: int = 25,
        background: str = "#1e1f24",
        display_budget: int = 3_000_000,
        lod_budget: int = 300_000,
        show_controls: bool = True,
    ) -> None:
        super().__init__(parent)
        from pyvistaqt import QtInteractor

        self.recon: Reconstruction | None = None
        self.transform = None  # Sim3 applied to points and cameras (compare mode: right → left frame)
        self.cloud: scene.CloudData | None = None
        self.highlight: int | None = None
        self.distances: np.ndarray | None = None  # one per displayed point (compare mode)
        self.distance_clim: tuple[float, float] | None = None
        self.display_budget = display_budget
        self.lod_budget = lod_budget
        self.source = "depth"
        self.color_mode = "rgb"
        self.background = background
        self._frustum_actors: tuple = ()
        self._cloud_actor = None
        self._lod_actor = None
        self._interacting = False
        self._has_camera = False
        self._renders = 0

        msaa = 0 if is_software_gl() else 4
        self.plotter = QtInteractor(self, auto_update=False, multi_samples=msaa)
        self.plotter.setAcceptDrops(False)
        self.plotter.set_background(background)
        self.plotter.enable_trackball_style()
        self.plotter.ren_win.AddObserver("EndEvent", self._count_render)
        self._attach_style_observers()
        self._click_filter = _ClickFilter(self)
        self.plotter.installEventFilter(self._click_filter)
        self.plotter.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)

        self.title = QLabel("")
        self.title.setTextFormat(Qt.TextFormat.RichText)
        self.title.setVisible(False)
        self.info = QLabel("No reconstruction yet: drop photos on the window and press Run.")
        self.info.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)

        self._filter_timer = QTimer(self)
        self._filter_timer.setSingleShot(True)
        self._filter_timer.setInterval(150)
        self._filter_timer.timeout.connect(self.refresh_cloud)

        self.controls = self._build_controls(point_size, conf_percentile)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(2)
        lay.addWidget(self.title)
        lay.addWidget(self.controls)
        lay.addWidget(self.plotter, 1)
        lay.addWidget(self.info)
        self.controls.setVisible(show_controls)

    # ---- controls ----------------------------------------------------------------------------------

    def _build_controls(self, point_size: int, conf_percentile: int) -> QWidget:
        w = QWidget(self)
        row = QHBoxLayout(w)
        row.setContentsMargins(4, 2, 4, 2)
        self.conf_slider = QSlider(Qt.Orientation.Horizontal)
        self.conf_slider.setRange(0, 99)
        self.conf_slider.setValue(conf_percentile)
        self.conf_slider.setToolTip(
            "Hide the least confident points: this percentile of confidence and below"
        )
        self.conf_slider.setFixedWidth(140)
        self.conf_label = QLabel()
        self.conf_slider.valueChanged.connect(self._conf_changed)
        self._conf_changed(conf_percentile, schedule=False)
        self.point_size = QSpinBox()
        self.point_size.setRange(1, 10)
        self.point_size.setValue(point_size)
        self.point_size.setToolTip("Point size in pixels")
        self.point_size.valueChanged.connect(self._point_size_changed)
        self.source_box = QComboBox()
        self.source_box.addItem("depth + cameras", "depth")
        self.source_box.addItem("point map", "points")
        self.source_box.setToolTip(
            "Geometry: depth unprojected with the predicted cameras, or the point head"
        )
        self.source_box.currentIndexChanged.connect(self._source_changed)
        self.color_box = QComboBox()
        self.color_box.addItem("photo colours", "rgb")
        self.color_box.addItem("confidence", "confidence")
        self.color_box.setToolTip("Colour the points by the photos, by confidence, or (compare) by distance")
        self.color_box.currentIndexChanged.connect(self._color_changed)
        self.cameras_box = QCheckBox("cameras")
        self.cameras_box.setChecked(True)
        self.cameras_box.toggled.connect(self._cameras_toggled)
        self.bg_button = QToolButton()
        self.bg_button.setText("Background…")
        self.bg_button.clicked.connect(self.choose_background)
        self.reset_button = QToolButton()
        self.reset_button.setText("Reset")
        self.reset_button.setToolTip("Look through the first photo's camera")
        self.reset_button.clicked.connect(self.reset_view)
        self.fit_button = QToolButton()
        self.fit_button.setText("Fit")
        self.fit_button.setToolTip("Show everything")
        self.fit_button.clicked.connect(self.fit_view)
        for widget in (
            QLabel("confidence ≥"),
            self.conf_slider,
            self.conf_label,
            QLabel("size"),
            self.point_size,
            self.source_box,
            self.color_box,
            self.cameras_box,
        ):
            row.addWidget(widget)
        row.addStretch(1)
        self.shot_button = QToolButton()
        self.shot_button.setText("Screenshot…")
        self.shot_button.setToolTip("Save what the view shows as a PNG")
        self.shot_button.clicked.connect(self.screenshot_requested)
        for widget in (self.bg_button, self.reset_button, self.fit_button, self.shot_button):
            row.addWidget(widget)
        return w

    def _conf_changed(self, value: int, schedule: bool = True) -> None:
        self.conf_label.setText(f"{value:2d}%")
        if schedule:
            self._filter_timer.start()

    def _point_size_changed(self, value: int) -> None:
        for actor in (self._cloud_actor, self._lod_actor):
            if actor is not None:
                actor.GetProperty().SetPointSize(value)
        self.plotter.update()

    def _source_changed(self) -> None:
        self.source = self.source_box.currentData()
        self.refresh_cloud()

    def _color_changed(self) -> None:
        self.color_mode = self.color_box.currentData()
        self._draw_cloud()
        self.plotter.update()

    def _cameras_toggled(self, on: bool) -> None:
        for actor in self._frustum_actors:
            if actor is not None:
                actor.SetVisibility(on)
        self.plotter.update()

    def choose_background(self) -> None:
        color = QColorDialog.getColor(QColor(self.background), self, "Background colour")
        if color.isValid():
            self.set_background(color.name())

    def set_background(self, color: str) -> None:
        self.background = color
        self.plotter.set_background(color)
        self.plotter.update()

    @property
    def conf_percentile(self) -> int:
        return int(self.conf_slider.value())

    def set_conf_percentile(self, value: int) -> None:
        self.conf_slider.setValue(int(value))
        self._filter_timer.stop()
        self.refresh_cloud()

    # ---- content -----------------------------------------------------------------------------------

    def set_title(self, html: str) -> None:
        self.title.setText(html)
        self.title.setVisible(bool(html))

    def set_reconstruction(
        self, recon: Reconstruction | None, *, transform=None, reset_camera: bool | None = None
    ) -> None:
        """Show ``recon`` (None clears). The camera is placed at photo 0 the first time only."""
        first = (
            self.recon is None
            or recon is None
            or (recon is not None and self.recon is not None and self.recon.image_paths != recon.image_paths)
        )
        self.recon = recon
        self.transform = transform
        self.distances = None
        if recon is None:
            self.cloud = None
            for name in (scene.CLOUD, scene.CLOUD_LOD, scene.FRUSTA, scene.FRUSTA_FACES):
                self.plotter.remove_actor(name, render=False)
            self._cloud_actor = self._lod_actor = None
            self._frustum_actors = ()
            self._has_camera = False
            self.info.setText("No reconstruction yet: drop photos on the window and press Run.")
            self.plotter.update()
            return
        has_points = recon.world_points is not None
        self.source_box.model().item(1).setEnabled(has_points)
        if not has_points and self.source == "points":
            self.source_box.setCurrentIndex(0)
        self.refresh_cloud(reset_camera=first if reset_camera is None else reset_camera)

    def refresh_cloud(self, reset_camera: bool = False) -> None:
        """Recompute the displayed points from the reconstruction and the filters, then redraw."""
        recon = self.recon
        if recon is None:
            return
        xyz, rgb, conf = scene.filtered_points(recon, self.source, self.conf_percentile)
        total = len(xyz)
        idx = scene.random_subset(total, self.display_budget, seed=1)
        if idx is not None:
            xyz, rgb, conf = xyz[idx], rgb[idx], conf[idx]
        if self.transform is not None:
            xyz = self.transform.apply(xyz).astype(np.float32)
        self.cloud = scene.CloudData(xyz=xyz, rgb=rgb, conf=conf, total=total)
        self.distances = None
        self._draw_cloud()
        self._draw_cameras()
        if (reset_camera or not self._has_camera) and recon.num_views:
            self.reset_view(update=False)
        else:
            # the camera stays, but the depth range must cover what was added: a view placed when only
            # the cameras of a partial result existed would otherwise clip the whole cloud away
            self.plotter.reset_camera_clipping_range()
        self._update_info()
        self.plotter.update()
        self.cloud_changed.emit()

    def set_distances(self, distances: np.ndarray | None, clim: tuple[float, float] | None = None) -> None:
        """Per displayed point distances (compare mode); switches colouring to them."""
        self.distances = distances
        self.distance_clim = clim
        idx = self.color_box.findData("distance")
        if distances is not None and idx < 0:
            self.color_box.addItem("distance to other", "distance")
            idx = self.color_box.count() - 1
        if distances is not None:
            self.color_box.setCurrentIndex(idx)  # triggers a redraw when it changes
        self._draw_cloud()
        self.plotter.update()

    def _points_extrinsics(self) -> np.ndarray:
        ext = self.recon.extrinsics
        if self.transform is not None:
            ext = self.transform.apply_to_extrinsics(ext).astype(np.float32)
        return ext

    def _draw_cloud(self) -> None:
        cloud = self.cloud
        if cloud is None:
            return
        ps = self.point_size.value()
        mode = self.color_mode
        if mode == "distance" and (self.distances is None or len(self.distances) != cloud.n):
            mode = "rgb"
        kwargs = {}
        if mode == "confidence" and cloud.n:
            lo, hi = np.percentile(cloud.conf, [2, 98])
            kwargs = {
                "scalars": cloud.conf,
                "cmap": "viridis",
                "clim": (float(lo), float(max(hi, lo + 1e-6))),
                "scalar_title": "confidence",
            }
        elif mode == "distance":
            clim = self.distance_clim or (0.0, float(np.percentile(self.distances, 95)) if cloud.n else 1.0)
            kwargs = {"scalars": self.distances, "cmap": "turbo", "clim": clim, "scalar_title": "distance"}
        for title in list(self.plotter.scalar_bars.keys()):
            self.plotter.scalar_bars.remove_scalar_bar(title, render=False)
        self._cloud_actor = scene.add_point_cloud(
            self.plotter, cloud.xyz, None if kwargs else cloud.rgb, point_size=ps, name=scene.CLOUD, **kwargs
        )
        lod = scene.random_subset(cloud.n, self.lod_budget, seed=2)
        if lod is None:
            self.plotter.remove_actor(scene.CLOUD_LOD, render=False)
            self._lod_actor = None
        else:
            lod_kwargs = dict(kwargs)
            if "scalars" in lod_kwargs:
                lod_kwargs["scalars"] = lod_kwargs["scalars"][lod]
                lod_kwargs["scalar_title"] = ""
            self._lod_actor = scene.add_point_cloud(
                self.plotter,
                cloud.xyz[lod],
                None if kwargs else cloud.rgb[lod],
                point_size=ps,
                name=scene.CLOUD_LOD,
                **lod_kwargs,
            )
            self._lod_actor.SetVisibility(self._interacting)
            if self._cloud_actor is not None:
                self._cloud_actor.SetVisibility(not self._interacting)

    def _draw_cameras(self) -> None:
        recon = self.recon
        ext = self._points_extrinsics()
        size = scene.frustum_size(ext, self.cloud.xyz if self.cloud is not None else None)
        self._frustum_size = size
        self._frustum_actors = scene.add_cameras(
            self.plotter, ext, recon.intrinsics, recon.image_size, size, highlight=self.highlight
        )
        for actor in self._frustum_actors:
            actor.SetVisibility(self.cameras_box.isChecked())

    def _update_info(self) -> None:
        c, r = self.cloud, self.recon
        if c is None or r is None:
            return
        shown = f"{_count(c.n)} points"
        if c.total > c.n:
            shown += f" shown of {_count(c.total)} (display limit)"
        filt = (
            f"confidence ≥ {self.conf_percentile}th percentile" if self.conf_percentile else "all confidences"
        )
        self.info.setText(f"{shown} · {filt} · {r.num_views} cameras")

    def set_highlight(self, view: int | None) -> None:
        if view == self.highlight:
            return
        self.highlight = view
        if self.recon is not None:
            self._draw_cameras()
            self.plotter.update()

    # ---- camera --------------------------------------------------------------------------------------

    def reset_view(self, update: bool = True) -> None:
        r = self.recon
        if r is None:
            return
        ext = self._points_extrinsics()
        dist = 1.0
        if self.cloud is not None and self.cloud.n:
            c0 = scene.camera_centers(ext)[0]
            dist = float(
                np.median(np.linalg.norm(self.cloud.xyz[:: max(1, self.cloud.n // 20000)] - c0, axis=1))
            )
        scene.look_from_camera(self.plotter, ext, r.intrinsics, r.image_size, 0, max(dist, 1e-6))
        self._has_camera = True
        if update:
            self.plotter.update()
            self.camera_moved.emit()

    def fit_view(self) -> None:
        self.plotter.reset_camera(render=False)
        self._has_camera = True
        self.plotter.update()
        self.camera_moved.emit()

    # ---- level of detail -----------------------------------------------------------------------------

    def _attach_style_observers(self) -> None:
        style = self.plotter.iren.style
        style.AddObserver("StartInteractionEvent", self._start_interaction)
        style.AddObserver("EndInteractionEvent", self._end_interaction)
        style.AddObserver("InteractionEvent", lambda *_: self.camera_moved.emit())

    def _start_interaction(self, *_args) -> None:
        self.set_lod(True)
        self.interaction.emit(True)

    def _end_interaction(self, *_args) -> None:
        self.set_lod(False)
        self.interaction.emit(False)
        self.camera_moved.emit()

    def set_lod(self, on: bool) -> None:
        """Swap the level-of-detail subset in (while the camera moves) or the full cloud back."""
        self._interacting = on
        if self._lod_actor is not None and self._cloud_actor is not None:
            self._cloud_actor.SetVisibility(not on)
            self._lod_actor.SetVisibility(on)
            if not on:
                self.plotter.update()

    @property
    def lod_active(self) -> bool:
        return self._lod_actor is not None and bool(self._lod_actor.GetVisibility())

    @property
    def drawn_points(self) -> int:
        """Points in the visible cloud actor right now (the LOD subset while dragging)."""
        actor = self._lod_actor if self.lod_active else self._cloud_actor
        if actor is None or not actor.GetVisibility():
            return 0
        return _actor_points(actor)

    def _count_render(self, *_args) -> None:
        self._renders += 1

    # ---- picking -------------------------------------------------------------------------------------

    def pick_at_widget(self, x: int, y: int) -> int | None:
        """Pick the frustum under widget pixel (x, y) (Qt coordinates) and announce it."""
        if self.recon is None or not self.cameras_box.isChecked():
            return None
        dpr = self.plotter.devicePixelRatioF()
        h = self.plotter.height()
        view = scene.pick_view(self.plotter, int(x * dpr), int((h - 1 - y) * dpr), self._frustum_actors)
        if view is not None:
            self.set_highlight(view)
            self.view_picked.emit(view)
        return view

    def frustum_center_widget(self, view: int) -> tuple[int, int]:
        """Widget pixel of the centre of a frustum's image plane (what a user would click)."""
        r = self.recon
        ext = self._points_extrinsics()
        h, w = r.image_size
        K = r.intrinsics[view].astype(np.float64)
        ray = np.linalg.inv(K) @ np.array([w / 2, h / 2, 1.0]) * self._frustum_size
        R, t = ext[view, :, :3].astype(np.float64), ext[view, :, 3].astype(np.float64)
        world = R.T @ (ray - t)
        dx, dy = scene.world_to_display(self.plotter, world)
        dpr = self.plotter.devicePixelRatioF()
        return round(dx / dpr), round(self.plotter.height() - 1 - dy / dpr)

    # ---- output --------------------------------------------------------------------------------------

    def screenshot(self) -> np.ndarray:
        """What the 3D view shows now, as uint8 [H, W, 3] (must run on the GUI thread)."""
        return np.asarray(self.plotter.screenshot(return_img=True))[..., :3].copy()

    def close_plotter(self) -> None:
        self._filter_timer.stop()
        self.plotter.close()


def _actor_points(actor) -> int:
    """Points fed to an actor's mapper (through pyvista's active-scalars filter when there is one)."""
    mapper = actor.GetMapper()
    alg = mapper.GetInputAlgorithm()
    data = alg.GetInputDataObject(0, 0) if alg is not None and alg.GetNumberOfInputPorts() else None
    if data is None:
        data = mapper.GetInputDataObject(0, 0)
    return int(data.GetNumberOfPoints()) if data is not None else 0


def _count(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1e6:.2f} M"
    if n >= 10_000:
        return f"{n / 1e3:.0f} k"
    return str(n)
