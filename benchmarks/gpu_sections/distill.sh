#!/usr/bin/env bash
# gpu_check.sh section "distill": distil lite3r-tiny + ablations + evaluation (≤ 9 min on an H100).
# Set DISTILL_EXTRA=ddp and/or vggt1b to add the 2-GPU comparison / the VGGT-1B memory check.
set -uo pipefail
cd "$(dirname "$0")/../.."
R=${R:-${OUT:-benchmarks/results}}
status=0
timeout 540 python3 benchmarks/distill_tiny.py --out "$R/distill_tiny" --budget-s 480 || status=1
for extra in ${DISTILL_EXTRA:-}; do
  case "$extra" in
    ddp) NCCL_NVLS_ENABLE=0 timeout 580 python3 benchmarks/distill_ddp.py --out "$R/distill_ddp" || status=1 ;;
    vggt1b) timeout 580 python3 benchmarks/distill_vggt1b_memory.py --out "$R/distill_vggt1b" || status=1 ;;
    *) echo "unknown DISTILL_EXTRA entry $extra"; status=1 ;;
  esac
done
exit $status
