#!/usr/bin/env bash
# gpu_check.sh section "tiny": train lite3r-tiny from scratch on SynthMV rendered online (one call ≤ 10 min).
#   TINY_MINUTES           wall-clock budget of this call's training (default 8.0; the device call, pip install and start-up included, must stay under 10 min)
#   TINY_SCHEDULE_MINUTES  plan the LR schedule over this many minutes (default TINY_MINUTES); a plan longer
#                          than one call is continued by calling the section again with TINY_RESUME=1 while
#                          the machine is warm (runs/tiny stays on the device between warm calls)
#   TINY_RESUME=1          continue runs/tiny/checkpoint.pt
#   TINY_HANDOVER=1        also write a bf16 handover (weights + trainer state) and return it as ≤ 15 MiB
#                          parts tiny_handover.tar.part-* at the top of $OUT, for a later machine
#   TINY_RESUME_HANDOVER=DIR  continue a handover folder (carried in, e.g. out/handover) on a fresh machine
#   TINY_ARGS              extra train_tiny options (e.g. "--views-per-step 64 --supersample 1")
# Results: $R/tiny_log.jsonl (all events) and the exported model as ≤ 15 MiB parts at the top of $OUT
# (the device returns files ≤ 16 MiB): reassemble with
#   cat lite3r_tiny.tar.part-* | tar -x -C assets/      # → assets/lite3r-tiny/{model.safetensors,config.json}
set -uo pipefail
cd "$(dirname "$0")/../.."
R=${R:-${OUT:-benchmarks/results}}
OUTDIR=${OUT:-benchmarks/results}
M=${TINY_MINUTES:-8.0}
SM=${TINY_SCHEDULE_MINUTES:-$M}
resume=()
[ "${TINY_RESUME:-0}" = "1" ] && resume=(--resume)
[ -n "${TINY_RESUME_HANDOVER:-}" ] && resume=(--resume-handover "$TINY_RESUME_HANDOVER")
[ "${TINY_HANDOVER:-0}" = "1" ] && resume+=(--handover-out runs/tiny/handover)
status=0
# shellcheck disable=SC2086
timeout 590 python3 -m lite3r.training.train_tiny --out runs/tiny --minutes "$M" --schedule-minutes "$SM" \
  "${resume[@]}" --no-stdin --quiet ${TINY_ARGS:-} || status=1
cp runs/tiny/log.jsonl "$R/tiny_log.jsonl" 2>/dev/null
python3 - <<'PY' || true
import json
ev = [json.loads(l) for l in open("runs/tiny/log.jsonl")]
for e in ev:
    if e["event"] in ("schedule", "finished", "cancelled", "error") or (e["event"] == "eval"):
        print(json.dumps({k: v for k, v in e.items() if k != "config"})[:600])
steps = [e for e in ev if e["event"] == "step"]
if steps:
    print("last step:", json.dumps(steps[-1])[:600])
PY
if [ -f runs/tiny/lite3r-tiny/model.safetensors ]; then
  tar -cf - -C runs/tiny lite3r-tiny | split -b 15m - "$OUTDIR/lite3r_tiny.tar.part-"
  ls -la "$OUTDIR"/lite3r_tiny.tar.part-*
fi
if [ "${TINY_HANDOVER:-0}" = "1" ] && [ -f runs/tiny/handover/handover.safetensors ]; then
  tar -cf - -C runs/tiny handover | split -b 15m - "$OUTDIR/tiny_handover.tar.part-"
fi
exit $status
