"""Compare mode: the dense and the Lite3R reconstruction side by side, cameras linked.

The right reconstruction is mapped into the left one's frame by a similarity (Umeyama, see
:mod:`lite3r.app.compare`), so one shared VTK camera shows both from the same viewpoint
(``right.camera = left.camera``, docs/app.md §2.5; each view repaints when the other moves). Each
point can be coloured by its distance to the other cloud; the nearest-neighbour search runs on a
worker thread and is redone when the confidence filter changes.
"""

from __future__ import annotations

import html

import numpy as np
from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QHBoxLayout,
    QLabel,
    QSizePolicy,
    QSlider,
    QSpinBox,
    QSplitter,
    QVBoxLayout,
    QWidget,
)
from superqt.utils import thread_worker

from lite3r.engine.reconstruction import Reconstruction

from . import compare as cmp
from .scene_view import SceneView


def format_bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def latency_s(recon: Reconstruction) -> float | None:
    t = recon.timings_ms.get("total") if recon.timings_ms else None
    return None if t is None else float(t) / 1000.0


def run_label(recon: Reconstruction) -> str:
    """HTML label: model, attention path, precision, latency, peak memory."""
    lat = latency_s(recon)
    parts = [
        f"<b>{html.escape(recon.model_name or 'model')}</b>",
        html.escape(recon.attention or "?"),
        html.escape(recon.precision or "?"),
        f"{lat:.2f} s" if lat is not None else "latency n/a",
        f"peak {format_bytes(recon.peak_memory_bytes)}",
    ]
    if recon.device:
        parts.append(html.escape(recon.device))
    return " · ".join(parts)


@thread_worker(ignore_errors=True)
def _measure(left_xyz, right_xyz, scale, threshold_rel, transform, alignment):
    return cmp.measure(left_xyz, right_xyz, scale, threshold_rel, transform, alignment)


class CompareView(QWidget):
    compared = Signal(object)  # CompareResult, after each distance computation
    view_picked = Signal(int)

    def __init__(
        self,
        parent: QWidget | None = None,
        *,
        point_size: int = 2,
        conf_percentile: int = 25,
        background: str = "#1e1f24",
        display_budget: int = 3_000_000,
        lod_budget: int = 300_000,
        threshold_pct: float = 2.0,
    ) -> None:
        super().__init__(parent)
        opts = dict(
            point_size=point_size,
            conf_percentile=conf_percentile,
            background=background,
            display_budget=display_budget,
            lod_budget=lod_budget,
            show_controls=False,
        )
        self.left = SceneView(self, **opts)
        self.right = SceneView(self, **opts)
        self.right.plotter.camera = self.left.plotter.camera  # the pyvista setter (docs/app.md §9.9)
        self.left.camera_moved.connect(self.right.plotter.update)
        self.right.camera_moved.connect(self.left.plotter.update)
        self.left.interaction.connect(self.right.set_lod)  # dragging one view redraws both: both go light
        self.right.interaction.connect(self.left.set_lod)
        self.left.view_picked.connect(self._picked)
        self.right.view_picked.connect(self._picked)
        self.result: cmp.CompareResult | None = None
        self.pair: tuple[Reconstruction, Reconstruction] | None = None
        self._transform = None
        self._alignment = ""
        self._worker = None
        self._pending = False

        self.conf_slider = QSlider(Qt.Orientation.Horizontal)
        self.conf_slider.setRange(0, 99)
        self.conf_slider.setValue(conf_percentile)
        self.conf_slider.setFixedWidth(140)
        self.conf_label = QLabel(f"{conf_percentile}%")
        self.conf_slider.valueChanged.connect(self._conf_changed)
        self.point_size = QSpinBox()
        self.point_size.setRange(1, 10)
        self.point_size.setValue(point_size)
        self.point_size.valueChanged.connect(
            lambda v: (self.left.point_size.setValue(v), self.right.point_size.setValue(v))
        )
        self.color_box = QComboBox()
        self.color_box.addItem("distance to the other model", "distance")
        self.color_box.addItem("photo colours", "rgb")
        self.color_box.addItem("confidence", "confidence")
        self.color_box.currentIndexChanged.connect(self._color_changed)
        self.threshold = QDoubleSpinBox()
        self.threshold.setRange(0.1, 50.0)
        self.threshold.setSingleStep(0.5)
        self.threshold.setDecimals(1)
        self.threshold.setSuffix(" % of depth")
        self.threshold.setValue(threshold_pct)
        self.threshold.setToolTip("Distance counted as agreement, as a percentage of the median scene depth")
        self.threshold.valueChanged.connect(self._schedule)
        self.summary = QLabel("Press Compare to run dense and Lite3R attention on the same photos.")
        self.summary.setTextFormat(Qt.TextFormat.RichText)
        self.summary.setWordWrap(True)

        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(200)
        self._timer.timeout.connect(self._remeasure)
        self.left.cloud_changed.connect(self._schedule)
        self.right.cloud_changed.connect(self._schedule)

        controls = QHBoxLayout()
        for w in (
            QLabel("confidence ≥"),
            self.conf_slider,
            self.conf_label,
            QLabel("size"),
            self.point_size,
            self.color_box,
            QLabel("agree within"),
            self.threshold,
        ):
            controls.addWidget(w)
        controls.addStretch(1)
        for view in self.views:  # long engine path descriptions wrap instead of widening the window;
            view.title.setWordWrap(True)  # equal title heights keep both 3D views the same shape
            view.title.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
            view.title.setFixedHeight(2 * view.title.fontMetrics().lineSpacing() + 4)
            view.title.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
        self.summary.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(self.left)
        split.addWidget(self.right)
        split.setChildrenCollapsible(False)
        split.setStretchFactor(0, 1)
        split.setStretchFactor(1, 1)
        self.splitter = split
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(controls)
        lay.addWidget(split, 1)
        lay.addWidget(self.summary)

    @property
    def views(self) -> tuple[SceneView, SceneView]:
        return self.left, self.right

    def _picked(self, view: int) -> None:
        self.left.set_highlight(view)
        self.right.set_highlight(view)
        self.view_picked.emit(view)

    def _conf_changed(self, v: int) -> None:
        self.conf_label.setText(f"{v}%")
        self.left.conf_slider.setValue(v)  # each view debounces and refreshes itself
        self.right.conf_slider.setValue(v)

    def _color_changed(self) -> None:
        mode = self.color_box.currentData()
        for view in self.views:
            idx = view.color_box.findData(mode)
            if idx >= 0:
                view.color_box.setCurrentIndex(idx)

    def set_pair(self, left: Reconstruction | None, right: Reconstruction | None) -> None:
        """Show two reconstructions of the same photos (None clears)."""
        self.result = None
        if left is None or right is None:
            self.pair = None
            self.left.set_reconstruction(None)
            self.right.set_reconstruction(None)
            self.left.set_title("")
            self.right.set_title("")
            self.summary.setText("Press Compare to run dense and Lite3R attention on the same photos.")
            return
        self.pair = (left, right)
        self._transform, self._alignment = cmp.align_pair(left, right)
        self.left.set_title(run_label(left))
        self.right.set_title(run_label(right))
        self.left.set_reconstruction(left, reset_camera=True)
        self.right.set_reconstruction(right, transform=self._transform, reset_camera=False)
        self.summary.setText("Measuring distances between the two clouds…")
        self._remeasure()

    def _schedule(self, *_args) -> None:
        if self.pair is not None:
            self._timer.start()

    def _remeasure(self) -> None:
        if self.pair is None or self.left.cloud is None or self.right.cloud is None:
            return
        if self._worker is not None:  # one at a time; the latest request wins
            self._pending = True
            return
        left_xyz, right_xyz = self.left.cloud.xyz, self.right.cloud.xyz
        scale = cmp.scene_scale(self.pair[0], left_xyz)
        worker = _measure(
            left_xyz, right_xyz, scale, self.threshold.value() / 100.0, self._transform, self._alignment
        )
        n_left, n_right = len(left_xyz), len(right_xyz)
        worker.returned.connect(lambda res: self._measured(res, n_left, n_right))
        worker.errored.connect(
            lambda exc: self.summary.setText(f"Could not compare the clouds: {html.escape(str(exc))}")
        )
        worker.finished.connect(self._measure_finished)
        self._worker = worker
        worker.start()

    def _measure_finished(self) -> None:
        self._worker = None
        if self._pending:
            self._pending = False
            self._remeasure()

    def _measured(self, res: cmp.CompareResult, n_left: int, n_right: int) -> None:
        if self.left.cloud is None or self.right.cloud is None:
            return
        if self.left.cloud.n != n_left or self.right.cloud.n != n_right:
            self._pending = True  # the clouds changed meanwhile; measure again
            return
        self.result = res
        clim = (0.0, float(2 * res.threshold))
        self.left.set_distances(res.left_dist, clim)
        self.right.set_distances(res.right_dist, clim)
        self._color_changed()
        s = res.summary()
        self.summary.setText(
            f"<b>Distance between the clouds</b> (after Sim(3) alignment by {html.escape(res.alignment)}, "
            f"scale {res.transform.scale:.3g}): mean <b>{s['mean_rel']:.2f}%</b>, median "
            f"<b>{s['median_rel']:.2f}%</b> of the median scene depth; <b>{s['within']:.1f}%</b> of points "
            f"within {s['threshold_rel']:.1f}% (left {s['left_within']:.1f}%, right {s['right_within']:.1f}%). "
            f"Colour scale: 0 (blue) … {2 * s['threshold_rel']:.1f}% (red)."
        )
        self.compared.emit(res)

    def screenshot(self) -> np.ndarray:
        """Both views side by side (each from its own framebuffer), uint8 [H, W, 3]."""
        a, b = self.left.screenshot(), self.right.screenshot()
        h = min(a.shape[0], b.shape[0])
        return np.concatenate([a[:h], b[:h]], axis=1)

    def close_plotters(self) -> None:
        self._timer.stop()
        self.left.close_plotter()
        self.right.close_plotter()
