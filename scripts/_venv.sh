# Sourced by scripts/app.sh and scripts/test.sh: create .venv and install Lite3R with the given extras.
# torch is installed first and pinned to the CPU build 2.13.0 when there is no NVIDIA driver, so pip
# never pulls gigabytes of CUDA wheels onto a machine that cannot use them.
ensure_venv() {
  local extras="$1"
  local py="${PYTHON:-python3}"
  [ -x .venv/bin/python ] || "$py" -m venv .venv
  local stamp=".venv/.lite3r-installed-$extras"
  local want
  want="$(cat pyproject.toml | sha256sum | cut -c1-16)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return 0
  fi
  .venv/bin/python -m pip install -q --upgrade pip
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    .venv/bin/python -m pip install -q "torch>=2.11"
  else
    .venv/bin/python -m pip install -q "torch==2.13.0"
  fi
  .venv/bin/python -m pip install -q -e ".[$extras]"
  echo "$want" >"$stamp"
}
