"""Static cost of the FP8 producer kernels without a GPU: compile them for sm_90 and count SASS.

    python benchmarks/probes/fp8_kernel_sass.py [--arch 90]

Triton compiles ahead of time for a target (no driver needed) and its wheel bundles ptxas,
cuobjdump and nvdisasm, so on any machine we get what the H100 would run: registers per thread
(→ resident programs per SM) and the instruction mix. Instructions per element (static count / tile
elements per thread) is the number that decides whether a row-wise kernel is memory-bound on the
H100: it streams ~180 M elements (32 frames × 1374 tokens × 4096) in 0.18 ms at 3 TB/s, and the SMs
issue roughly 30 T thread-instructions/s, so much above ~25 instructions per element the kernel
becomes compute-bound (the erf-based GELU→FP8 had 48 and ran at 1.84 TB/s). Static counts include
rarely taken paths (div_rn's slow path), so they overstate the executed count a little.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"


def compile_kernel(fn, args: dict, num_warps: int, arch: int):
    """``args``: name → Triton type ("*bf16", "i32", "fp32"; ":16" marks divisible by 16) or ("c", value)."""
    signature, constexprs, attrs = {}, {}, {}
    for i, (name, t) in enumerate(args.items()):
        if isinstance(t, tuple):
            signature[name], constexprs[name] = "constexpr", t[1]
            continue
        ty, _, flag = t.partition(":")
        signature[name] = ty
        if flag == "16" or ty.startswith("*"):  # what the JIT specialises for aligned pointers / sizes
            attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})


def sass_stats(kernel) -> tuple[int, Counter]:
    """(registers per thread, opcode counts) of a compiled kernel."""
    with tempfile.TemporaryDirectory() as d:
        cubin = Path(d) / "k.cubin"
        cubin.write_bytes(kernel.asm["cubin"])
        sass = subprocess.run(
            [BIN / "nvdisasm", "-c", cubin], capture_output=True, text=True, check=True
        ).stdout
        res = subprocess.run([BIN / "cuobjdump", "-res-usage", cubin], capture_output=True, text=True).stdout
    regs = int(re.search(r"REG:(\d+)", res).group(1))
    ops = Counter()
    for line in sass.splitlines():
        m = re.search(r"/\*[0-9a-f]{4}\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_]+)", line)
        if m:
            ops[m.group(1)] += 1
    return regs, ops


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", type=int, default=90)
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from lite3r.kernels import fp8_quantize, gelu_fp8, layernorm_fp8
    from lite3r.kernels.fp8_common import row_tiling

    def common(K):
        bm, bk, nw = row_tiling(K)
        return (
            nw,
            bm * bk // (32 * nw),
            {
                "BLOCK_M": ("c", bm),
                "BLOCK_K": ("c", bk),
                "EVEN_K": ("c", bk == K),
                "EMULATE_RNE": ("c", False),
            },
        )

    sizes = {"M": "i32:16", "K": "i32:16"}
    cases = []
    for K in (1024, 4096):
        nw, per_thread, c = common(K)
        quant = {"x_ptr": "*bf16", "q_ptr": "*fp8e4nv", "scale_ptr": "*fp32", **sizes, "stride_xm": "i32:16"}
        cases.append(
            (f"quantize K={K}", fp8_quantize._fp8_quantize_rowwise_kernel, {**quant, **c}, nw, per_thread)
        )
    nw, per_thread, c = common(1024)
    ln = {"x_ptr": "*bf16", "w_ptr": "*bf16", "b_ptr": "*bf16", "q_ptr": "*fp8e4nv", "scale_ptr": "*fp32"}
    ln.update(sizes, stride_xm="i32:16", eps="fp32", HAS_WEIGHT=("c", True), HAS_BIAS=("c", True))
    cases.append(("layernorm K=1024", layernorm_fp8._layernorm_fp8_kernel, {**ln, **c}, nw, per_thread))
    nw, per_thread, c = common(4096)
    for bias in (False, True):
        ge = {"h_ptr": "*bf16", "b_ptr": "*bf16", "q_ptr": "*fp8e4nv", "scale_ptr": "*fp32"}
        ge.update(sizes, stride_hm="i32:16", HAS_BIAS=("c", bias))
        name = "gelu K=4096" + (" +bias" if bias else "")
        cases.append((name, gelu_fp8._gelu_fp8_kernel, {**ge, **c}, nw, per_thread))

    print(f"sm_{args.arch}, default tiling (lite3r.kernels.fp8_common.row_tiling), bf16 input\n")
    print("| kernel | warps | elems/thread | regs | SASS instrs | per element | top opcodes |")
    print("|---|---|---|---|---|---|---|")
    for name, fn, kargs, nw, per_thread in cases:
        regs, ops = sass_stats(compile_kernel(fn, kargs, nw, args.arch))
        total = sum(ops.values())
        top = ", ".join(f"{k} {v}" for k, v in ops.most_common(6))
        print(f"| {name} | {nw} | {per_thread} | {regs} | {total} | {total / per_thread:.1f} | {top} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
