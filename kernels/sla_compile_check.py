"""Compile the SLA kernels for Hopper (sm_90a) on any machine, GPU or not, and report their resources.

    python -m lite3r.kernels.sla_compile_check [--quick] [--head-dims 64 128] [--only backward]

Triton's front end, its MLIR passes and the bundled ``ptxas`` run without a GPU, so this catches what
the interpreter cannot (invalid ``tl.dot`` shapes, layouts, type errors in compiled code, shared memory
overflow) and shows registers / spills / shared memory per autotune config. Arguments get the
16-divisibility hints the JIT gives them at VGGT shapes (aligned pointers, strides multiple of 16), so
the software pipeliner behaves as it will on the device (``async`` = cp.async copies in the loop).

Must run without ``TRITON_INTERPRET`` (interpreted kernels cannot be compiled); tests call it in a
subprocess.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

_FLOATS = {"qk_scale", "eps", "sm_scale", "scale"}


# The forward kernel's pointer arguments at VGGT shapes (bf16 q/k/v/o, int16 look-up table).
FORWARD_POINTERS = dict(
    Q="*bf16", K="*bf16", V="*bf16", O="*bf16", OL="*bf16", LSE="*fp32", LUT="*i16", SBLK="*bf16",
    ZBLK="*fp32", STOT="*fp32", ZTOT="*fp32", W="*fp32",
)  # fmt: skip


def _signature(fn, pointers: dict[str, str], consts: dict) -> tuple[dict, dict]:
    sig, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in consts:
            sig[name] = "constexpr"
        elif name in pointers:
            sig[name] = pointers[name]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name in _FLOATS:
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
            if name.startswith("stride"):
                attrs[(i,)] = [["tt.divisibility", 16]]
    return sig, attrs


def compile_for_hopper(
    fn, pointers: dict[str, str], consts: dict, num_warps: int, num_stages: int, maxnreg: int | None = None
):
    """The Triton compiled kernel for sm_90a (``.asm`` holds ttgir, ptx and cubin); no GPU needed."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig, attrs = _signature(fn, pointers, consts)
    src = ASTSource(
        fn=fn, signature=sig, constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()}, attrs=attrs
    )
    options = {"num_warps": num_warps, "num_stages": num_stages}
    if maxnreg:
        options["maxnreg"] = maxnreg
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)


def sass(kernel) -> str:
    """The SASS of a compiled kernel, from the ``nvdisasm`` bundled with Triton."""
    import triton

    nvdisasm = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "nvdisasm")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as f:
            f.write(kernel.asm["cubin"])
        return subprocess.run([nvdisasm, "-c", "-g", path], capture_output=True, text=True, check=True).stdout


def ptxas_resources(kernel) -> tuple[int | None, int]:
    """(registers, spilled bytes) per thread, from the bundled ``ptxas -v`` on the kernel's PTX."""
    import triton

    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.ptx")
        with open(path, "w") as f:
            f.write(kernel.asm["ptx"])
        out = subprocess.run(
            [ptxas, "-arch=sm_90a", "-v", path, "-o", os.devnull], capture_output=True, text=True
        )
    if out.returncode:
        raise RuntimeError(out.stderr)
    regs = re.search(r"Used (\d+) registers", out.stderr)
    spill = re.search(r"(\d+) bytes spill stores", out.stderr)
    return (int(regs.group(1)) if regs else None), (int(spill.group(1)) if spill else 0)


def compile_kernel(
    fn, pointers: dict[str, str], consts: dict, num_warps: int, num_stages: int, maxnreg: int | None = None
) -> dict:
    k = compile_for_hopper(fn, pointers, consts, num_warps, num_stages, maxnreg)
    info = {"shared": k.metadata.shared, "wgmma": "wgmma" in k.asm["ptx"]}
    info["async"] = len(re.findall("async_copy_global_to_local", k.asm["ttgir"]))
    info["regs"], info["spill_bytes"] = ptxas_resources(k)
    return info


def variants(head_dims=(64,), quick=False):
    """(name, kernel, pointer dtypes, constexprs, [(num_warps, num_stages, maxnreg, meta)])."""
    from . import (
        sla_backward_dkdv,
        sla_backward_dq,
        sla_block_select,
        sla_forward,
        sla_forward_tma,
        sla_prepare,
        sla_triton_common,
    )

    bf, f32, lut = "*bf16", "*fp32", "*i16"
    fwd_ptrs = FORWARD_POINTERS
    dq_ptrs = dict(
        Q=bf, K=bf, V=bf, O=bf, OL=bf, DO=bf, DOL=bf, DQ=bf, LSE=f32, DELTA=f32,
        LUT=lut, SQ=bf, ZQ=f32, GBLK=bf, DZBLK=f32,
    )  # fmt: skip
    dkdv_ptrs = dict(
        Q=bf, K=bf, V=bf, DO=bf, DK=bf, DV=bf, LSE=f32, DELTA=f32,
        QLIST="*i32", QOFF="*i64", DSK=bf, DZK=f32,
    )  # fmt: skip
    prep_ptrs = dict(Q=bf, K=bf, V=bf, PQ=f32, PK=f32, SBLK=bf, ZBLK=f32, SPART=f32, ZPART=f32, KPART=f32)
    prep_ptrs.update(KVIRT=bf, VVIRT=bf)
    sel_ptrs = dict(PQ=f32, PK=f32, KMEAN=f32, LUT=lut)

    def cfgs(kernel: str, D: int, linear: int = 1) -> list[tuple[int, int, int | None, dict]]:
        """The configs the autotuner tries for this launch (sla_triton_common.CONFIGS), as (num_warps,
        num_stages, maxnreg, constexpr meta-parameters); ``--quick``: one per kernel, 8 warps, 3 stages."""
        table = sla_triton_common.CONFIGS[kernel]
        chosen = table.get(sla_triton_common.config_class(D, linear), table["d64"])
        keys = [sla_triton_common.config_key(c) for c in chosen]
        if quick:
            return [(8, 3, None, dict(keys[0][3]))]
        return [(w, s, r, dict(meta)) for w, s, r, meta in keys]

    fwd = sla_forward._sla_forward_kernel
    fwd_kinds = {  # name → (LINEAR, FUSE_PROJ, STORE_LSE, RECOMPUTE_STATES, FEATURE, in quick mode)
        "forward inference complement summed": (3, True, False, False, 0, True),
        "forward inference complement": (2, True, False, False, 0, False),
        "forward sparse only": (0, True, False, False, 0, False),
        "forward inference all": (1, True, False, False, 0, False),
        "forward inference recomputed states": (2, True, False, True, 0, False),
        "forward inference softmax-φ": (2, True, False, False, 1, False),
        "forward training complement": (2, False, True, False, 0, True),
    }
    out = []
    for D in head_dims:
        common = dict(BLOCK_M=128, BLOCK_N=64, HEAD_DIM=D, FEATURE=0, HAS_SPECIAL=True, DOT_PRECISION="tf32")
        for name, (lin, fuse, lse, recompute, feature, in_quick) in fwd_kinds.items():
            if quick and not in_quick:
                continue
            consts = {**common, "LINEAR": lin, "FUSE_PROJ": fuse, "STORE_LSE": lse}
            consts.update(RECOMPUTE_STATES=recompute, FEATURE=feature, FAST_MAP=True)
            out.append((f"{name} D{D}", fwd, fwd_ptrs, consts, cfgs("forward", D, lin)))
        # the TMA forward (inference; the descriptors are 2-D boxes of one key block)
        desc = f"tensordesc<bf16[64, {D}]>"
        # the complement sums arrive augmented ([S_i | z_i] rows in bf16: complement_sums_augmented)
        tma_ptrs = dict(Q=bf, k_desc=desc, v_desc=desc, O=bf, LUT=lut, STOT=bf, ZTOT=bf, W=f32)
        tma_consts = dict(BLOCK_M=128, BLOCK_N=64, HEAD_DIM=D, FEATURE=0, LINEAR=3, DOT_PRECISION="tf32")
        out.append(
            (
                f"forward TMA complement summed D{D}",
                sla_forward_tma._sla_forward_tma_kernel,
                tma_ptrs,
                tma_consts,
                cfgs("forward_tma", D, 3),
            )
        )
        bwd_kinds = {"complement": (2, True), "all": (1, False), "sparse only": (0, False)}
        for kind, (lin, in_quick) in bwd_kinds.items():
            if quick and not in_quick:
                continue
            dq, dkdv = sla_backward_dq._sla_backward_dq_kernel, sla_backward_dkdv._sla_backward_dkdv_kernel
            consts = {**common, "LINEAR": lin}
            dq_consts = {**consts, "FAST_MAP": True}
            out.append((f"backward dQ {kind} D{D}", dq, dq_ptrs, dq_consts, cfgs("backward_dq", D, lin)))
            out.append(
                (f"backward dK/dV {kind} D{D}", dkdv, dkdv_ptrs, consts, cfgs("backward_dkdv", D, lin))
            )
        prep = dict(BLOCK_Q=128, BLOCK_K=64, HEAD_DIM=D, FEATURE=0, LINEAR=2, STORE_STATES=True)
        prep.update(HAS_SPECIAL=True, DOT_PRECISION="tf32", TOTALS=False, WRITE_VIRTUAL=True, AUGMENTED=True)
        prep_cfg = [(4 if D <= 64 else 8, 3, None, {})]
        for fused in (False, True):  # fused: after qk_norm_rope_sla (no q pooling, k in virtual order)
            consts = {**prep, "POOL_Q": not fused, "K_VIRTUAL": fused}
            name = f"prepare complement{' fused-qk' if fused else ''} D{D}"
            out.append((name, sla_prepare._sla_prepare_kernel, prep_ptrs, consts, prep_cfg))
        # qk-norm + RoPE for the fused-qk path: q with its query-block means, k in virtual key order
        from . import qk_norm_rope

        qk_ptrs = dict(X=bf, OUT=bf, W=f32, BIAS=f32, COS=f32, SIN=f32, POOLED=f32)
        qk = dict(HEAD_DIM=D, HAS_NORM=True, HAS_ROPE=True)
        for name, extra in (
            (
                "qk-norm-rope q pooled",
                dict(BLOCK_ROWS=64, POOL=True, POOL_ROWS=128, VIRTUAL=False, HAS_SPECIAL=False),
            ),
            (
                "qk-norm-rope k virtual",
                dict(BLOCK_ROWS=64, POOL=False, POOL_ROWS=0, VIRTUAL=True, HAS_SPECIAL=True),
            ),
        ):
            out.append(
                (
                    f"{name} D{D}",
                    qk_norm_rope._qk_norm_rope_kernel,
                    qk_ptrs,
                    {**qk, **extra},
                    [(8, 1, None, {})],
                )
            )
        sel = dict(ROWS=sla_block_select.ROWS, CHUNK=32, HEAD_DIM=D, RADIX_BITS=4, PASSES=8, NB=16)
        sel.update(DOT_PRECISION="tf32x3")
        out.append(
            (
                f"block select D{D}",
                sla_block_select._sla_block_select_kernel,
                sel_ptrs,
                sel,
                [(8, 1, None, {})],
            )
        )
    # The complement map (inference: rows from the LUT; backward: transposed, rows from the inverse LUT).
    from . import sla_complement_map

    for name, csr, list_ptr in (("complement map", False, lut), ("complement map transposed", True, "*i32")):
        ptrs = dict(LUT=list_ptr, LOFF="*i64", ZBLK=f32, ZTOT=f32, C=bf, ZQ=f32)
        consts = dict(BLOCK_C=sla_complement_map._BLOCK_C, BLOCK_T=sla_complement_map._BLOCK_T)
        consts.update(HEAD_DIM=64, WITH_Z=True, CSR=csr)
        out.append((name, sla_complement_map._complement_map_kernel, ptrs, consts, [(4, 1, None, {})]))
    # The fixed-order row sums (k̄, S_tot, z_tot) and the selection scores (float64 MMA, float32 out).
    from . import sla_select_scores, sla_sum_rows

    out.append(
        (
            "row sums",
            sla_sum_rows._sum_rows_kernel,
            {"X": f32, "Y": f32},
            dict(BLOCK_R=sla_sum_rows._ROWS, BLOCK_C=sla_sum_rows._COLS),
            [(4, 1, None, {})],
        )
    )
    sc_ptrs = dict(PQ=f32, PK=f32, KMEAN=f32, S=f32)
    sc_consts = dict(BLOCK_M=sla_select_scores._BLOCK_M, BLOCK_N=sla_select_scores._BLOCK_N, HEAD_DIM=64)
    out.append(
        ("selection scores", sla_select_scores._select_scores_kernel, sc_ptrs, sc_consts, [(4, 1, None, {})])
    )
    # The row top-k of the block selection: float32 scores in, int16 LUT out; one config per row width
    # the VGGT shapes use (32 / 128 frames at 64-token key blocks: 687 / 2,748 columns) and the maximum.
    from . import sla_topk_rows

    topk_ptrs = {"S": "*fp32", "LUT": "*i16"}
    for cols in (1024,) if quick else (1024, 4096, sla_topk_rows.MAX_COLS):
        rows, warps = sla_topk_rows._launch_shape(cols)
        consts = dict(ROWS=rows, BLOCK_C=cols)
        out.append(
            (f"topk rows C{cols}", sla_topk_rows._topk_rows_kernel, topk_ptrs, consts, [(warps, 1, None, {})])
        )
    return out


def main(argv=None) -> int:
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("unset TRITON_INTERPRET: interpreted kernels cannot be compiled", file=sys.stderr)
        return 2
    ap = argparse.ArgumentParser(description="compile the SLA kernels for sm_90a and report resources")
    ap.add_argument("--quick", action="store_true", help="one config of each kernel")
    ap.add_argument("--head-dims", type=int, nargs="*", default=[64])
    ap.add_argument("--only", default=None, help="only the kernels whose name contains this text")
    args = ap.parse_args(argv)
    failures = 0
    for name, fn, ptrs, consts, cfgs in variants(tuple(args.head_dims), args.quick):
        if args.only and args.only not in name:
            continue
        for w, s, r, meta in cfgs:
            cap = f" maxnreg={r}" if r else ""
            cap += "".join(f" {k}={v}" for k, v in meta.items())
            try:
                info = compile_kernel(fn, ptrs, {**consts, **meta}, w, s, r)
                print(f"ok   {name:<40} warps={w} stages={s}{cap} {info}", flush=True)
            except Exception as e:  # report every failure, then exit non-zero
                failures += 1
                print(
                    f"FAIL {name:<40} warps={w} stages={s}{cap}: {type(e).__name__}: {str(e)[:2000]}",
                    flush=True,
                )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
