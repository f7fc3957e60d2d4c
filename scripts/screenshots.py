#!/usr/bin/env python
"""README screenshots: open the app on the demo scene and save docs/images/app.png and compare.png.

    python scripts/screenshots.py                       # the bundled demo with lite3r-tiny
    python scripts/screenshots.py --photos DIR --backbone parity-vggt \\
        --dev-model parity-vggt=tests/data/parity        # before the demo assets exist (development)

Runs under a virtual X display (Xvfb, via PyVirtualDisplay) when there is no DISPLAY. The images are
grabs of the real window: the 3D view after a reconstruction (one camera picked, its photo shown) and
the Compare tab (dense vs Lite3R attention, coloured by distance).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(REPO / "docs" / "images"), help="output folder")
    p.add_argument("--photos", help="photo folder (default: the bundled demo)")
    p.add_argument("--backbone", default="lite3r-tiny")
    p.add_argument("--precision", default=None, help="fp32 / bf16 / fp8 (default: the app's choice)")
    p.add_argument("--dev-model", action="append", default=[], metavar="NAME=DIR")
    p.add_argument("--size", default="1600x1000", help="window size WxH")
    p.add_argument("--timeout", type=float, default=900, help="seconds to wait for each run")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    display = None
    if not os.environ.get("DISPLAY") and sys.platform.startswith("linux"):
        from pyvirtualdisplay import Display

        w, h = (int(v) for v in args.size.split("x"))
        display = Display(visible=False, size=(w + 200, h + 200), color_depth=24)
        display.start()
    rc = take(args)
    if display is not None:
        display.stop()
    return rc


def take(args) -> int:
    os.environ.setdefault("QT_API", "pyside6")
    from PySide6.QtCore import QSettings, QTimer
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([])
    import tempfile

    # a throw-away settings file: screenshots never depend on (or change) the user's preferences
    settings_dir = tempfile.mkdtemp(prefix="lite3r-shots-")
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, settings_dir)

    from lite3r.app.main import demo_assets
    from lite3r.app.main_window import MainWindow, widget_image
    from lite3r.app.settings import Preferences

    if args.photos:
        photos = [args.photos]
    else:
        demo, _tiny, problem = demo_assets()
        if problem:
            print(
                f"error: {problem}\n(use --photos DIR --dev-model … for development screenshots)",
                file=sys.stderr,
            )
            return 2
        photos = [str(p) for p in demo]
    dev = dict(item.split("=", 1) for item in args.dev_model)
    win = MainWindow(prefs=Preferences(), dev_models=dev, show_dialogs=False)
    w, h = (int(v) for v in args.size.split("x"))
    win.resize(w, h)
    win.show()
    changes = {"backbone": args.backbone}
    if args.precision:
        changes["precision"] = args.precision
    win.model_panel.set_settings(win.project.settings.with_(**changes))
    win.project.set_settings(win.model_panel.current_settings())
    win.open_paths(photos)

    def wait(predicate, timeout):
        t0 = time.time()
        while not predicate():
            app.processEvents()
            time.sleep(0.02)
            if time.time() - t0 > timeout:
                raise TimeoutError("timed out waiting for the app")

    def settle(seconds=0.6):
        t0 = time.time()
        while time.time() - t0 < seconds:
            app.processEvents()
            time.sleep(0.02)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from lite3r.app.export import save_png

    status = {}
    win.run_finished.connect(lambda s: status.setdefault("run", s))
    win.capabilities is None and wait(lambda: win.capabilities is not None, 120)
    QTimer.singleShot(0, win.run)
    wait(lambda: "run" in status, args.timeout)
    if status["run"] != "done":
        print(f"error: the reconstruction ended with {status['run']}: {win.errors[-1:]}", file=sys.stderr)
        win.shutdown()
        return 1
    win.select_view(min(1, win.project.current.num_views - 1))
    settle(1.0)
    save_png(out / "app.png", widget_image(win), overwrite=True)
    print(f"wrote {out / 'app.png'}")

    compared = []
    win.compare_view.compared.connect(lambda r: compared.append(r))
    QTimer.singleShot(0, win.run_compare)
    wait(lambda: compared or len(win.errors) > 0, args.timeout * 2)
    if not compared:
        print(f"error: compare failed: {win.errors[-1:]}", file=sys.stderr)
        win.shutdown()
        return 1
    settle(1.0)
    save_png(out / "compare.png", widget_image(win), overwrite=True)
    print(f"wrote {out / 'compare.png'}")
    win.shutdown()
    win.deleteLater()
    app.processEvents()
    app.shutdown()  # drop the X connection before the virtual display goes away
    return 0


if __name__ == "__main__":
    sys.exit(main())
