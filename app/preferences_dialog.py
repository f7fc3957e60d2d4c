"""Preferences: weights files per backbone, trained adapters, display budgets, worker threads."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLineEdit,
    QListWidget,
    QMessageBox,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from .project import BACKBONES
from .settings import Preferences


class PreferencesDialog(QDialog):
    def __init__(self, prefs: Preferences, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Preferences")
        self.prefs = prefs
        self.weights: dict[str, QLineEdit] = {}

        wbox = QGroupBox("Model weights (leave empty for the default download location)")
        wform = QFormLayout(wbox)
        for name, label in BACKBONES.items():
            edit = QLineEdit(prefs.weights_path(name) or "")
            edit.setPlaceholderText("default location")
            browse = QPushButton("Browse…")
            browse.clicked.connect(lambda _=False, e=edit, label=label: self._browse(e, label))
            row = QHBoxLayout()
            row.addWidget(edit, 1)
            row.addWidget(browse)
            wform.addRow(label, row)
            self.weights[name] = edit

        abox = QGroupBox("Trained Lite3R adapters")
        alay = QVBoxLayout(abox)
        self.adapters = QListWidget()
        for a in prefs.adapters():
            self.adapters.addItem(a["path"])
        self._added: dict[str, str] = {}  # path → base model, for adapters added in this dialog
        add = QPushButton("Add adapter file…")
        add.clicked.connect(self._add_adapter)
        remove = QPushButton("Remove from the list")
        remove.clicked.connect(
            lambda: [self.adapters.takeItem(self.adapters.row(i)) for i in self.adapters.selectedItems()]
        )
        alay.addWidget(self.adapters)
        row = QHBoxLayout()
        row.addWidget(add)
        row.addWidget(remove)
        row.addStretch(1)
        alay.addLayout(row)

        vbox = QGroupBox("Display and performance")
        vform = QFormLayout(vbox)
        self.display_budget = QSpinBox()
        self.display_budget.setRange(100_000, 50_000_000)
        self.display_budget.setSingleStep(500_000)
        self.display_budget.setValue(prefs.display_budget())
        self.display_budget.setToolTip("Most points drawn at rest (a random subset above it)")
        self.lod_budget = QSpinBox()
        self.lod_budget.setRange(10_000, 5_000_000)
        self.lod_budget.setSingleStep(50_000)
        self.lod_budget.setValue(prefs.lod_budget())
        self.lod_budget.setToolTip("Most points drawn while the camera moves (keeps dragging smooth)")
        self.threads = QSpinBox()
        self.threads.setRange(0, 256)
        self.threads.setValue(prefs.worker_threads())
        self.threads.setSpecialValueText("automatic")
        self.threads.setToolTip("CPU threads of the model worker (applies when it restarts)")
        vform.addRow("Points at rest", self.display_budget)
        vform.addRow("Points while moving", self.lod_budget)
        vform.addRow("Worker CPU threads", self.threads)

        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        lay = QVBoxLayout(self)
        for w in (wbox, abox, vbox, buttons):
            lay.addWidget(w)

    def _browse(self, edit: QLineEdit, label: str) -> None:
        start = edit.text() or str(Path.home())
        path, _ = QFileDialog.getOpenFileName(
            self, f"Weights for {label}", start, "Weights (*.safetensors *.pt *.pth *.bin);;All files (*)"
        )
        if path:
            edit.setText(path)

    def _add_adapter(self) -> None:
        from .adapter_files import read_adapter_info

        path, _ = QFileDialog.getOpenFileName(
            self, "Lite3R adapter", str(Path.home()), "Adapters (*.safetensors)"
        )
        if not path:
            return
        try:
            info = read_adapter_info(path)
        except Exception as exc:  # CheckpointError with the reason and the fix
            QMessageBox.warning(self, "Not an adapter", str(exc))
            return
        if info.base_model not in BACKBONES:
            QMessageBox.warning(
                self,
                "Unknown base model",
                f"{path} was trained for {info.base_model!r}, which this version of Lite3R does not offer.",
            )
            return
        self._added[path] = info.base_model
        self.adapters.addItem(path)

    def accept(self) -> None:
        for name, edit in self.weights.items():
            self.prefs.set_weights_path(name, edit.text().strip() or None)
        keep = {self.adapters.item(i).text() for i in range(self.adapters.count())}
        for a in self.prefs.adapters():
            if a["path"] not in keep:
                self.prefs.remove_adapter(a["path"])
        for path, base in self._added.items():
            if path in keep:
                self.prefs.add_adapter(path, base)
        self.prefs.set_display_budget(self.display_budget.value())
        self.prefs.set_lod_budget(self.lod_budget.value())
        self.prefs.set_worker_threads(self.threads.value())
        self.prefs.sync()
        super().accept()
