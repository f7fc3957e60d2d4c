#!/usr/bin/env bash
# gpu_check.sh section "e2e": `lite3r bench` for VGGT-1B (518²) and DA3-Large (504²), random weights,
# dense bf16 (cuDNN SDPA) vs Lite3R (SLA keep 0.1 in bf16, and with FP8 GEMMs), camera + depth heads,
# 2 untimed runs (first call, memory) + 2 warm-ups + median of 20 CUDA-event-timed runs; memory split
# into weights and activations. Every variant of a frame group runs in one process (ratios are
# same-process, performance.md §7); groups are separate processes (≤ 590 s each) so the 128-frame runs
# cannot starve the small ones. Results: $R/e2e/bench_<model>_f<frames>.{json,md,png}, written after
# every variant (a time-out keeps what was measured).
#   E2E_MODELS="vggt-1b da3-large"  E2E_GROUPS="8,32 128"  E2E_VARIANTS="dense:bf16 lite3r:bf16:sla0.1 …"
#   E2E_WARMUP=2  E2E_ITERS=20  E2E_TIMEOUT_S=590 (per frame group)
set -uo pipefail
cd "$(dirname "$0")/../.."
R=${R:-${OUT:-benchmarks/results}}
MODELS=${E2E_MODELS:-"vggt-1b da3-large"}
GROUPS_=${E2E_GROUPS:-"8,32 128"}
VARIANTS=${E2E_VARIANTS:-"dense:bf16 lite3r:bf16:sla0.1 lite3r-fp8:fp8:sla0.1"}
WARMUP=${E2E_WARMUP:-2}
ITERS=${E2E_ITERS:-20}
TMO=${E2E_TIMEOUT_S:-590}
vargs=()
for v in $VARIANTS; do vargs+=(--variant "$v"); done
status=0
for m in $MODELS; do
  size=518
  [ "$m" = "da3-large" ] && size=504
  for g in $GROUPS_; do
    frames=${g//,/ }
    # shellcheck disable=SC2086
    timeout "$TMO" python3 -m lite3r.cli bench --model "$m" --frames $frames --image-size $size \
      --heads cameras-depth --warmup "$WARMUP" --iters "$ITERS" "${vargs[@]}" \
      --out "$R/e2e" --name "bench_${m}_f${g//,/-}" || status=1
  done
done
exit $status
