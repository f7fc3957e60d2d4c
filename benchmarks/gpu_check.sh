#!/usr/bin/env bash
# GPU tests and benchmarks for Lite3R, run on the device machine (H100) over a copy of the working tree.
#
#   LITE3R_COMMIT=$(git rev-parse HEAD) bash benchmarks/gpu_check.sh [SECTION ...]
#
# Writes everything under $OUT/r (JSON + markdown per benchmark, logs), then packs it into
# $OUT/results.tgz (the device returns at most 8 files). Sections (default: env tests):
#   env      GPU / torch / triton / cuDNN facts
#   tests    pytest -m "gpu or hopper" (kernels, FP8, models on the GPU): tests_sla, then tests_other.
#            On a fresh machine the two together exceed one 10-minute device call (at 7c16e7f: 62 of
#            66 tests in 540 s, the SLA kernels autotuning every variant anew), so send them as two calls:
#   tests_sla    the SLA kernel and module tests (tests/test_sla_*.py; 27 tests, 5.0 min cold at daffe67)
#   tests_other  every other GPU test (48 tests, 4.2–6.5 min; 4.2 at daffe67)
#   sla      global-attention benchmark (SLA module / sparse kernel vs dense cuDNN)
#   fp8      per-layer and per-block FP8 benchmark
#   e2e      lite3r bench: VGGT-1B and DA3-Large, dense bf16 vs Lite3R, 8/32/128 frames
#   tiny     train lite3r-tiny (resumes from $TINY_RESUME if set)
#   tiny_quality  SynthMV generator GPU speed + the lite3r-tiny quality report
#   tiny_pose_ab  lite3r-tiny pose recipes trained side by side (7.5 min each) + cross-frame attention probe
#   tiny_ft_pose  fine-tune lite3r-tiny with correspondence supervision, pose read-out from its matches
#   distill  distil lite3r-tiny + ablations + evaluation
#   fp8_features  can the head-feeding features be stored in FP8 (VGGT-1B, 8 frames)
#   fp8_tiles     tile/warp sweep of the FP8 producer kernels
# A whole session in one go (GPU idle time and call limits accounted for): benchmarks/gpu_pipeline.sh.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/local}
R="$OUT/r"
mkdir -p "$R"
export PYTHONUNBUFFERED=1 LITE3R_COMMIT=${LITE3R_COMMIT:-unknown}
LOG="$OUT/log.txt"
say() { echo "== $* ($(date +%T))" | tee -a "$LOG"; }

# The device image has torch, triton, numpy, safetensors, … but not this package: install it in place.
python3 -m pip install -q --no-deps --no-build-isolation -e . >>"$LOG" 2>&1 || say "pip install -e . failed"

# gpu_tests NAME ARGS…: one pytest process over the GPU-marked tests in ARGS → $R/gpu_tests_NAME.{xml,txt}
gpu_tests() {
  local name=$1
  shift
  timeout 540 python3 -m pytest -q -m "gpu or hopper" -p no:xvfb -p no:cacheprovider \
    --ignore-glob="tests/test_app_*" --junitxml="$R/gpu_tests_$name.xml" "$@" 2>&1 |
    tee "$R/gpu_tests_$name.txt" | tail -40
  return "${PIPESTATUS[0]}"
}

sections=("$@")
[ ${#sections[@]} -eq 0 ] && sections=(env tests)
status=0
for s in "${sections[@]}"; do
  say "section $s"
  case "$s" in
    env)
      nvidia-smi >>"$R/env.txt" 2>&1
      python3 - >>"$R/env.txt" 2>&1 <<'PY'
import json, sys
sys.path.insert(0, "benchmarks")
from provenance import provenance
print(json.dumps(provenance("gpu_check env"), indent=2))
PY
      cat "$R/env.txt" | tail -25 ;;
    tests)
      gpu_tests sla tests/test_sla_*.py || status=1
      gpu_tests other --ignore-glob="tests/test_sla_*" tests || status=1 ;;
    tests_sla)
      gpu_tests sla tests/test_sla_*.py || status=1 ;;
    tests_other)
      gpu_tests other --ignore-glob="tests/test_sla_*" tests || status=1 ;;
    sla)
      timeout 500 python3 benchmarks/bench_sla_attention.py --out "$R" 2>&1 | tee -a "$LOG" | tail -40 || status=1 ;;
    fp8)
      timeout 400 python3 benchmarks/bench_fp8_linear.py --out "$R" 2>&1 | tee -a "$LOG" | tail -40 || status=1 ;;
    *)
      if [ -x "benchmarks/gpu_sections/$s.sh" ]; then
        OUT="$OUT" R="$R" bash "benchmarks/gpu_sections/$s.sh" 2>&1 | tee -a "$LOG" | tail -60 || status=1
      else
        say "unknown section $s"; status=1
      fi ;;
  esac
done
tar -czf "$OUT/results.tgz" -C "$OUT" r 2>/dev/null
say "done (status $status)"
exit $status
