#!/usr/bin/env bash
# Debian/Ubuntu libraries that Qt's xcb platform and VTK need (docs: shared/docs/app.md §2.6), plus
# Xvfb for the GUI tests. Installs them when run as root with apt-get; otherwise prints the command.
set -euo pipefail
PKGS="xvfb xauth libgl1 libglx-mesa0 libgl1-mesa-dri libegl1 libegl-mesa0 libx11-6 libx11-xcb1 \
libdbus-1-3 libfontconfig1 libfreetype6 fonts-dejavu-core libglib2.0-0 libxkbcommon0 libxkbcommon-x11-0 \
libxcb1 libxcb-cursor0 libxcb-glx0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 \
libxcb-render0 libxcb-render-util0 libxcb-shape0 libxcb-shm0 libxcb-sync1 libxcb-util1 libxcb-xfixes0 libxcb-xkb1"
if ! command -v apt-get >/dev/null 2>&1; then
  echo "system_deps: no apt-get here; install the equivalents of: $PKGS" >&2
  exit 0
fi
missing=$(dpkg-query -W -f='${Package} ${Status}\n' $PKGS 2>/dev/null | grep -v "install ok installed" | cut -d' ' -f1 || true)
for p in $PKGS; do dpkg-query -W "$p" >/dev/null 2>&1 || missing="$missing $p"; done
missing=$(echo $missing | tr ' ' '\n' | sort -u | tr '\n' ' ')
if [ -z "${missing// /}" ]; then exit 0; fi
if [ "$(id -u)" = "0" ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $PKGS >/dev/null
else
  echo "system_deps: missing system packages:$missing" >&2
  echo "  run: sudo apt-get install -y --no-install-recommends $PKGS" >&2
fi
