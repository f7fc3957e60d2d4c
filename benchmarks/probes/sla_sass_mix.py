"""Instruction mix of the SLA forward kernel's key-block loops, compiled for sm_90a (no GPU needed).

    python benchmarks/probes/sla_sass_mix.py [--warps 8] [--stages 3] [--out FILE.json]

Compiles the inference kernel (complement branch with summed states, fused projection, PAIR = 2, head
dim 64, 128 × 64 blocks) three ways — special tokens with the general per-column mapping everywhere,
special tokens with the per-block patch mapping (the default at VGGT shapes), and no special tokens
(identity mapping) — disassembles the cubin with the ``nvdisasm`` bundled with Triton, finds the loops
(backward branches) and counts SASS opcodes per iteration of each loop that issues tensor-core MMAs.

Why: the loop is not warp-specialised, so the softmax of one 128 × 128 tile waits for its MMAs and the
next MMAs wait for the softmax; each instruction the loop issues adds to the time. Comparing these counts
with measured TFLOP/s (``sla_layout_probe.py``) shows how much addressing and softmax instructions cost
(``benchmarks/results/README.md``, eighth session).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

if os.environ.get("TRITON_INTERPRET") == "1":
    raise SystemExit("sla_sass_mix compiles kernels: run it without TRITON_INTERPRET")

VARIANTS = {  # name → (HAS_SPECIAL, FAST_MAP)
    "special, per-column mapping": (True, False),
    "special, per-block patch mapping": (True, True),
    "no special tokens (identity)": (False, False),
}


def compile_sass(has_special: bool, fast_map: bool, warps: int, stages: int) -> str:

    from lite3r.kernels import sla_forward
    from lite3r.kernels.sla_compile_check import FORWARD_POINTERS, compile_for_hopper, sass

    consts = dict(
        BLOCK_M=128, BLOCK_N=64, HEAD_DIM=64, FEATURE=0, HAS_SPECIAL=has_special, DOT_PRECISION="tf32",
        LINEAR=3, FUSE_PROJ=True, STORE_LSE=False, RECOMPUTE_STATES=False, PAIR=2, FAST_MAP=fast_map,
    )  # fmt: skip
    k = compile_for_hopper(sla_forward._sla_forward_kernel, FORWARD_POINTERS, consts, warps, stages)
    return sass(k)


def loop_mixes(sass: str) -> list[dict]:
    """Opcode counts of every loop body (a label up to a branch back to it) that contains an HGMMA."""
    lines = sass.splitlines()
    labels = {}
    for i, line in enumerate(lines):
        m = re.match(r"^\s*\.(L_x_\d+):", line)
        if m:
            labels[m.group(1)] = i
    loops = []
    for i, line in enumerate(lines):
        m = re.search(r"BRA\s+(?:`\()?\.?(L_x_\d+)", line)
        if not (m and m.group(1) in labels and labels[m.group(1)] < i):
            continue
        ops = collections.Counter()
        for body_line in lines[labels[m.group(1)] : i + 1]:
            op = re.search(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", body_line)
            if op:
                ops[op.group(1).split(".")[0]] += 1
        if ops.get("HGMMA"):
            loops.append({"instructions": sum(ops.values()), "opcodes": dict(ops.most_common())})
    return sorted(loops, key=lambda x: -x["opcodes"]["HGMMA"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--warps", type=int, default=8)
    ap.add_argument("--stages", type=int, default=3)
    ap.add_argument("--out", default=None, help="write the counts as JSON here")
    args = ap.parse_args(argv)
    result = {}
    for name, (special, fast) in VARIANTS.items():
        loops = loop_mixes(compile_sass(special, fast, args.warps, args.stages))
        result[name] = loops
        for loop in loops:
            ops = loop["opcodes"]
            softmax = sum(ops.get(k, 0) for k in ("MUFU", "FMNMX", "FADD", "FFMA", "FMUL", "F2FP"))
            print(
                f"{name:34s} {loop['instructions']:4d} instructions / iteration: HGMMA {ops['HGMMA']}, "
                f"softmax (MUFU FMNMX FADD FFMA FMUL F2FP) {softmax}, other {loop['instructions'] - softmax}"
            )
    if args.out:
        Path(args.out).write_text(
            json.dumps({"warps": args.warps, "stages": args.stages, "loops": result}, indent=2)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
