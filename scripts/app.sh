#!/usr/bin/env bash
# The README's launch command: installs Lite3R with the app into .venv and opens the desktop app on the
# bundled demo scene (reconstructed by the bundled lite3r-tiny model). Extra arguments go to lite3r-app.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/system_deps.sh
. scripts/_venv.sh
ensure_venv "app"
export QT_API=pyside6
if [ $# -eq 0 ]; then set -- --demo; fi
exec .venv/bin/lite3r-app "$@"
