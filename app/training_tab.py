"""The Training tab: distil a Lite3R adapter in a worker process, watch it learn, use the result.

The job runs ``python -m lite3r.training.worker --config run.yaml [--resume]`` (``lite3r-app --worker
train …`` when frozen) and speaks the worker protocol of HELPERS.md on stdout. This tab writes the
run config from a few key settings (teacher, data, sites, kept fraction, steps, learning rate,
distillation weight) — deliberately thin: the schema is :class:`lite3r.training.config.DistillRunConfig`
and everything not shown keeps its default there. Cancel asks the worker to checkpoint and stop
(SIGTERM, plus ``cancel`` on stdin), killing it after 3 s; Resume continues from that checkpoint.
When a run finishes, its adapter is added to the model list.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QPointF, Qt, Signal
from PySide6.QtGui import QColor, QPainter, QPainterPath, QPen
from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from .jobs import CANCEL_GRACE_MS, JsonLinesProcess
from .project import BACKBONES
from .protocol import worker_command
from .settings import Preferences

SITES = {  # attention sites per family (lite3r.models.sites); the cross-view site is Lite3R's default
    "vggt": ["global", "frame", "dino", "camera"],
    "da3": ["cross_view", "per_view", "camera_encoder"],
}
DEFAULT_SITE = {"vggt": "global", "da3": "cross_view"}
FAMILY = {"lite3r-tiny": "vggt", "vggt-1b": "vggt", "da3-large": "da3"}
DATA_SOURCES = {
    "synthetic": "synthetic scenes (built in)",
    "blendedmvs": "BlendedMVS folder…",
    "dtu": "DTU folder…",
}
RESUME_FILE = "resume.pt"  # lite3r.training.distill.RESUME_FILE (not imported: it pulls in torch)

WorkerCommand = Callable[[list[str]], tuple[str, list[str]]]


class LossPlot(QWidget):
    """A small live plot: training loss per step (log scale) and evaluation points."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setMinimumHeight(180)
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.evals: list[tuple[int, str, float]] = []
        self.total = 1

    def clear(self, total: int = 1) -> None:
        self.steps, self.losses, self.evals, self.total = [], [], [], max(1, total)
        self.update()

    def add(self, step: int, loss: float) -> None:
        if math.isfinite(loss) and loss > 0:
            self.steps.append(step)
            self.losses.append(loss)
            self.update()

    def add_eval(self, step: int, name: str, value: float) -> None:
        self.evals.append((step, name, value))
        self.update()

    def paintEvent(self, _event) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        r = self.rect().adjusted(48, 10, -10, -24)
        p.fillRect(self.rect(), self.palette().base())
        p.setPen(QPen(self.palette().mid().color()))
        p.drawRect(r)
        p.drawText(4, r.top() + 12, "loss")
        p.drawText(r.right() - 40, r.bottom() + 18, "step")
        if not self.losses:
            p.drawText(r, Qt.AlignmentFlag.AlignCenter, "the loss curve appears here while training runs")
            p.end()
            return
        logs = [math.log10(v) for v in self.losses]
        lo, hi = min(logs), max(logs)
        if hi - lo < 1e-6:
            lo, hi = lo - 0.5, hi + 0.5
        total = max(self.total, self.steps[-1])

        def pt(step, lv):
            x = r.left() + r.width() * step / total
            y = r.bottom() - r.height() * (lv - lo) / (hi - lo)
            return QPointF(x, y)

        path = QPainterPath(pt(self.steps[0], logs[0]))
        for s, lv in zip(self.steps[1:], logs[1:]):
            path.lineTo(pt(s, lv))
        p.setPen(QPen(QColor("#58a6ff"), 1.6))
        p.drawPath(path)
        p.setPen(QPen(self.palette().text().color()))
        p.drawText(4, r.top() + 28, f"{10**hi:.3g}")
        p.drawText(4, r.bottom(), f"{10**lo:.3g}")
        p.drawText(r.left(), r.bottom() + 18, "0")
        p.drawText(r.left() + r.width() // 2, r.bottom() + 18, str(total // 2))
        p.setPen(QPen(QColor("#d29922"), 1))
        for step, name, value in self.evals:
            x = r.left() + r.width() * step / total
            p.drawLine(QPointF(x, r.top()), QPointF(x, r.bottom()))
            p.drawText(QPointF(x + 3, r.top() + 12), f"{name} {value:.3g}")
        p.end()


class TrainingTab(QWidget):
    adapter_ready = Signal(str, str)  # adapter path, backbone
    message = Signal(str, str)  # level, text (for the log panel)
    error = Signal(str, str, str)  # title, message, details
    job_finished = Signal(int, dict)  # exit code, last event

    def __init__(
        self,
        prefs: Preferences,
        parent: QWidget | None = None,
        worker_command: WorkerCommand | None = None,
        runs_dir: str | Path | None = None,
        extra_config: dict | None = None,
        cancel_grace_ms: int = CANCEL_GRACE_MS,
    ) -> None:
        super().__init__(parent)
        self.cancel_grace_ms = cancel_grace_ms  # SIGTERM → finish the step, checkpoint, exit; then kill
        self.prefs = prefs
        self.extra_config = dict(extra_config or {})  # merged over the form's values (advanced settings)
        self.make_command = worker_command or (lambda args: _default_command(args))
        self.runs_dir = Path(runs_dir) if runs_dir else Path.home() / "lite3r-runs"
        self.job: JsonLinesProcess | None = None
        self.events: list[dict] = []
        self.config_path: Path | None = None
        self._caps: dict | None = None
        self._t0 = 0.0

        self.teacher = QComboBox()
        for name, label in BACKBONES.items():
            self.teacher.addItem(f"{label} (teacher, frozen)", name)
        self.teacher.currentIndexChanged.connect(self._teacher_changed)
        self.data = QComboBox()
        for key, label in DATA_SOURCES.items():
            self.data.addItem(label, key)
        self.data_root = QLineEdit()
        self.data_root.setPlaceholderText("dataset folder (BlendedMVS or DTU)")
        self.data_browse = QPushButton("Browse…")
        self.data_browse.clicked.connect(self._browse_data)
        self.data.currentIndexChanged.connect(self._data_changed)
        self.sites = QListWidget()
        self.sites.setMaximumHeight(90)
        self.sites.setToolTip(
            "Attention sites converted to sparse-linear attention (their proj_lin is trained)"
        )
        self.kept = QDoubleSpinBox()
        self.kept.setRange(1, 100)
        self.kept.setDecimals(0)
        self.kept.setValue(10)
        self.kept.setSuffix(" % kept")
        self.steps = QSpinBox()
        self.steps.setRange(1, 1_000_000)
        self.steps.setValue(200)
        self.lr = QDoubleSpinBox()
        self.lr.setDecimals(6)
        self.lr.setRange(1e-6, 1.0)
        self.lr.setSingleStep(1e-4)
        self.lr.setValue(1e-3)
        self.distill = QDoubleSpinBox()
        self.distill.setDecimals(3)
        self.distill.setRange(0.0, 10.0)
        self.distill.setSingleStep(0.01)
        self.distill.setValue(0.1)
        self.distill.setToolTip(
            "Weight γ of the attention-distillation loss at the start (it decays to γ/10)"
        )
        self.output = QLineEdit()
        self.output.setPlaceholderText(str(self.runs_dir / "<new run>"))
        out_browse = QPushButton("Browse…")
        out_browse.clicked.connect(self._browse_output)
        self.output.textChanged.connect(self._update_buttons)

        self.start_button = QPushButton("Start training")
        self.start_button.clicked.connect(lambda: self.start())
        self.resume_button = QPushButton("Resume")
        self.resume_button.setToolTip("Continue the run in the output folder from its last checkpoint")
        self.resume_button.clicked.connect(lambda: self.start(resume=True))
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Save a checkpoint and stop (resume later)")
        self.cancel_button.clicked.connect(self.cancel)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.status = QLabel(
            "Distil a Lite3R adapter: only the sparse-linear projections train; the backbone stays frozen."
        )
        self.status.setWordWrap(True)
        self.plot = LossPlot()

        form = QFormLayout()
        form.addRow("Teacher", self.teacher)
        data_row = QHBoxLayout()
        data_row.addWidget(self.data)
        data_row.addWidget(self.data_root, 1)
        data_row.addWidget(self.data_browse)
        form.addRow("Data", data_row)
        form.addRow("Sites", self.sites)
        form.addRow("Kept fraction", self.kept)
        form.addRow("Steps", self.steps)
        form.addRow("Learning rate", self.lr)
        form.addRow("Distillation weight", self.distill)
        out_row = QHBoxLayout()
        out_row.addWidget(self.output, 1)
        out_row.addWidget(out_browse)
        form.addRow("Output folder", out_row)
        buttons = QHBoxLayout()
        for b in (self.start_button, self.resume_button, self.cancel_button):
            buttons.addWidget(b)
        buttons.addStretch(1)
        left = QWidget()
        ll = QVBoxLayout(left)
        ll.addLayout(form)
        ll.addLayout(buttons)
        ll.addStretch(1)
        right = QWidget()
        rl = QVBoxLayout(right)
        rl.addWidget(self.plot, 1)
        rl.addWidget(self.progress)
        rl.addWidget(self.status)
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(left)
        split.addWidget(right)
        split.setStretchFactor(1, 1)
        lay = QVBoxLayout(self)
        lay.addWidget(split)
        self._teacher_changed()
        self._data_changed()
        self._update_buttons()

    # ---- form ----------------------------------------------------------------------------------------

    def set_capabilities(self, caps: dict) -> None:
        """Mark teachers whose weights are not on this computer (the worker knows where they go)."""
        self._caps = caps
        models = caps.get("models", {})
        for i in range(self.teacher.count()):
            name = self.teacher.itemData(i)
            info = models.get(name, {})
            label = f"{BACKBONES.get(name, name)} (teacher, frozen)"
            missing = not info.get("weights_found", True) and not self.prefs.weights_path(name)
            self.teacher.setItemText(i, label + (" — weights missing" if missing else ""))
            self.teacher.setItemData(i, info.get("hint") if missing else "", Qt.ItemDataRole.ToolTipRole)

    def teacher_problem(self) -> str | None:
        """Why the chosen teacher cannot be loaded (missing weights), or None."""
        name = self.teacher.currentData()
        if self.prefs.weights_path(name) or self.extra_config.get("model", {}).get("random_init"):
            return None
        info = (self._caps or {}).get("models", {}).get(name)
        if info is not None and not info.get("weights_found", True):
            return f"no weights for the teacher {BACKBONES.get(name, name)} ({info.get('hint')})"
        return None

    def _teacher_changed(self) -> None:
        fam = FAMILY.get(self.teacher.currentData(), "vggt")
        self.sites.clear()
        for site in SITES[fam]:
            item = QListWidgetItem(site)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(
                Qt.CheckState.Checked if site == DEFAULT_SITE[fam] else Qt.CheckState.Unchecked
            )
            self.sites.addItem(item)

    def _data_changed(self) -> None:
        folder = self.data.currentData() != "synthetic"
        self.data_root.setEnabled(folder)
        self.data_browse.setEnabled(folder)

    def _browse_data(self) -> None:
        d = QFileDialog.getExistingDirectory(
            self, "Dataset folder", self.data_root.text() or str(Path.home())
        )
        if d:
            self.data_root.setText(d)

    def _browse_output(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Run output folder", str(self.runs_dir))
        if d:
            self.output.setText(d)

    def selected_sites(self) -> list[str]:
        return [
            self.sites.item(i).text()
            for i in range(self.sites.count())
            if self.sites.item(i).checkState() == Qt.CheckState.Checked
        ]

    def output_dir(self) -> Path:
        text = self.output.text().strip()
        if text:
            return Path(text)
        return self.runs_dir / f"{self.teacher.currentData()}-{time.strftime('%Y%m%d-%H%M%S')}"

    def can_resume(self) -> bool:
        text = self.output.text().strip()
        return bool(text) and (Path(text) / RESUME_FILE).is_file() and (Path(text) / "config.yaml").is_file()

    def _update_buttons(self) -> None:
        running = self.running
        self.start_button.setEnabled(not running)
        self.resume_button.setEnabled(not running and self.can_resume())
        self.cancel_button.setEnabled(running)

    @property
    def running(self) -> bool:
        return self.job is not None and self.job.is_running()

    # ---- config (thin: DistillRunConfig owns the schema and its checks) ------------------------------

    def config_dict(self, out: Path) -> dict:
        teacher = self.teacher.currentData()
        gamma = float(self.distill.value())
        d = {
            "name": out.name,
            "output_dir": str(out),
            "steps": int(self.steps.value()),
            "model": {"name": teacher, "weights": self.prefs.weights_path(teacher)},
            "conversion": {"sites": self.selected_sites(), "keep_ratio": round(self.kept.value() / 100.0, 4)},
            "distill": {"enabled": gamma > 0, "gamma_max": gamma, "gamma_min": gamma / 10.0},
            "optim": {"lr": float(self.lr.value())},
            "data": {"source": self.data.currentData()},
        }
        if self.data.currentData() != "synthetic":
            d["data"]["root"] = self.data_root.text().strip() or None
        return _merge(d, self.extra_config)

    def write_config(self, out: Path) -> Path:
        """Validate with the training schema and write ``config.yaml`` atomically."""
        from lite3r.io.atomic import atomic_write

        try:
            from lite3r.training.config import DistillRunConfig
        except ImportError as exc:  # a build without the training package
            raise RuntimeError(f"training is not available in this build ({exc})") from exc
        cfg = DistillRunConfig.from_dict(self.config_dict(out), source="the Training tab")
        path = out / "config.yaml"
        with atomic_write(path, "w", encoding="utf-8") as f:
            f.write(cfg.to_yaml())
        return path

    # ---- the job -------------------------------------------------------------------------------------

    def start(self, resume: bool = False) -> bool:
        if self.running:
            return False
        if not self.selected_sites():
            self.error.emit("Cannot start training", "Choose at least one attention site to convert.", "")
            return False
        problem = self.teacher_problem()
        if problem:
            self.error.emit("Cannot start training", problem, "")
            return False
        try:
            if resume:
                out = Path(self.output.text().strip())
                path = out / "config.yaml"
            else:
                out = self.output_dir()
                if (out / RESUME_FILE).exists():
                    self.error.emit(
                        "Cannot start training",
                        f"{out} already holds a run; press Resume to continue it, or choose another "
                        "output folder.",
                        "",
                    )
                    return False
                path = self.write_config(out)
                self.output.setText(str(out))
        except Exception as exc:
            msg = getattr(exc, "message", None) or str(exc)
            hint = getattr(exc, "hint", None)
            self.error.emit("Cannot start training", msg + (f"\n\nFix: {hint}" if hint else ""), "")
            return False
        self.config_path = path
        args = ["--config", str(path)] + (["--resume"] if resume else [])
        program, full = self.make_command(args)
        job = JsonLinesProcess(program, full, parent=self)
        job.message.connect(self._on_event)
        job.text.connect(lambda t: self.message.emit("worker", t))
        job.finished.connect(self._on_finished)
        self.job = job
        self.events = []
        self._t0 = time.perf_counter()
        if not resume:
            self.plot.clear(self.steps.value())
        self.progress.setValue(0)
        self.status.setText("starting the training worker…")
        self.message.emit(
            "info", f"training: {'resuming' if resume else 'starting'} {out} ({program} {' '.join(full)})"
        )
        job.start()
        self._update_buttons()
        return True

    def cancel(self) -> None:
        if self.running:
            self.status.setText("cancelling: saving a checkpoint…")
            self.job.cancel(grace_ms=self.cancel_grace_ms)
            self._update_buttons()

    def _on_event(self, ev: dict) -> None:
        self.events.append(ev)
        kind = ev.get("event")
        if kind == "started":
            self.status.setText("training started")
        elif kind == "step":
            step, total = int(ev.get("step", 0)), int(ev.get("total", 1) or 1)
            self.plot.total = total
            loss = float(ev.get("loss", float("nan")))
            self.plot.add(step, loss)
            self.progress.setValue(int(1000 * step / total))
            eta = ev.get("eta_s")
            sps = ev.get("steps_per_s")
            parts = [f"step {step}/{total}", f"loss {loss:.4g}"]
            if ev.get("lr") is not None:
                parts.append(f"lr {float(ev['lr']):.2g}")
            if sps:
                parts.append(f"{float(sps):.2f} steps/s")
            if eta is not None:
                parts.append(f"ETA {float(eta):.0f} s")
            self.status.setText(" · ".join(parts))
        elif kind == "eval":
            metrics = ev.get("metrics") or {}
            for name, value in list(metrics.items())[:1]:
                if isinstance(value, (int, float)):
                    self.plot.add_eval(int(ev.get("step", 0)), name, float(value))
            self.message.emit("info", f"training eval at step {ev.get('step')}: {metrics}")
        elif kind == "checkpoint":
            self.message.emit("info", f"training checkpoint at step {ev.get('step')}: {ev.get('path')}")
        elif kind == "error":
            self.error.emit(
                "Training failed",
                ev.get("message", "unknown error") + (f"\n\nFix: {ev['hint']}" if ev.get("hint") else ""),
                ev.get("traceback", ""),
            )

    def _on_finished(self, code: int, last: dict) -> None:
        kind = last.get("event")
        if kind == "finished" and code == 0:
            adapter = last.get("adapter")
            self.progress.setValue(1000)
            self.status.setText(f"finished: adapter saved to {adapter}")
            self.message.emit(
                "info", f"training finished in {time.perf_counter() - self._t0:.0f} s: {adapter}"
            )
            if adapter:
                self.adapter_ready.emit(str(adapter), self.teacher.currentData())
        elif kind == "cancelled" or code == 3:
            ckpt = last.get("checkpoint")
            self.status.setText(
                f"cancelled at step {last.get('step', '?')}"
                + (f"; checkpoint {ckpt}" if ckpt else "")
                + " — press Resume to continue"
            )
            self.message.emit("warning", f"training cancelled (exit {code})")
        elif kind != "error":
            details = self.job.stderr_text() if self.job is not None else ""
            reason = (
                "was stopped"
                if self.job is not None and self.job.cancel_requested
                else f"exited with code {code}"
            )
            self.status.setText(f"the training worker {reason}")
            if not (self.job is not None and self.job.cancel_requested):
                self.error.emit(
                    "Training stopped", f"The training worker {reason} without a result.", details
                )
        else:
            self.status.setText("failed: see the log")
        self.job_finished.emit(code, last)
        self._update_buttons()

    def shutdown(self) -> None:
        """At application exit: ask the job to checkpoint and stop, wait up to the grace period."""
        if self.running:
            self.job.cancel()
            if not self.job.wait(3500):
                self.job.kill()
                self.job.wait(1000)


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _default_command(args: list[str]) -> tuple[str, list[str]]:
    return worker_command("train", args)
