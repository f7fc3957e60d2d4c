"""The photo panel: thumbnails of the project's photos, their count, and the bad ones flagged.

Thumbnails are decoded on a worker thread (superqt ``thread_worker`` generator): each decoded photo
is yielded to the GUI thread, which turns it into a pixmap. A full decode also finds files that are
broken past a valid header; those are flagged in the :class:`Project` (and so in this list) with the
engine's reason and fix. A new photo set aborts the previous decode.
"""

from __future__ import annotations

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QBrush, QColor, QIcon, QImage, QPainter, QPixmap
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMenu,
    QPushButton,
    QToolButton,
    QVBoxLayout,
    QWidget,
)
from superqt.utils import thread_worker

from .photos import load_thumbnail
from .project import Project

THUMB = 96
PROBLEM_COLOR = QColor("#e5534b")


@thread_worker
def _decode_thumbnails(paths, size):
    for i, path in enumerate(paths):
        arr, problem = load_thumbnail(path, size)
        yield i, arr, problem


def _pixmap_from_array(arr) -> QPixmap:
    h, w, _ = arr.shape
    img = QImage(arr.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()
    return QPixmap.fromImage(img)


def _placeholder(problem: bool) -> QIcon:
    pm = QPixmap(THUMB, int(THUMB * 0.75))
    pm.fill(QColor("#3a3d45"))
    if problem:
        p = QPainter(pm)
        p.setPen(PROBLEM_COLOR)
        f = p.font()
        f.setPointSize(28)
        f.setBold(True)
        p.setFont(f)
        p.drawText(pm.rect(), Qt.AlignmentFlag.AlignCenter, "!")
        p.end()
    return QIcon(pm)


class ImagePanel(QWidget):
    open_folder_requested = Signal()
    open_files_requested = Signal()
    recent_folder_requested = Signal(str)
    photo_selected = Signal(int)
    thumbnails_done = Signal()

    def __init__(self, project: Project, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.project = project
        self._worker = None
        self._generation = 0
        self.pending_thumbnails = 0

        self.header = QLabel()
        self.header.setTextFormat(Qt.TextFormat.RichText)
        self.open_button = QPushButton("Open folder…")
        self.open_button.setToolTip(
            "Choose a folder of photos (or drop photos or folders anywhere on the window)"
        )
        self.open_button.clicked.connect(self.open_folder_requested)
        self.recent_button = QToolButton()
        self.recent_button.setText("Recent")
        self.recent_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.recent_menu = QMenu(self)
        self.recent_button.setMenu(self.recent_menu)

        self.list = QListWidget()
        self.list.setViewMode(QListWidget.ViewMode.IconMode)
        self.list.setIconSize(QSize(THUMB, THUMB))
        self.list.setGridSize(QSize(THUMB + 16, THUMB + 34))
        self.list.setResizeMode(QListWidget.ResizeMode.Adjust)
        self.list.setMovement(QListWidget.Movement.Static)
        self.list.setUniformItemSizes(True)
        self.list.setWordWrap(True)
        self.list.setDragDropMode(QAbstractItemView.DragDropMode.NoDragDrop)
        self.list.setAcceptDrops(False)  # drops go to the main window (folders and files anywhere)
        self.list.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.list.currentRowChanged.connect(lambda row: row >= 0 and self.photo_selected.emit(row))

        self.empty_hint = QLabel(
            "Drop a folder of photos (or photos) anywhere on this window,\nor use Open folder…."
        )
        self.empty_hint.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty_hint.setWordWrap(True)
        self.empty_hint.setStyleSheet("color: palette(mid); padding: 16px;")

        top = QHBoxLayout()
        top.addWidget(self.header, 1)
        top.addWidget(self.recent_button)
        top.addWidget(self.open_button)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        lay.addLayout(top)
        lay.addWidget(self.empty_hint)
        lay.addWidget(self.list, 1)

        project.photos_changed.connect(self.rebuild)
        project.photo_changed.connect(self.update_item)
        self.rebuild()

    # ---- recent folders ------------------------------------------------------------------------------

    def set_recent_folders(self, folders: list[str]) -> None:
        self.recent_menu.clear()
        for f in folders:
            act = self.recent_menu.addAction(f)
            act.triggered.connect(lambda _=False, f=f: self.recent_folder_requested.emit(f))
        if not folders:
            self.recent_menu.addAction("(none yet)").setEnabled(False)
        self.recent_button.setEnabled(bool(folders))

    # ---- items ---------------------------------------------------------------------------------------

    def rebuild(self) -> None:
        if self._worker is not None:
            self._worker.quit()
            self._worker = None
        self._generation += 1
        self.list.clear()
        photos = self.project.photos
        for entry in photos:
            item = QListWidgetItem(_placeholder(not entry.ok), entry.name)
            self.list.addItem(item)
        for i in range(len(photos)):
            self.update_item(i)
        self._update_header()
        self.empty_hint.setVisible(not photos)
        self.list.setVisible(bool(photos))
        self.pending_thumbnails = len(photos)
        if photos:
            gen = self._generation
            worker = _decode_thumbnails([p.path for p in photos], THUMB)
            worker.yielded.connect(lambda res, gen=gen: self._thumbnail_ready(gen, *res))
            worker.finished.connect(lambda gen=gen: self._thumbnails_finished(gen))
            self._worker = worker
            worker.start()
        else:
            self.thumbnails_done.emit()

    def _thumbnail_ready(self, gen: int, index: int, arr, problem) -> None:
        if gen != self._generation or index >= self.list.count():
            return
        self.pending_thumbnails -= 1
        if arr is not None:
            self.list.item(index).setIcon(QIcon(_pixmap_from_array(arr)))
        elif problem is not None:
            self.project.flag_photo(index, problem.problem, problem.hint)

    def _thumbnails_finished(self, gen: int) -> None:
        if gen == self._generation:
            self._worker = None
            self.pending_thumbnails = 0
            self.thumbnails_done.emit()

    def update_item(self, index: int) -> None:
        entry = self.project.photos[index]
        item = self.list.item(index)
        if item is None:
            return
        if entry.ok:
            size = f"{entry.width}×{entry.height}" if entry.width else ""
            item.setToolTip(f"{entry.path}\n{size}")
            item.setText(entry.name)
            item.setForeground(QBrush())
        else:
            item.setToolTip(f"{entry.path}\nCannot be used: {entry.message}")
            item.setText(f"⚠ {entry.name}")
            item.setForeground(QBrush(PROBLEM_COLOR))
            item.setIcon(_placeholder(True))
        self._update_header()

    def _update_header(self) -> None:
        n = len(self.project.photos)
        bad = self.project.problem_count
        if n == 0:
            self.header.setText("<b>Photos</b>")
            return
        text = f"<b>{n} photo{'s' if n != 1 else ''}</b>"
        if bad:
            text += f' · <span style="color:{PROBLEM_COLOR.name()}">{bad} cannot be used</span>'
        self.header.setText(text)

    def select(self, index: int | None) -> None:
        if index is None:
            self.list.clearSelection()
            return
        self.list.blockSignals(True)
        self.list.setCurrentRow(index)
        self.list.blockSignals(False)
        self.list.scrollToItem(self.list.item(index))

    def stop(self) -> None:
        if self._worker is not None:
            self._worker.quit()
            self._worker = None
