#!/usr/bin/env bash
# gpu_check.sh section "fp8_features": can the head-feeding VGGT features be stored in FP8?
# (random-weight VGGT-1B, 8 frames; bf16 vs FP8-stored features vs fp32 / FP8-GEMM trunks; ≈ 2 min)
set -uo pipefail
cd "$(dirname "$0")/../.."
R=${R:-${OUT:-benchmarks/results}}
timeout 400 python3 benchmarks/bench_fp8_features.py --frames 8 --out "$R"
