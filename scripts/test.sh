#!/usr/bin/env bash
# The README's test command: installs what the tests need into .venv and runs the whole suite.
# GPU tests are skipped on machines without CUDA; GUI tests run under Xvfb (started by pytest-xvfb).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/system_deps.sh
. scripts/_venv.sh
ensure_venv "app,dev"
export QT_API=pyside6
unset PYVISTA_OFF_SCREEN QT_QPA_PLATFORM
exec .venv/bin/python -m pytest "$@"
