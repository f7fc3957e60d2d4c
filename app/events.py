"""A tiny Qt-free signal, so the app's models can be observed without importing Qt.

The models (``Project``) live outside Qt, napari-style: they can be tested without a display, and the
Qt views subscribe to them. Callbacks run synchronously on the caller's thread; models are only ever
changed from the GUI thread, so views may touch widgets in their callbacks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Signal:
    """A list of callbacks: ``connect(fn)``, ``disconnect(fn)``, ``emit(*args)``."""

    def __init__(self) -> None:
        self._slots: list[Callable[..., Any]] = []

    def connect(self, slot: Callable[..., Any]) -> None:
        if slot not in self._slots:
            self._slots.append(slot)

    def disconnect(self, slot: Callable[..., Any]) -> None:
        if slot in self._slots:
            self._slots.remove(slot)

    def emit(self, *args: Any) -> None:
        for slot in list(self._slots):
            slot(*args)
