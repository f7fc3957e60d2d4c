"""The log panel: the app's and the workers' messages, newest last, with errors in colour.

Python ``logging`` records from any thread reach it through a Qt signal (queued to the GUI thread).
"""

from __future__ import annotations

import html
import logging
import time

from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QTextCursor
from PySide6.QtWidgets import QPlainTextEdit, QWidget

MAX_BLOCKS = 5000
COLORS = {"error": "#e5534b", "warning": "#d29922", "info": None, "debug": "#768390", "worker": "#8b949e"}


class _Bridge(QObject):
    record = Signal(str, str)


class QtLogHandler(logging.Handler):
    """A logging handler that forwards formatted records to a Qt signal (thread-safe)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.bridge = _Bridge()
        self.setFormatter(logging.Formatter("%(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level = (
                "error"
                if record.levelno >= logging.ERROR
                else "warning"
                if record.levelno >= logging.WARNING
                else "info"
            )
            self.bridge.record.emit(level, self.format(record))
        except Exception:  # logging must never raise into the caller
            pass


class LogPanel(QPlainTextEdit):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setReadOnly(True)
        self.setMaximumBlockCount(MAX_BLOCKS)
        self.setPlaceholderText("Messages from the app and the model worker appear here.")
        self.handler = QtLogHandler()
        self.handler.bridge.record.connect(self.append_message)
        self.lines: list[str] = []  # plain text, for tests and "copy log"

    def append_message(self, level: str, text: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        self.lines.append(f"{stamp} {level}: {text}")
        self.lines = self.lines[-MAX_BLOCKS:]
        color = COLORS.get(level)
        body = html.escape(text).replace("\n", "<br>")
        span = f'<span style="color:{color}">{body}</span>' if color else body
        self.appendHtml(f'<span style="color:#768390">{stamp}</span> {span}')
        self.moveCursor(QTextCursor.MoveOperation.End)

    def info(self, text: str) -> None:
        self.append_message("info", text)

    def warning(self, text: str) -> None:
        self.append_message("warning", text)

    def error(self, text: str) -> None:
        self.append_message("error", text)

    def worker(self, text: str) -> None:
        self.append_message("worker", text)
