"""The desktop app on the real engine (torch in the worker process only): the reduced parity VGGT
reconstructs the test photos through the GUI (dense and Lite3R SLA), and `lite3r-app --smoke-test`
runs end to end; the training tab starts and cancels a distillation job (stand-in components)."""

# ruff: noqa: F811 (pytest fixtures imported from app_fixtures are redefined as test arguments)
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from app_fixtures import app_prefs, make_main_window, non_blank, worker_env  # noqa: F401
from conftest import PARITY_DIR, PHOTOS_DIR, TESTS

pytestmark = pytest.mark.gl
DEV = {"parity-vggt": str(PARITY_DIR)}


def test_parity_vggt_through_the_gui(qtbot, make_main_window):
    win = make_main_window(backend=None, dev_models=DEV)  # the real engine backend
    win.open_paths([str(PHOTOS_DIR)])
    panel = win.model_panel
    panel.backbone.setCurrentIndex(panel.backbone.findData({"backbone": "parity-vggt", "adapter": None}))
    assert win.project.settings.backbone == "parity-vggt"
    qtbot.waitUntil(lambda: win.capabilities is not None, timeout=60000)
    assert not panel.precision.model().item(2).isEnabled()  # fp8 on a CPU: disabled, with the reason
    assert "FP8" in panel.precision.model().item(2).toolTip()
    with qtbot.waitSignal(win.compare_shown, timeout=120000):
        win.run_compare()
    left, right = win.compare_view.pair
    assert left.num_views == right.num_views == 3
    assert left.attention.startswith("dense") and right.attention.lower().startswith("sla")
    qtbot.waitUntil(lambda: win.compare_view.result is not None, timeout=30000)
    assert non_blank(win.compare_view.screenshot())
    # the dense result is cached: Run shows it in the 3D view without recomputing
    panel.attention.setCurrentIndex(panel.attention.findData("dense"))
    with qtbot.waitSignal(win.run_finished, timeout=60000) as b:
        win.run()
    assert b.args[0] == "done"
    view = win.scene_view
    assert (
        view.cloud.n
        == len(left.point_cloud(conf_percentile=view.conf_percentile)[0])
        == view.drawn_points
        > 0
    )
    assert non_blank(view.screenshot())


def test_smoke_test_command(tmp_path):
    env = {**os.environ, **worker_env(), "QT_API": "pyside6"}
    env["XDG_CONFIG_HOME"] = str(tmp_path)  # QSettings writes here, not into the user's config
    cmd = [
        sys.executable,
        "-m",
        "lite3r.app.main",
        str(PHOTOS_DIR),
        "--backbone",
        "parity-vggt",
        "--dev-model",
        f"parity-vggt={PARITY_DIR}",
        "--smoke-test",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["ok"] and report["points"] > 1000


def test_demo_reports_missing_assets(tmp_path):
    from lite3r.app.main import demo_assets

    _photos, _tiny, problem = demo_assets()
    if not problem:
        pytest.skip("the demo assets are bundled in this checkout")
    assert "demo" in problem and "Open a folder" in problem
    env = {**os.environ, "QT_API": "pyside6", "XDG_CONFIG_HOME": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-m", "lite3r.app.main", "--demo", "--smoke-test"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 2 and "not bundled" in out.stdout


def test_training_tab_starts_cancels_and_resumes_a_job(qtbot, app_prefs, tmp_path):
    from lite3r.app.training_tab import TrainingTab

    def standin(args):  # the real worker entry point with the toy models of the distillation tests
        return sys.executable, [str(TESTS / "distill_standin_worker.py"), *args]

    extra = {
        "device": "cpu",
        "steps": 6,
        "precision": {"autocast": "fp32"},
        "data": {"image_size": 8, "views": [2, 3]},
        "eval": {"every": 0, "scenes": 2, "views": 2},
        "checkpoint": {"every": 2},
        "model": {"random_init": True},
    }
    # a toy step takes ~1.5 s on 2 busy cores: allow it to finish and checkpoint before the kill
    tab = TrainingTab(
        app_prefs, worker_command=standin, runs_dir=tmp_path, extra_config=extra, cancel_grace_ms=15000
    )
    qtbot.addWidget(tab)
    tab.output.setText(str(tmp_path / "run"))
    tab.steps.setValue(6)
    assert tab.selected_sites() == ["global"]
    assert tab.start()
    assert not tab.start_button.isEnabled() and tab.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: any(e.get("event") == "step" for e in tab.events), timeout=60000)
    assert tab.plot.losses and tab.progress.value() > 0
    with qtbot.waitSignal(tab.job_finished, timeout=20000) as b:
        tab.cancel()
    code, last = b.args
    assert code == 3 and last["event"] == "cancelled"
    assert "Resume" in tab.status.text() and tab.resume_button.isEnabled()
    # resume to the end: the adapter appears
    with qtbot.waitSignal(tab.adapter_ready, timeout=120000) as b:
        assert tab.start(resume=True)
    assert b.args[0].endswith("adapter.safetensors") and os.path.exists(b.args[0])


def _parity_adapter(path):
    """A Lite3R adapter for the parity VGGT, as a distillation run would write it (random proj_lin)."""
    import json

    import torch

    from lite3r.adapters import base_hash_of, save_adapter
    from lite3r.convert import Lite3RConfig, convert
    from lite3r.models import reference

    config = json.loads((PARITY_DIR / "vggt_small_config.json").read_text())
    model, _ = reference.load(config, PARITY_DIR / "vggt_small_state_dict.safetensors")
    base = base_hash_of(model)
    conversion = {"sites": ["global"], "keep_ratio": 0.25}
    convert(model, Lite3RConfig(**conversion))
    torch.manual_seed(0)
    tensors = {k: torch.randn_like(v) * 1e-3 for k, v in model.state_dict().items() if "proj_lin" in k}
    return save_adapter(path, tensors, conversion=conversion, base_model="parity-vggt", base_hash=base)


def test_trained_adapter_in_the_model_list_runs(qtbot, make_main_window, app_prefs, tmp_path):
    from lite3r.app.adapter_files import read_adapter_info

    path = _parity_adapter(tmp_path / "run" / "adapter.safetensors")
    info = read_adapter_info(path)  # no torch needed for this
    assert info.base_model == "parity-vggt" and info.keep_ratio == 0.25
    app_prefs.add_adapter(str(path), "parity-vggt")
    win = make_main_window(backend=None, dev_models=DEV)
    panel = win.model_panel
    idx = panel.backbone.findData({"backbone": "parity-vggt", "adapter": str(path)})
    assert idx >= 0 and "adapter" in panel.backbone.itemText(idx)
    panel.backbone.setCurrentIndex(idx)
    s = win.project.settings
    assert s.adapter == str(path) and s.attention == "sla" and s.kept_fraction == 0.25
    assert not panel.attention.isEnabled() and not panel.kept.isEnabled()
    win.open_paths([str(PHOTOS_DIR)])
    with qtbot.waitSignal(win.run_finished, timeout=120000) as b:
        win.run()
    assert b.args[0] == "done", win.errors
    assert "adapter run/adapter.safetensors" in win.project.current.attention
