#!/usr/bin/env bash
# gpu_check.sh section "tiny_quality": SynthMV generator GPU benchmark + the lite3r-tiny quality report
# (test split, 2/4/8 views, vs constant depth / identity poses). Uses runs/tiny/lite3r-tiny when the
# machine still has it, else the registry's assets/lite3r-tiny. TINY_QUALITY_SCENES (default 96).
set -uo pipefail
cd "$(dirname "$0")/../.."
R=${R:-${OUT:-benchmarks/results}}
status=0
weights=()
[ -f runs/tiny/lite3r-tiny/model.safetensors ] && weights=(--weights runs/tiny/lite3r-tiny)
OUT="$R" timeout 240 python3 benchmarks/bench_synthetic.py --gpu --repeats 3 || status=1
timeout 330 python3 -m lite3r.training.quality_report "${weights[@]}" --scenes "${TINY_QUALITY_SCENES:-96}" \
  --out "$R/quality_lite3r_tiny.json" || status=1
exit $status
