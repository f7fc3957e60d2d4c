#!/usr/bin/env bash
# gpu_check.sh section "fp8_tiles": tile/warp sweep of the FP8 producer kernels (tuning; ≈ 3 min).
set -uo pipefail
cd "$(dirname "$0")/../.."
R=${R:-${OUT:-benchmarks/results}}
timeout 400 python3 benchmarks/bench_fp8_linear.py --parts layers --frames 32 --sweep-tiles --out "$R/tiles"
