#!/usr/bin/env bash
# A whole device session as one detached pipeline, followed by short "collect" calls.
#
# A device call lasts at most 10 minutes and the machine is given back 30 s after a call ends, so a
# session of ~25 GPU minutes is three back-to-back calls. Sections run by gpu_check.sh would leave the
# GPU idle between calls and lose any section cut by a call's limit; here the work runs detached
# (setsid) from a snapshot of the tree under $PIPE_ROOT, and each call only waits and brings back
# what is finished so far:
#
#   LITE3R_COMMIT=$(git rev-parse HEAD) bash benchmarks/gpu_pipeline.sh start 560   # call 1
#   (expand the hash on this machine and pass it literally: the device copy's .git can be stale, which
#   once stamped results with an older commit)
#   bash benchmarks/gpu_pipeline.sh collect 580                                     # call 2, 3 …
#
# Stages (in this order, each with its own time limit; STAGES overrides the list):
#   tiny      train lite3r-tiny (TINY_MINUTES, default 9.5) with the GPU tests running beside it
#             (pytest -m "gpu or hopper": correctness only, timing is never asserted)
#   distill   distil lite3r-tiny (SLA 10 % + FP8 QAT) + ablations, the tiny quality report beside it
#   e2e32     lite3r bench VGGT-1B 8 and 32 frames (dense bf16 vs Lite3R bf16 vs Lite3R FP8)
#   sla       global-attention benchmark (SLA vs dense cuDNN; sparse kernel; backward; selection)
#   e2e128    lite3r bench VGGT-1B 128 frames (fewer timed runs)
#   da3       lite3r bench DA3-Large 32 frames
#   fp8       per-layer FP8 benchmark at 32 frames
# Short re-checks for a later session (not in the default list): gpufix (GPU tests of FP8 compile and
# SLA), sla_short (SLA bench at 10 % kept), e2e_short (VGGT-1B 32/128 frames, dense vs Lite3R FP8),
# e2ec / e2e128c / da3c (eager vs torch.compile'd dense bf16 and Lite3R FP8), distill_fix (distillation
# with the gpufix tests beside it), e2eg (CUDA graphs), e2elean (memory options, E2ELEAN_VARIANTS).
# Timing stages never overlap each other. Every collect returns $OUT/results.tgz (all of out/ except
# the model) and, once training has exported it, the tiny model as ≤ 15 MiB parts:
#   cat lite3r_tiny.tar.part-* | tar -x -C assets/
set -uo pipefail
ROOT=${PIPE_ROOT:-/root/runs/pipe}
O="$ROOT/out"
R="$O/r"

collect() {
  local wait_s=${1:-0} t0=$SECONDS
  if [ ! -d "$ROOT" ]; then
    echo "NO PIPELINE on this machine ($ROOT missing): the machine was recycled since 'start'"
    return 2
  fi
  while [ $((SECONDS - t0)) -lt "$wait_s" ] && [ ! -f "$O/DONE" ]; do sleep 5; done
  local dest=${OUT:-/tmp/collect}
  mkdir -p "$dest"
  tar -czf "$dest/results.tgz" -C "$O" --exclude='lite3r_tiny.tar.part-*' . 2>/dev/null
  cp "$O"/lite3r_tiny.tar.part-* "$dest"/ 2>/dev/null
  echo "---- stages"
  cat "$O/stages.txt" 2>/dev/null
  echo "---- pipeline log (tail)"
  tail -n 60 "$O/pipeline.log" 2>/dev/null
  [ -f "$O/DONE" ] && echo "PIPELINE DONE" || echo "PIPELINE STILL RUNNING"
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>/dev/null
  return 0
}

stage() { echo "$(date +%T) $*" >>"$O/stages.txt"; echo "== $* ($(date +%T))"; }

# The GPU tests touched since the last full run (correctness only): GPUFIX_K selects, GPUFIX_FILES lists.
gpufix_tests() {
  # shellcheck disable=SC2086
  timeout "${GPUFIX_TIMEOUT_S:-300}" python3 -m pytest -q -m "gpu or hopper" -p no:xvfb -p no:cacheprovider \
    -k "${GPUFIX_K:-compile or select or sla}" --junitxml="$R/gpu_tests_fix.xml" \
    ${GPUFIX_FILES:-tests/test_fp8_gpu.py tests/test_sla_kernels.py tests/test_sla_attention.py} >"$R/gpu_tests_fix.txt" 2>&1
  stage "gpufix exit $? ($(tail -n 1 "$R/gpu_tests_fix.txt"))"
}

run_pipeline() {
  export PYTHONUNBUFFERED=1
  mkdir -p "$R"
  # The device image has torch, triton, numpy, safetensors, … but not this package (PIPE_NO_INSTALL=1: a dry run here).
  if [ "${PIPE_NO_INSTALL:-0}" != 1 ]; then
    python3 -m pip install -q --no-deps --no-build-isolation -e . >"$R/pip.txt" 2>&1 || stage "pip install -e . FAILED"
  fi
  nvidia-smi >"$R/env.txt" 2>&1
  python3 -c 'import json,sys; sys.path.insert(0,"benchmarks"); from provenance import provenance; print(json.dumps(provenance("gpu_pipeline"), indent=2))' >>"$R/env.txt" 2>&1
  local W=runs/tiny/lite3r-tiny
  for s in ${STAGES:-tiny distill e2e32 sla e2e128 da3 fp8}; do
    stage "start $s"
    case "$s" in
      tiny)
        TINY_MINUTES=${TINY_MINUTES:-9.5} OUT="$O" R="$R" bash benchmarks/gpu_sections/tiny.sh >"$R/tiny_section.txt" 2>&1 &
        local tpid=$!
        sleep 45  # training starts (and autotunes) first
        # two processes, as gpu_check.sh tests_sla / tests_other (cold: ~6 + ~6.5 min at 51e0975), so a
        # cut-off run keeps the first half's results
        timeout 540 python3 -m pytest -q -m "gpu or hopper" -p no:xvfb -p no:cacheprovider \
          --junitxml="$R/gpu_tests_sla.xml" tests/test_sla_*.py >"$R/gpu_tests_sla.txt" 2>&1
        stage "gpu tests (SLA) exit $? ($(tail -n 1 "$R/gpu_tests_sla.txt"))"
        timeout 540 python3 -m pytest -q -m "gpu or hopper" -p no:xvfb -p no:cacheprovider \
          --ignore-glob="tests/test_app_*" --ignore-glob="tests/test_sla_*" --junitxml="$R/gpu_tests_other.xml" \
          tests >"$R/gpu_tests_other.txt" 2>&1
        stage "gpu tests (other) exit $? ($(tail -n 1 "$R/gpu_tests_other.txt"))"
        wait $tpid; stage "tiny exit $?" ;;
      distill)
        local wargs=()
        [ -f "$W/model.safetensors" ] && wargs=(--weights "$W")
        timeout 200 python3 -m lite3r.training.quality_report "${wargs[@]}" --scenes "${TINY_QUALITY_SCENES:-64}" \
          --out "$R/quality_lite3r_tiny.json" >"$R/quality.txt" 2>&1 &
        local qpid=$!
        timeout "${DISTILL_TIMEOUT_S:-280}" python3 benchmarks/distill_tiny.py "${wargs[@]}" --out "$R/distill_tiny" \
          --budget-s "${DISTILL_BUDGET_S:-240}" --test-scenes 32 >"$R/distill.txt" 2>&1
        stage "distill exit $?"
        wait $qpid; stage "quality exit $?" ;;
      e2e32)
        E2E_MODELS=vggt-1b E2E_GROUPS=8,32 E2E_TIMEOUT_S=260 R="$R" bash benchmarks/gpu_sections/e2e.sh >"$R/e2e32.txt" 2>&1
        stage "e2e32 exit $?" ;;
      sla)
        timeout 220 python3 benchmarks/bench_sla_attention.py --deadline-s 150 --out "$R/sla" >"$R/sla.txt" 2>&1
        stage "sla exit $?" ;;
      e2e128)
        E2E_MODELS=vggt-1b E2E_GROUPS=128 E2E_WARMUP=1 E2E_ITERS=3 E2E_TIMEOUT_S=200 R="$R" \
          bash benchmarks/gpu_sections/e2e.sh >"$R/e2e128.txt" 2>&1
        stage "e2e128 exit $?" ;;
      da3)
        E2E_MODELS=da3-large E2E_GROUPS=32 E2E_ITERS=10 E2E_TIMEOUT_S=160 R="$R" \
          bash benchmarks/gpu_sections/e2e.sh >"$R/da3.txt" 2>&1
        stage "da3 exit $?" ;;
      fp8)
        timeout 150 python3 benchmarks/bench_fp8_linear.py --frames 32 --parts layers --out "$R/fp8" >"$R/fp8.txt" 2>&1
        stage "fp8 exit $?" ;;
      gpufix)  # re-check of the GPU tests touched since the last full run
        gpufix_tests ;;
      sla_short)  # forward at 10 % kept, 64-frame backward, 1,000-frame selection
        timeout 200 python3 benchmarks/bench_sla_attention.py --frames 32 64 128 --keeps 0.1 --backward-frames 64 \
          --select-frames 1000 --select-repeats 2 --deadline-s 120 --out "$R/sla" >"$R/sla.txt" 2>&1
        stage "sla_short exit $?" ;;
      e2e_short)  # VGGT-1B 32 + 128 frames, dense bf16 vs Lite3R FP8 (same process), few timed runs
        E2E_MODELS=vggt-1b E2E_GROUPS=32,128 E2E_WARMUP=1 E2E_ITERS=3 E2E_TIMEOUT_S=220 \
          E2E_VARIANTS="dense:bf16 lite3r-fp8:fp8:sla0.1" R="$R" bash benchmarks/gpu_sections/e2e.sh >"$R/e2e_short.txt" 2>&1
        stage "e2e_short exit $?" ;;
      e2ec)  # VGGT-1B 8 + 32 frames, eager and torch.compile'd (per block) dense bf16 vs Lite3R FP8
        E2E_MODELS=vggt-1b E2E_GROUPS=8,32 E2E_ITERS=10 E2E_TIMEOUT_S=${E2EC_TIMEOUT_S:-420} \
          E2E_VARIANTS="dense:bf16 dense-compiled:bf16:compile lite3r-fp8:fp8:sla0.1 lite3r-fp8-compiled:fp8:sla0.1:compile" \
          R="$R" bash benchmarks/gpu_sections/e2e.sh >"$R/e2ec.txt" 2>&1
        stage "e2ec exit $?" ;;
      e2e128c)  # VGGT-1B 128 frames, eager and compiled dense bf16 vs compiled Lite3R FP8
        E2E_MODELS=vggt-1b E2E_GROUPS=128 E2E_WARMUP=1 E2E_ITERS=3 E2E_TIMEOUT_S=${E2E128C_TIMEOUT_S:-300} \
          E2E_VARIANTS="dense:bf16 dense-compiled:bf16:compile lite3r-fp8-compiled:fp8:sla0.1:compile" \
          R="$R" bash benchmarks/gpu_sections/e2e.sh >"$R/e2e128c.txt" 2>&1
        stage "e2e128c exit $?" ;;
      da3c)  # DA3-Large 8 + 32 frames, dense bf16 vs Lite3R FP8 (eager and compiled)
        E2E_MODELS=da3-large E2E_GROUPS=8,32 E2E_ITERS=10 E2E_TIMEOUT_S=${DA3C_TIMEOUT_S:-240} \
          E2E_VARIANTS="${DA3C_VARIANTS:-dense:bf16 lite3r-fp8:fp8:sla0.1 lite3r-fp8-compiled:fp8:sla0.1:compile}" \
          R="$R" bash benchmarks/gpu_sections/e2e.sh >"$R/da3c.txt" 2>&1
        stage "da3c exit $?" ;;
      distill_fix)  # the distillation run (not timed) with the gpufix GPU tests beside it
        local wargs2=()
        [ -f "$W/model.safetensors" ] && wargs2=(--weights "$W")
        timeout "${DISTILL_TIMEOUT_S:-560}" python3 benchmarks/distill_tiny.py "${wargs2[@]}" --out "$R/distill_tiny" \
          --budget-s "${DISTILL_BUDGET_S:-480}" --test-scenes 32 >"$R/distill.txt" 2>&1 &
        local dpid=$!
        sleep 20
        gpufix_tests
        wait $dpid; stage "distill exit $?" ;;
      e2eg)  # VGGT-1B 8 + 32 frames: CUDA graphs (reduce-overhead) vs compile, dense bf16 and Lite3R FP8
        E2E_MODELS=vggt-1b E2E_GROUPS=8,32 E2E_ITERS=20 E2E_TIMEOUT_S=${E2EG_TIMEOUT_S:-420} \
          E2E_VARIANTS="${E2EG_VARIANTS:-dense-compiled:bf16:compile dense-cudagraphs:bf16:cudagraphs lite3r-fp8-compiled:fp8:sla0.1:compile lite3r-fp8-cudagraphs:fp8:sla0.1:cudagraphs}" \
          R="$R" bash benchmarks/gpu_sections/e2e.sh >"$R/e2eg.txt" 2>&1
        stage "e2eg exit $?" ;;
      e2elean)  # VGGT-1B 32 + 128 frames: compiled dense vs compiled Lite3R FP8 with the memory options
        E2E_MODELS=vggt-1b E2E_GROUPS="${E2ELEAN_GROUPS:-32 128}" E2E_WARMUP=1 E2E_ITERS=5 E2E_TIMEOUT_S=${E2ELEAN_TIMEOUT_S:-300} \
          E2E_VARIANTS="${E2ELEAN_VARIANTS:-dense-compiled:bf16:compile lite3r-fp8-compiled:fp8:sla0.1:compile}" \
          R="$R" bash benchmarks/gpu_sections/e2e.sh >"$R/e2elean.txt" 2>&1
        stage "e2elean exit $?" ;;
      *) stage "unknown stage $s" ;;
    esac
  done
  stage "all done"
  touch "$O/DONE"
}

case "${1:-}" in
  start)
    rm -rf "$ROOT"
    mkdir -p "$O"
    # A snapshot: later calls re-sync the repository copy, the running stages keep theirs.
    cp -a "$(cd "$(dirname "$0")/.." && pwd)" "$ROOT/src"
    (cd "$ROOT/src" && LITE3R_COMMIT=${LITE3R_COMMIT:-unknown} setsid nohup bash benchmarks/gpu_pipeline.sh run \
      >"$O/pipeline.log" 2>&1 </dev/null &)
    stage "pipeline started (commit ${LITE3R_COMMIT:-unknown})"
    collect "${2:-0}" ;;
  run) run_pipeline ;;
  collect) collect "${2:-0}" ;;
  *) echo "usage: $0 start|collect [WAIT_SECONDS]"; exit 2 ;;
esac
