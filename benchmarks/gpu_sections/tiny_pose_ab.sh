#!/usr/bin/env bash
# gpu_check.sh section "tiny_pose_ab": lite3r-tiny pose recipes side by side on one GPU (issue #6).
# Each variant trains from scratch in its own process, all at once (one device call ≤ 10 min), then the
# cross-frame attention probe runs on each result. The baseline recipe's attention pools look-alike
# patches of all frames and never matches them (tiny/attention/); the variants attack that directly.
#   AB_MINUTES   training minutes per variant (default 7.5)
#   AB_VARIANTS  ";"-separated "name:extra train_tiny options" (default below)
#   AB_COMMON    options every variant gets
#   AB_PROBE     0 skips the attention probe (recipe A/Bs for depth: fewer files back)
# Results in $R: ab_<name>_log.jsonl, cross_frame_attention_ab_<name>.json and ab_summary.md (7 files for 3 variants).
set -uo pipefail
cd "$(dirname "$0")/../.."
R=${R:-${OUT:-benchmarks/results}}
M=${AB_MINUTES:-7.5}
COMMON=${AB_COMMON:---preset tiny --views-per-step 96 --replay 6 --lr 8e-4 --warmup-steps 200 --eval-every 400 --eval-views 8}
VARIANTS=${AB_VARIANTS:-"base:;norope:--no-global-rope;corr:--corr-weight 1 --corr-layers 0 1 2 3 --corr-heads 2 --loss '{\"trans_dir_weight\":1}'"}
IFS=';' read -ra list <<<"$VARIANTS"
pids=()
for v in "${list[@]}"; do
  name=${v%%:*}
  extra=${v#*:}
  # shellcheck disable=SC2086
  eval "timeout 560 python3 -m lite3r.training.train_tiny --out runs/ab_$name --minutes $M --schedule-minutes $M \
    $COMMON $extra --no-stdin --quiet" &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
for v in "${list[@]}"; do
  name=${v%%:*}
  cp "runs/ab_$name/log.jsonl" "$R/ab_${name}_log.jsonl" 2>/dev/null
  [ "${AB_PROBE:-1}" = 0 ] && continue
  timeout 60 python3 benchmarks/probes/cross_frame_attention.py --weights "runs/ab_$name/lite3r-tiny" \
    --scenes 8 --views 4 --label "ab_$name" --out "$R" >/dev/null 2>&1 || echo "probe failed for $name"
done
python3 - "$R" <<'PY' | tee "$R/ab_summary.md"
import json, sys
from pathlib import Path
r = Path(sys.argv[1])
print("| variant | steps | val AbsRel | val AUC@30 | RRA@15 | RTA@15 | mean GT-match mass / uniform |")
print("|---|---|---|---|---|---|---|")
for log in sorted(r.glob("ab_*_log.jsonl")):
    name = log.name[3:-len("_log.jsonl")]
    ev = [json.loads(l) for l in log.read_text().splitlines()]
    last = [e for e in ev if e["event"] == "eval"][-1]
    m = last["metrics"]
    probe = r / f"cross_frame_attention_ab_{name}.json"
    ratio = "-"
    if probe.is_file():
        rows = json.loads(probe.read_text())["results"]
        ratio = f"{sum(x['gt_match'] for x in rows) / len(rows) / rows[0]['uniform_key']:.2f}"
    print(f"| {name} | {last['step']} | {m['abs_rel']:.3f} | {m['auc@30']:.1f} | {m['rra@15']:.1f} | {m['rta@15']:.1f} | {ratio} |")
PY
# the device returns at most 8 files: keep the logs, the probes' JSON (tables are in their "results") and the summary
rm -f "$R"/cross_frame_attention_ab_*.md
