#!/usr/bin/env bash
# gpu_check.sh section "tiny_ft_pose": fine-tune the shipped lite3r-tiny with correspondence
# supervision of its global attention, then read poses out of its own attention matches (issue #6).
# The shipped model matches nothing across views (top-1 0.4 %, tiny/match_pose/shipped_val.md), while
# the read-out with perfect patch matches reaches AUC@30 ≈ 69–77 at 224 px; the correspondence loss
# teaches matching within a few hundred steps. Variants fine-tune side by side from assets/lite3r-tiny
# (one process each), then lite3r.training.match_pose_eval scores camera head vs read-out on val.
#   FT_MINUTES   training minutes per variant (default 6.5)
#   FT_VARIANTS  ";"-separated "name:extra train_tiny options" (default below)
#   FT_COMMON    options every variant gets
#   FT_EVAL      extra match_pose_eval options (default: val, 32 scenes, 2 and 8 views, pnp + procrustes)
#   FT_DEVICE    match_pose_eval device (default cuda)
# Results in $R: ft_<name>_log.jsonl, ft_<name>_match_pose.json, ft_summary.md; the best variant's
# exported model in $OUT/model/ (config.json + the weights in two parts: the device returns at most 8
# files of at most 16 MiB, so run this section alone, with R=$OUT/r, not through gpu_check.sh's tarball):
#   cat model/model.safetensors.part-* > model.safetensors
set -uo pipefail
cd "$(dirname "$0")/../.."
R=${R:-${OUT:-benchmarks/results}}
M=${FT_MINUTES:-6.5}
COMMON=${FT_COMMON:---init-weights assets/lite3r-tiny --no-point-head --views-per-step 96 --replay 6 --lr 3e-4 --warmup-steps 100 --curriculum 0 --eval-every 400 --eval-views 8}
VARIANTS=${FT_VARIANTS:-"corr1:--corr-weight 1 --corr-layers 1 2 3 --corr-heads 1;corr3:--corr-weight 3 --corr-layers 2 3 --corr-heads 2"}
EVAL=${FT_EVAL:---split val --scenes 32 --views 2 8 --solvers pnp procrustes}
IFS=';' read -ra list <<<"$VARIANTS"
pids=()
for v in "${list[@]}"; do
  name=${v%%:*}
  extra=${v#*:}
  # shellcheck disable=SC2086
  eval "timeout 480 python3 -m lite3r.training.train_tiny --out runs/ft_$name --minutes $M --schedule-minutes $M \
    $COMMON $extra --no-stdin --quiet" &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
pids=()
for v in "${list[@]}"; do
  name=${v%%:*}
  cp "runs/ft_$name/log.jsonl" "$R/ft_${name}_log.jsonl" 2>/dev/null
  # shellcheck disable=SC2086
  timeout 150 python3 -m lite3r.training.match_pose_eval --weights "runs/ft_$name/lite3r-tiny" --device "${FT_DEVICE:-cuda}" \
    $EVAL --out "$R/ft_${name}_match_pose.json" >"runs/ft_${name}_eval.txt" 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
rm -f "$R"/ft_*_match_pose.md
python3 - "$R" "$OUT" <<'PY' | tee "$R/ft_summary.md"
import json, shutil, sys
from pathlib import Path
r, out = Path(sys.argv[1]), Path(sys.argv[2])
print("| variant | steps | val AbsRel | corr_acc | S | camera head AUC@30 / RRA@15 / RTA@15 | read-out pnp | read-out procrustes | moved-patch top-1 |")
print("|---|---|---|---|---|---|---|---|---|")
best, best_auc = None, -1.0
for log in sorted(r.glob("ft_*_log.jsonl")):
    name = log.name[3:-len("_log.jsonl")]
    ev = [json.loads(l) for l in log.read_text().splitlines()]
    evals = [e for e in ev if e["event"] == "eval"]
    steps = [e for e in ev if e["event"] == "step"]
    m = evals[-1]["metrics"] if evals else {}
    acc = steps[-1]["terms"].get("corr_acc", float("nan")) if steps else float("nan")
    mp = r / f"ft_{name}_match_pose.json"
    if not mp.is_file():
        print(f"| {name} | {evals[-1]['step'] if evals else '-'} | {m.get('abs_rel', float('nan')):.3f} | {acc:.3f} | - | eval failed | | | |")
        continue
    res = json.loads(mp.read_text())["results"]["results"]
    fmt = lambda k: "{:.1f} / {:.1f} / {:.1f}".format(*(res[k][x] for x in ("auc@30", "rra@15", "rta@15"))) if k in res else "-"
    for S in (2, 8):
        diag = res.get(f"match_diagnostics/{S}", {})
        moved = diag.get("top1_moving_queries", float("nan"))
        print(f"| {name} | {evals[-1]['step']} | {m.get('abs_rel', float('nan')):.3f} | {acc:.3f} | {S} | {fmt(f'camera_head/{S}')} "
              f"| {fmt(f'readout/pnp/{S}')} | {fmt(f'readout/procrustes/{S}')} | {moved:.3f} |")
    auc = max(res.get(f"readout/{s}/8", {}).get("auc@30", -1.0) for s in ("pnp", "procrustes"))
    if auc > best_auc:
        best, best_auc = name, auc
if best is not None:
    src = Path(f"runs/ft_{best}/lite3r-tiny")
    dst = out / "model"
    dst.mkdir(parents=True, exist_ok=True)
    data = (src / "model.safetensors").read_bytes()
    half = (len(data) + 1) // 2
    (dst / "model.safetensors.part-a").write_bytes(data[:half])
    (dst / "model.safetensors.part-b").write_bytes(data[half:])
    shutil.copy(src / "config.json", dst / "config.json")
    print(f"\nbest read-out: {best} (AUC@30 {best_auc:.1f} at 8 views); model in {dst}")
PY
