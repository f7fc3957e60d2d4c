"""``lite3r-app``: the desktop application (and, with ``--worker``, its worker processes).

    lite3r-app [PHOTOS_OR_FOLDERS …] [--run] [--backbone NAME] [--precision P] [--heads-precision H]
               [--attention A]
    lite3r-app --demo [--smoke-test]
    lite3r-app --worker inference|train …      (what the app starts for itself; see protocol.py)

``--worker`` is checked before anything else, so a frozen (PyInstaller) app can relaunch itself as its
own worker without importing Qt. ``--smoke-test`` reconstructs, checks that the 3D view shows points
and a non-blank image, prints one JSON line and exits (0 = ok), for packaging checks.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

SMOKE_TIMEOUT_S = 600


def run_worker(argv: list[str]) -> int:
    kind = argv[0] if argv and not argv[0].startswith("-") else "inference"
    rest = argv[1:] if argv and not argv[0].startswith("-") else argv
    if kind == "inference":
        from lite3r.app.worker import main as worker_main

        return worker_main(rest)
    if kind == "train":
        from lite3r.training.worker import main as train_main

        return train_main(rest)
    print(f"lite3r-app --worker: unknown worker {kind!r} (inference or train)", file=sys.stderr)
    return 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lite3r-app", description="Lite3R desktop app: photos in, 3D out.")
    p.add_argument("paths", nargs="*", help="photo folders or photos to open")
    p.add_argument(
        "--demo", action="store_true", help="open the bundled demo scene and reconstruct it with lite3r-tiny"
    )
    p.add_argument("--run", action="store_true", help="reconstruct the opened photos right away")
    p.add_argument(
        "--backbone", help="backbone for this session (lite3r-tiny, vggt-1b, da3-large, or a --dev-model)"
    )
    p.add_argument("--precision", choices=("fp32", "bf16", "fp8"))
    p.add_argument(
        "--heads-precision",
        choices=("fp32", "bf16"),
        help="depth/point heads (bf16 needs precision bf16/fp8)",
    )
    p.add_argument("--attention", choices=("dense", "sla"))
    p.add_argument(
        "--dev-model",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="offer a reduced parity model (e.g. parity-vggt=tests/data/parity) for development",
    )
    p.add_argument("--backend", help=argparse.SUPPRESS)  # worker backend module:attr (tests)
    p.add_argument(
        "--smoke-test",
        action="store_true",
        help="reconstruct, check the 3D view, print a JSON summary and exit (0 = ok)",
    )
    return p


def demo_assets() -> tuple[list[Path], Path, str | None]:
    """(demo photos, lite3r-tiny folder, problem or None) of the bundled demo."""
    from lite3r.app.photos import list_images
    from lite3r.assets import asset_path

    demo = Path(str(asset_path("demo")))
    tiny = Path(str(asset_path("lite3r-tiny")))
    photos = list_images(demo) if demo.is_dir() else []
    missing = []
    if not photos:
        missing.append(f"the demo photos ({demo})")
    if not (tiny / "model.safetensors").is_file():
        missing.append(f"the lite3r-tiny weights ({tiny / 'model.safetensors'})")
    problem = None
    if missing:
        problem = (
            "The demo is not bundled with this installation: " + " and ".join(missing) + " are missing. "
            "Open a folder of your own photos instead (File > Open folder…), or install a release "
            "build that includes the demo assets."
        )
    return photos, tiny, problem


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "--worker":
        return run_worker(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.heads_precision == "bf16" and args.precision == "fp32":
        parser.error("--heads-precision bf16 needs --precision bf16 or fp8 (fp32 runs everything in float32)")
    os.environ.setdefault("QT_API", "pyside6")  # qtpy (used by pyvistaqt and superqt) must pick PySide6

    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("Lite3R")
    app.setOrganizationName("lite3r")

    from lite3r.app.main_window import MainWindow

    dev_models = dict(item.split("=", 1) for item in args.dev_model)
    win = MainWindow(dev_models=dev_models, show_dialogs=not args.smoke_test, backend=args.backend)
    win.show()
    settings = win.project.settings
    changes = {}
    if args.backbone:
        changes["backbone"] = args.backbone
    if args.precision:
        changes["precision"] = args.precision
        if args.precision == "fp32":
            changes["heads_precision"] = "fp32"  # fp32 runs everything in float32
    if args.heads_precision:
        changes["heads_precision"] = args.heads_precision
        if args.heads_precision == "bf16" and changes.get("precision", settings.precision) == "fp32":
            print("lite3r-app: --heads-precision bf16 needs --precision bf16 or fp8", file=sys.stderr)
            win.shutdown()
            return 2
    if args.attention:
        changes["attention"] = args.attention
    paths = list(args.paths)
    if args.demo:
        photos, _tiny, problem = demo_assets()
        if problem:
            if args.smoke_test:
                print(json.dumps({"ok": False, "error": problem}), flush=True)
                win.shutdown()
                return 2
            QTimer.singleShot(0, lambda: win.show_error("Demo not available", problem))
        else:
            paths = [str(p) for p in photos]
            changes.setdefault("backbone", "lite3r-tiny")
            args.run = True
    if changes:
        settings = settings.with_(**changes)
        win.model_panel.set_settings(settings)
        win.project.set_settings(win.model_panel.current_settings())
    if paths:
        win.open_paths(paths)
        if args.run or args.smoke_test:
            QTimer.singleShot(0, win.run)
    if args.smoke_test:
        return _smoke_test(app, win)
    return app.exec()


def _smoke_test(app, win) -> int:
    """Wait for the run, check the view, report, exit."""
    import numpy as np
    from PySide6.QtCore import QTimer

    outcome: dict = {}

    def finished(status: str) -> None:
        if status == "done":
            QTimer.singleShot(300, check)  # let the view render once
        else:
            outcome.update(ok=False, error=f"run {status}: {win.errors[-1] if win.errors else ''}")
            app.quit()

    def check() -> None:
        view = win.scene_view
        img = view.screenshot()
        non_bg = float((np.abs(img.astype(int) - img[0, 0].astype(int)).sum(-1) > 30).mean())
        n = view.cloud.n if view.cloud is not None else 0
        outcome.update(
            ok=bool(n > 0 and img.std() > 5 and non_bg > 0.01),
            points=n,
            image_std=float(img.std()),
            non_background=non_bg,
            status=win.last_run_label.text(),
        )
        app.quit()

    def timeout() -> None:
        outcome.update(ok=False, error=f"no result within {SMOKE_TIMEOUT_S} s")
        app.quit()

    def failed(text: str) -> None:
        outcome.update(ok=False, error=text)
        app.quit()

    win.run_finished.connect(finished)
    win.error_shown.connect(failed)
    QTimer.singleShot(SMOKE_TIMEOUT_S * 1000, timeout)
    if not win.project.photos:
        outcome.update(ok=False, error="no photos to reconstruct")
    else:
        app.exec()
    win.shutdown()
    print(json.dumps(outcome), flush=True)
    return 0 if outcome.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
