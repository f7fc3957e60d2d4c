#!/usr/bin/env bash
# Build the desktop app as a one-folder PyInstaller bundle (dist/lite3r-app/) and smoke-test it:
# launch it under Xvfb with --demo --smoke-test (reconstruct the bundled demo with lite3r-tiny, check
# the 3D view, exit 0). Takes ~6 min on 2 cores and ~2.4 GB; never commit the bundle.
#
#   scripts/build_app.sh                 # build + smoke test (needs the demo assets)
#   SMOKE=dev scripts/build_app.sh       # smoke test on tests/data/photos with the parity VGGT instead
#   SMOKE=none scripts/build_app.sh      # build only
#
# Uses the active Python environment (activate the venv first, or set PYTHON).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
STAGE="build/app-stage"
SMOKE="${SMOKE:-demo}"

echo "== staging the lite3r package (real folder layout) in $STAGE"
rm -rf "$STAGE" build/lib build/bdist.*   # stale setuptools build output would leak deleted files
"$PY" -m pip install -q --no-deps --no-build-isolation --no-compile --target "$STAGE" .
test -f "$STAGE/lite3r/app/main.py"

echo "== PyInstaller"
export QT_API=pyside6
LITE3R_STAGE="$PWD/$STAGE" "$PY" -m PyInstaller --noconfirm --clean --log-level WARN \
  --workpath build/pyinstaller --distpath dist lite3r.spec
APP="dist/lite3r-app/lite3r-app"
test -x "$APP"
du -sh dist/lite3r-app

echo "== the bundle relaunches itself as its worker"
printf '{"cmd": "capabilities", "id": 1}\n{"cmd": "quit"}\n' | "$APP" --worker inference | tee build/worker-check.txt
grep -q '"event": "capabilities"' build/worker-check.txt

case "$SMOKE" in
  none) echo "== smoke test skipped"; exit 0 ;;
  demo) ARGS=(--demo --smoke-test) ;;
  dev) ARGS=(tests/data/photos --backbone parity-vggt --dev-model "parity-vggt=$PWD/tests/data/parity" --smoke-test) ;;
  *) echo "SMOKE must be demo, dev or none" >&2; exit 2 ;;
esac
echo "== smoke test: $APP ${ARGS[*]}"
unset PYVISTA_OFF_SCREEN QT_QPA_PLATFORM
export XDG_CONFIG_HOME="$PWD/build/smoke-config"   # do not touch the user's preferences
if [ -n "${DISPLAY:-}" ]; then
  "$APP" "${ARGS[@]}"
else
  xvfb-run -a -s "-screen 0 1600x1000x24" "$APP" "${ARGS[@]}"
fi
echo "== ok: dist/lite3r-app"
