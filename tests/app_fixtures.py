"""Fixtures for the desktop-app tests (pytest-qt under Xvfb; pytest-xvfb starts the display).

``make_main_window`` builds the real window with settings redirected to a temporary INI file and the
inference worker running the torch-free ``app_fake_backend`` (unless a test asks for the real engine),
and at teardown shuts everything down (workers stopped, QtInteractors closed), like napari's
``make_napari_viewer``. Import the fixtures into a test module with
``from app_fixtures import make_main_window, app_prefs  # noqa: F401``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from conftest import TESTS

FAKE_BACKEND = "app_fake_backend:FakeBackend"
SLOW_BACKEND = "app_fake_backend:SlowFakeBackend"


def worker_env() -> dict[str, str]:
    """Environment of worker processes: the tests folder importable (fake backend), one CPU thread."""
    path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def require_gl() -> None:
    from PySide6.QtGui import QGuiApplication

    if QGuiApplication.platformName() == "offscreen":
        pytest.skip("the 3D view needs a real OpenGL context (run under Xvfb, not QT_QPA_PLATFORM=offscreen)")


def non_blank(img: np.ndarray) -> bool:
    """Not a flat image: some contrast, and some but not all pixels differ from the corner colour."""
    img = np.asarray(img)[..., :3].astype(int)
    diff = (np.abs(img - img[0, 0]).sum(-1) > 30).mean()
    return bool(img.std() > 5 and 0.005 < diff < 0.995)


@pytest.fixture
def app_prefs(qapp, tmp_path):
    from PySide6.QtCore import QSettings

    from lite3r.app.settings import Preferences

    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(tmp_path / "settings"))
    return Preferences()


@pytest.fixture
def make_main_window(qtbot, app_prefs):
    from lite3r.app.main_window import MainWindow

    require_gl()
    windows = []

    def make(**kwargs):
        kwargs.setdefault("backend", FAKE_BACKEND)
        kwargs.setdefault("worker_env", worker_env())
        kwargs.setdefault("show_dialogs", False)
        win = MainWindow(prefs=app_prefs, **kwargs)
        qtbot.addWidget(win)
        win.resize(1280, 860)
        win.show()
        qtbot.waitExposed(win)
        windows.append(win)
        return win

    yield make
    for win in windows:
        win.shutdown()


@pytest.fixture
def photo_folder(tmp_path) -> Path:
    """Three small good photos, one truncated JPEG, one text file named .jpg, and notes.txt."""
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        arr = (rng.random((60, 80, 3)) * 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"img{i + 1}.png")
    Image.fromarray((rng.random((120, 160, 3)) * 255).astype(np.uint8)).save(
        folder / "broken.jpg", quality=90
    )
    data = (folder / "broken.jpg").read_bytes()
    (folder / "broken.jpg").write_bytes(data[: len(data) // 2])  # valid header, truncated data
    (folder / "fake.jpg").write_text("this is not a photo")
    (folder / "notes.txt").write_text("not an image either, and not even named like one")
    return folder


@pytest.fixture
def good_photos(tmp_path) -> Path:
    from PIL import Image

    folder = tmp_path / "good"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(4):
        Image.fromarray((rng.random((60, 80, 3)) * 255).astype(np.uint8)).save(folder / f"view{i}.png")
    return folder
