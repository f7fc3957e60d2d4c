"""The model panel: backbone, attention path, precision, and Run / Compare / Cancel.

What the device can run is not decided here: the inference worker (which imports torch) answers a
``capabilities`` request, and each precision the device cannot run is disabled with the worker's
reason as its tooltip. Until that answer arrives only fp32 is offered ("checking the device…").
Missing weights are shown under the backbone with the fix (Preferences → weights).
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from .project import BACKBONES, PRECISIONS, RunSettings

PRECISION_LABELS = {"fp32": "fp32 (reference)", "bf16": "bf16", "fp8": "fp8 (Hopper)"}
WARN = "#d29922"


class ModelPanel(QWidget):
    settings_changed = Signal(object)  # RunSettings
    run_clicked = Signal()
    compare_clicked = Signal()
    cancel_clicked = Signal()
    preferences_requested = Signal()
    notice = Signal(str)  # something the user asked for cannot be done here (shown in the log)

    def __init__(
        self,
        settings: RunSettings,
        parent: QWidget | None = None,
        extra_backbones: dict[str, str] | None = None,
    ) -> None:
        super().__init__(parent)
        self._settings = settings
        self._extra = dict(extra_backbones or {})
        self._wanted_precision = settings.precision
        self._caps: dict | None = None
        self._weights_paths: dict[str, str | None] = {}
        self._adapters: list[dict] = []
        self._updating = False

        self.backbone = QComboBox()
        self.backbone.setToolTip("The reconstruction network")
        self.weights_label = QLabel()
        self.weights_label.setWordWrap(True)
        self.weights_label.setTextFormat(Qt.TextFormat.RichText)
        self.weights_label.linkActivated.connect(lambda _link: self.preferences_requested.emit())

        self.attention = QComboBox()
        self.attention.addItem("dense (exact)", "dense")
        self.attention.addItem("Lite3R sparse-linear (SLA)", "sla")
        self.attention.setToolTip(
            "Cross-view attention: exact dense attention, or Lite3R's sparse-linear attention"
        )
        self.kept = QDoubleSpinBox()
        self.kept.setRange(1.0, 100.0)
        self.kept.setDecimals(0)
        self.kept.setSingleStep(5.0)
        self.kept.setSuffix(" % kept")
        self.kept.setToolTip(
            "SLA: fraction of key blocks attended exactly (the rest go through linear attention)"
        )

        self.precision = QComboBox()
        for p in PRECISIONS:
            self.precision.addItem(PRECISION_LABELS[p], p)
        self.precision.setToolTip("Number format of the trunk's linear layers and attention")
        self.heads = QComboBox()
        self.heads.addItem("heads fp32 (reference)", "fp32")
        self.heads.addItem("heads bf16 (faster)", "bf16")
        self.heads.setToolTip(
            "Depth/point heads in bf16 with a bf16 or fp8 trunk: about 20 ms less per 32 frames on an "
            "H100 and less memory; the camera head stays fp32"
        )

        self.run_button = QPushButton("Run")
        self.run_button.setDefault(True)
        self.run_button.setToolTip("Reconstruct the photos with these settings (Ctrl+R)")
        self.compare_button = QPushButton("Compare")
        self.compare_button.setToolTip(
            "Run dense and Lite3R attention on the same photos and show them side by side"
        )
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.run_button.clicked.connect(self.run_clicked)
        self.compare_button.clicked.connect(self.compare_clicked)
        self.cancel_button.clicked.connect(self.cancel_clicked)

        form = QFormLayout()
        form.addRow("Backbone", self.backbone)
        form.addRow("", self.weights_label)
        att_row = QHBoxLayout()
        att_row.addWidget(self.attention, 1)
        att_row.addWidget(self.kept)
        form.addRow("Attention", att_row)
        prec_row = QHBoxLayout()
        prec_row.addWidget(self.precision, 1)
        prec_row.addWidget(self.heads)
        form.addRow("Precision", prec_row)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.compare_button)
        buttons.addWidget(self.cancel_button)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        lay.addLayout(form)
        lay.addLayout(buttons)

        self.backbone.currentIndexChanged.connect(self._changed)
        self.attention.currentIndexChanged.connect(self._changed)
        self.kept.valueChanged.connect(self._changed)
        self.precision.currentIndexChanged.connect(self._changed)
        self.heads.currentIndexChanged.connect(self._changed)
        self._fill_backbones()
        self._updating = True  # nothing is announced while the panel builds itself
        self.set_capabilities(None)
        self._updating = False
        self.set_settings(settings)

    # ---- options -------------------------------------------------------------------------------------

    def _fill_backbones(self) -> None:
        self._updating = True
        self.backbone.clear()
        for name, label in {**BACKBONES, **self._extra}.items():
            self.backbone.addItem(label, {"backbone": name, "adapter": None})
        for a in self._adapters:
            label = f"{BACKBONES.get(a['backbone'], a['backbone'])} + Lite3R adapter “{a['name']}”"
            self.backbone.addItem(label, {"backbone": a["backbone"], "adapter": a["path"]})
            self.backbone.setItemData(self.backbone.count() - 1, a["path"], Qt.ItemDataRole.ToolTipRole)
        self._updating = False

    def set_adapters(self, adapters: list[dict]) -> None:
        self._adapters = list(adapters)
        self._fill_backbones()
        self.set_settings(self._settings)

    def set_weights_paths(self, paths: dict[str, str | None]) -> None:
        self._weights_paths = dict(paths)
        self._update_weights_label()
        self._emit()

    def set_capabilities(self, caps: dict | None, failure: str | None = None) -> None:
        """Enable what the device can run; ``failure`` when the worker could not say."""
        self._caps = caps
        model = self.precision.model()
        for i, p in enumerate(PRECISIONS):
            item = model.item(i)
            if caps is None:
                ok = p == "fp32"
                reason = None if ok else (f"unknown: {failure}" if failure else "checking the device…")
            else:
                info = caps.get("precision", {}).get(p, {"ok": False, "reason": "not reported by the worker"})
                ok, reason = bool(info.get("ok")), info.get("reason")
            item.setEnabled(ok)
            item.setToolTip(reason or "")
        # the precision the user asked for (settings, command line), once the device is known
        wanted = self._wanted_precision
        idx = PRECISIONS.index(wanted)
        was_updating, self._updating = self._updating, True
        self.precision.setCurrentIndex(idx if model.item(idx).isEnabled() else 0)
        self._updating = was_updating
        if not model.item(idx).isEnabled() and caps is not None and wanted != "fp32":
            self.notice.emit(f"{wanted} cannot run here ({model.item(idx).toolTip()}); using fp32")
        self._sync_enabled()
        self._update_weights_label()
        if not self._updating:
            self._emit()

    def weights_problem(self, backbone: str | None = None) -> str | None:
        """Why the selected backbone cannot run (missing weights), or None."""
        backbone = backbone or self.current_settings().backbone
        path = self._weights_paths.get(backbone)
        name = BACKBONES.get(backbone, backbone)
        if path:
            return None if Path(path).exists() else f"the weights file for {name} does not exist: {path}"
        if self._caps is None:
            return None
        info = self._caps.get("models", {}).get(backbone)
        if info is None or info.get("weights_found"):
            return None
        hint = info.get("hint") or "set the weights path in Preferences"
        return f"no weights for {name} on this computer ({hint})"

    def _update_weights_label(self) -> None:
        s = self.current_settings()
        problem = self.weights_problem(s.backbone)
        if problem:
            self.weights_label.setText(
                f'<span style="color:{WARN}">⚠ {problem}.</span> <a href="prefs">Set weights…</a>'
            )
        else:
            path = self._weights_paths.get(s.backbone)
            if path is None and self._caps is not None:
                path = self._caps.get("models", {}).get(s.backbone, {}).get("weights_path")
            self.weights_label.setText(
                f'<span style="color:palette(mid)">weights: {path}</span>' if path else ""
            )

    # ---- settings ------------------------------------------------------------------------------------

    def current_settings(self) -> RunSettings:
        data = self.backbone.currentData() or {"backbone": "lite3r-tiny", "adapter": None}
        attention = self.attention.currentData()
        if data["adapter"]:
            attention = "sla"
        return RunSettings(
            backbone=data["backbone"],
            adapter=data["adapter"],
            attention=attention,
            kept_fraction=round(self.kept.value() / 100.0, 4),
            precision=self.precision.currentData(),
            weights=self._weights_paths.get(data["backbone"]),
            device=self._settings.device,
            # fp32 runs everything in float32: the heads choice applies to bf16 / fp8 only
            heads_precision="fp32" if self.precision.currentData() == "fp32" else self.heads.currentData(),
        )

    def set_settings(self, s: RunSettings) -> None:
        self._updating = True
        for i in range(self.backbone.count()):
            d = self.backbone.itemData(i)
            if d["backbone"] == s.backbone and d["adapter"] == s.adapter:
                self.backbone.setCurrentIndex(i)
                break
        self.attention.setCurrentIndex(max(0, self.attention.findData(s.attention)))
        self.kept.setValue(s.kept_fraction * 100.0)
        self.heads.setCurrentIndex(max(0, self.heads.findData(s.heads_precision)))
        self._wanted_precision = s.precision
        idx = self.precision.findData(s.precision)
        if idx >= 0 and self.precision.model().item(idx).isEnabled():
            self.precision.setCurrentIndex(idx)
        self._updating = False
        self._settings = s
        self._sync_enabled()
        self._update_weights_label()

    def _sync_enabled(self) -> None:
        adapter = (self.backbone.currentData() or {}).get("adapter")
        self.attention.setEnabled(not adapter)
        if adapter:
            # the adapter fixes the conversion it was trained with: show it, do not offer to change it
            self.attention.blockSignals(True)
            self.attention.setCurrentIndex(self.attention.findData("sla"))
            self.attention.blockSignals(False)
            keep = next((a.get("keep") for a in self._adapters if a["path"] == adapter), None)
            if keep:
                self.kept.blockSignals(True)
                self.kept.setValue(100.0 * float(keep))
                self.kept.blockSignals(False)
            self.attention.setToolTip("This Lite3R adapter was trained for sparse-linear attention")
        self.kept.setEnabled(self.attention.currentData() == "sla" and not adapter)
        self.heads.setEnabled(self.precision.currentData() != "fp32")

    def _changed(self) -> None:
        if self._updating:
            return
        self._wanted_precision = self.precision.currentData()
        self._sync_enabled()
        self._update_weights_label()
        self._emit()

    def _emit(self) -> None:
        s = self.current_settings()
        if s != self._settings:
            self._settings = s
            self.settings_changed.emit(s)

    def set_busy(self, busy: bool) -> None:
        self.run_button.setEnabled(not busy)
        self.compare_button.setEnabled(not busy)
        self.cancel_button.setEnabled(busy)
