"""The desktop app window (pytest-qt under Xvfb): launch, drop photos, run, 3D view, pick, compare,
export, cancel, close during a run. The inference worker runs the torch-free fake backend here; the
real engine is exercised in test_app_engine.py."""

# ruff: noqa: F811 (pytest fixtures imported from app_fixtures are redefined as test arguments)
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from app_fixtures import (  # noqa: F401
    SLOW_BACKEND,
    app_prefs,
    good_photos,
    make_main_window,
    non_blank,
    photo_folder,
)
from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent

pytestmark = [
    pytest.mark.gl,
    pytest.mark.filterwarnings("ignore:Function.*QDragEnterEvent:DeprecationWarning"),
]


def drop(win, paths):
    md = QMimeData()
    md.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    enter = QDragEnterEvent(
        QPoint(10, 10), Qt.DropAction.CopyAction, md, Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier
    )
    win.dragEnterEvent(enter)
    assert enter.isAccepted()
    ev = QDropEvent(
        QPointF(10, 10), Qt.DropAction.CopyAction, md, Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier
    )
    win.dropEvent(ev)


def process_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.split(")")[-1].split()[0] != "Z"  # a zombie has exited


def wait_caps(qtbot, win):
    qtbot.waitUntil(lambda: win.capabilities is not None, timeout=20000)


def run_and_wait(qtbot, win, timeout=30000):
    with qtbot.waitSignal(win.run_finished, timeout=timeout) as blocker:
        win.run()
    return blocker.args[0]


def test_launch_warms_the_worker_and_disables_what_the_device_cannot_run(qtbot, make_main_window):
    win = make_main_window()
    assert win.windowTitle().startswith("Lite3R")
    assert [win.tabs.tabText(i) for i in range(win.tabs.count())] == ["3D view", "Compare", "Training"]
    wait_caps(qtbot, win)
    assert win.client.is_ready and not win.errors
    panel = win.model_panel
    fp8 = panel.precision.model().item(2)
    assert not fp8.isEnabled() and "FP8" in fp8.toolTip()
    assert panel.precision.model().item(1).isEnabled()
    assert "cpu (fake)" in win.device_label.text()
    # VGGT-1B has no weights in the fake worker: the panel says so, and Run refuses with the fix
    panel.backbone.setCurrentIndex(panel.backbone.findData({"backbone": "vggt-1b", "adapter": None}))
    assert "no weights" in panel.weights_label.text()
    # the training tab knows it too: a teacher without weights is marked and refused with the fix
    tab = win.training_tab
    tab.teacher.setCurrentIndex(tab.teacher.findData("vggt-1b"))
    assert tab.teacher.currentText().endswith("weights missing")
    errors = []
    tab.error.connect(lambda title, msg, details: errors.append(msg))
    assert not tab.start() and "Preferences" in errors[-1]


def test_drop_folder_lists_photos_flags_bad_ones_and_remembers_it(
    qtbot, make_main_window, photo_folder, app_prefs
):
    win = make_main_window()
    drop(win, [photo_folder])
    panel = win.image_panel
    assert panel.list.count() == 5  # notes.txt is not a photo
    qtbot.waitUntil(lambda: panel.pending_thumbnails == 0, timeout=10000)
    bad = {p.name: p.problem for p in win.project.photos if not p.ok}
    assert set(bad) == {"fake.jpg", "broken.jpg"}  # broken.jpg: found by the full decode off the GUI thread
    assert "truncated" in bad["broken.jpg"]
    assert "5 photos" in panel.header.text() and "2 cannot be used" in panel.header.text()
    item = panel.list.item([p.name for p in win.project.photos].index("fake.jpg"))
    assert item.text().startswith("⚠") and "Cannot be used" in item.toolTip()
    assert app_prefs.recent_folders()[0] == str(photo_folder)
    assert app_prefs.qs.value("recent/folders", "", type=str).startswith("[")  # typed INI storage
    assert len(win.project.usable_photos) == 3


def test_run_shows_cloud_cameras_and_a_real_image(qtbot, make_main_window, good_photos):
    win = make_main_window()
    win.open_paths([str(good_photos)])
    partials = []
    win.project.result_changed.connect(lambda r, partial: partials.append(partial))
    assert run_and_wait(qtbot, win) == "done"
    assert True in partials and partials[-1] is False  # cameras first, then the full result
    recon = win.project.current
    view = win.scene_view
    xyz = recon.point_cloud(conf_percentile=view.conf_percentile)[0]
    assert view.cloud.n == len(xyz) == view.drawn_points
    assert "4 cameras" in view.info.text()
    assert non_blank(view.screenshot())
    # the view was placed on the cameras-only partial result: its depth range must still cover the cloud
    cam = view.plotter.camera
    direction = np.subtract(cam.focal_point, cam.position)
    depth = (view.cloud.xyz - np.asarray(cam.position)) @ (direction / np.linalg.norm(direction))
    near, far = cam.clipping_range
    assert near <= np.percentile(depth[depth > 0], 1) and far >= np.percentile(depth[depth > 0], 99)
    assert "peak" in win.last_run_label.text()
    # confidence slider: fewer points, same view
    view.set_conf_percentile(80)
    assert view.cloud.n == len(recon.point_cloud(conf_percentile=80)[0]) < len(xyz)
    # click on camera 3's frustum: its photo is shown and selected
    view.set_conf_percentile(0)
    view.fit_view()
    qtbot.wait(50)
    x, y = view.frustum_center_widget(3)
    qtbot.mouseClick(view.plotter, Qt.MouseButton.LeftButton, pos=QPoint(x, y))
    qtbot.waitUntil(lambda: getattr(win, "selected_view", None) is not None, timeout=5000)
    assert view.highlight == win.selected_view
    qtbot.waitUntil(lambda: getattr(win, "preview_path", None) is not None, timeout=5000)
    assert win.preview_path.name == f"view{win.selected_view}.png"
    assert win.image_panel.list.currentRow() == win.selected_view
    # and the other way round: a photo clicked in the list highlights its camera
    win.image_panel.list.setCurrentRow(0)
    assert view.highlight == 0
    qtbot.waitUntil(lambda: win.preview_path.name == "view0.png", timeout=5000)
    # the same run again comes from the cache
    assert run_and_wait(qtbot, win) == "done"
    assert any("cached" in line for line in win.log_panel.lines)


def test_level_of_detail_while_dragging(qtbot, make_main_window, good_photos):
    win = make_main_window()
    view = win.scene_view
    view.lod_budget = 1000
    win.open_paths([str(good_photos)])
    run_and_wait(qtbot, win)
    full = view.drawn_points
    assert full > 1000
    view._start_interaction()
    assert view.lod_active and view.drawn_points == 1000
    view._end_interaction()
    assert not view.lod_active and view.drawn_points == full
    # a real drag through Qt: the interactor style fires Start/EndInteractionEvent
    seen = []
    view.plotter.iren.style.AddObserver("StartInteractionEvent", lambda *_: seen.append(view.drawn_points))
    qtbot.mousePress(view.plotter, Qt.MouseButton.LeftButton, pos=QPoint(200, 200))
    qtbot.mouseMove(view.plotter, QPoint(240, 210))
    qtbot.mouseRelease(view.plotter, Qt.MouseButton.LeftButton, pos=QPoint(240, 210))
    assert seen and not view.lod_active


def test_compare_mode_links_cameras_and_colours_by_distance(qtbot, make_main_window, good_photos):
    win = make_main_window()
    win.open_paths([str(good_photos)])
    cv = win.compare_view
    cv.left.lod_budget = cv.right.lod_budget = 500
    with qtbot.waitSignal(cv.compared, timeout=30000):
        win.run_compare()
    left, right = cv.pair
    assert left.attention.startswith("dense") and right.attention.startswith("sla")
    assert (
        "dense" in cv.left.title.text() and "sla" in cv.right.title.text() and "peak" in cv.left.title.text()
    )
    assert cv.left.plotter.camera is cv.right.plotter.camera
    assert cv.left.plotter.renderer.GetActiveCamera() is cv.right.plotter.renderer.GetActiveCamera()
    cam = cv.left.plotter.camera
    cam.azimuth = 25
    cv.left.camera_moved.emit()
    assert cv.left.plotter.camera.position == cv.right.plotter.camera.position
    res = cv.result
    assert len(res.left_dist) == cv.left.cloud.n and len(res.right_dist) == cv.right.cloud.n
    s = res.summary()
    assert 0 < s["median_rel"] < 10 and 0 < s["within"] <= 100
    assert "within" in cv.summary.text() and res.alignment == "pixels"
    assert cv.left.color_mode == "distance"
    # dragging one view redraws both: both swap in their level-of-detail subset, and back
    cv.left._start_interaction()
    assert cv.left.lod_active and cv.right.lod_active and cv.right.drawn_points == 500
    cv.left._end_interaction()
    assert not cv.right.lod_active and cv.right.drawn_points == cv.right.cloud.n
    img = cv.screenshot()
    assert non_blank(img) and img.shape[1] > cv.left.screenshot().shape[1]


def test_export_from_the_window(qtbot, make_main_window, good_photos, tmp_path):
    from lite3r.io.ply import read_ply

    win = make_main_window()
    win.open_paths([str(good_photos)])
    run_and_wait(qtbot, win)
    view = win.scene_view
    view.set_conf_percentile(40)
    out = tmp_path / "scene.ply"
    with qtbot.waitSignal(win.export_finished, timeout=10000) as b:
        assert win.export_ply(out, overwrite=False)
    assert b.args[0] == out
    expected = win.project.current.point_cloud(conf_percentile=40)[0]
    assert read_ply(out).vertex_count == len(expected)
    # exists: refused unless confirmed, and the file is untouched
    before = out.read_bytes()
    with qtbot.waitSignal(win.export_finished, timeout=10000) as b:
        win.export_ply(out, overwrite=False)
    assert isinstance(b.args[0], Exception) and "already exists" in win.errors[-1]
    assert out.read_bytes() == before
    shot = tmp_path / "view.png"
    with qtbot.waitSignal(win.export_finished, timeout=10000):
        win.save_screenshot(shot, overwrite=False)
    from PIL import Image

    assert non_blank(np.asarray(Image.open(shot)))
    with qtbot.waitSignal(win.export_finished, timeout=10000):
        win.export_colmap(tmp_path / "colmap", overwrite=False)
    assert (tmp_path / "colmap" / "images.txt").exists()


def test_errors_are_dialogs_not_crashes(qtbot, make_main_window, good_photos, app_prefs):
    win = make_main_window()
    win.run()  # no photos yet
    assert "No photos" in win.errors[-1]
    win.open_paths([str(good_photos)])
    # a photo that disappears after it was listed: the worker reports it, the window stays usable
    (good_photos / "view2.png").unlink()
    assert run_and_wait(qtbot, win) == "error"
    assert "view2.png" in win.errors[-1] and "Fix:" in win.errors[-1]
    assert win.model_panel.run_button.isEnabled()
    # missing weights: refused before anything runs, with the fix
    wait_caps(qtbot, win)
    panel = win.model_panel
    panel.backbone.setCurrentIndex(panel.backbone.findData({"backbone": "da3-large", "adapter": None}))
    win.run()
    assert "Weights missing" in win.errors[-1] and "Preferences" in win.errors[-1]
    assert not win.busy


def test_cancel_during_a_run_and_close_during_a_run(qtbot, make_main_window, good_photos):
    win = make_main_window(backend=SLOW_BACKEND)
    win.open_paths([str(good_photos)])
    win.run()
    qtbot.waitUntil(lambda: win.progress.value() > 0, timeout=20000)
    pid = win.client.job.proc.processId()
    assert win.busy and win.model_panel.cancel_button.isEnabled()
    with qtbot.waitSignal(win.run_finished, timeout=5000) as b:
        win.model_panel.cancel_button.click()
    assert b.args[0] == "cancelled" and not win.busy and win.model_panel.run_button.isEnabled()
    qtbot.waitUntil(lambda: not process_alive(pid), timeout=5000)
    # a fresh worker comes up for the next run; closing the window mid-run stops it cleanly
    win.run()
    qtbot.waitUntil(lambda: win.progress.value() > 0, timeout=20000)
    pid = win.client.job.proc.processId()
    win.close()
    assert not process_alive(pid)
    assert any("the window was closed" in line for line in win.log_panel.lines)


def test_a_crashing_worker_is_an_error_not_a_dead_window(qtbot, make_main_window, good_photos):
    win = make_main_window(backend="app_fake_backend:CrashingFakeBackend")
    win.open_paths([str(good_photos)])
    assert run_and_wait(qtbot, win) == "error"
    assert "killed" in win.errors[-1] and "out of memory" in win.errors[-1]
    assert not win.busy and win.model_panel.run_button.isEnabled()
    win.capabilities = None
    win.request_capabilities()  # a fresh worker serves the next request
    wait_caps(qtbot, win)


def test_a_precision_the_device_cannot_run_is_refused_with_the_reason(qtbot, make_main_window, app_prefs):
    app_prefs.set_run_settings(app_prefs.run_settings().with_(precision="fp8"))  # e.g. from a GPU machine
    win = make_main_window()
    wait_caps(qtbot, win)
    assert win.project.settings.precision == "fp32"
    assert any("fp8 cannot run here" in line and "FP8" in line for line in win.log_panel.lines)
    panel = win.model_panel
    assert not panel.heads.isEnabled()  # fp32: the heads run in float32 too
    panel.precision.setCurrentIndex(1)  # bf16 is allowed here
    assert win.project.settings.precision == "bf16" and app_prefs.run_settings().precision == "bf16"
    assert panel.heads.isEnabled()
    panel.heads.setCurrentIndex(panel.heads.findData("bf16"))
    assert win.project.settings.heads_precision == "bf16"
    assert app_prefs.run_settings().heads_precision == "bf16"
    panel.precision.setCurrentIndex(0)  # back to fp32: the heads choice no longer applies
    assert win.project.settings.heads_precision == "fp32" and not panel.heads.isEnabled()
