"""What the SLA forward kernel's softmax costs, and whether cheaper exponentials buy speed (GPU probe).

    python benchmarks/probes/sla_softmax_probe.py [--frames 32 64 128] [--variants ...] [--out DIR]
    python benchmarks/probes/sla_softmax_probe.py --sass-only      # instruction counts, no GPU needed

At head_dim 64 one 128 × 128 tile costs the tensor cores about as many cycles (4.2 MFLOP at 4,096
FLOP/clk/SM) as its 16,384 exponentials cost the MUFU unit (16/clk/SM), and the kernel runs at about a
third of both, so the MMAs, the exponentials and the rest of the softmax do not overlap. This probe
times copies of ``kernels/sla_forward.py`` whose online-softmax step is rewritten (the source of
``_attend_cols`` patched at import, nothing else changed), at VGGT shapes on the module's inference
path (complement branch, summed states, fused projection, 10 % kept):

- ``base``: the kernel as it is (``tl.exp2``: one MUFU.EX2 per score);
- ``no_exp``: the exponential removed (wrong values; an upper bound for any cheaper exponential);
- ``no_rescale``: the accumulator is not rescaled by α (wrong values; what lazy rescaling could buy);
- ``poly``: 2^x by a degree-3 polynomial on the FMA pipe and an exponent add (FlashAttention-4's trick)
  for every score;
- ``poly_half``: the polynomial for the second key block of each pair, MUFU for the first;
- ``bf16_mufu``: ``ex2.approx.ftz.bf16x2`` (MUFU.EX2.BF16), whose bf16 result feeds the P·V MMA as is.

Every variant's output is compared with ``base`` (max |Δ| relative to max |o|), so the table says what
each exponential costs in accuracy as well as in time.
"""

from __future__ import annotations

import argparse
import atexit
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

_P_LINE = "    p = tl.exp2(qk * qk_scale - m_new[:, None])\n    l_i = l_i * alpha + tl.sum(p, axis=1)\n"
_ACC_LINE = "acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)"

_HELPERS = '''

@triton.jit
def _ex2_poly(x):
    """2^x for x ≤ 0 on the FMA pipe: round x to n, 2^(x−n) by a cubic, n added to the exponent bits."""
    x = tl.maximum(x, -126.0)
    t = x + 12582912.0  # 1.5·2^23: the nearest integer n lands in the low mantissa bits
    f = x - (t - 12582912.0)  # in [-0.5, 0.5]
    p = 0.0555041086648216 * f + 0.2402265069591007
    p = p * f + 0.6931471805599453
    p = p * f + 1.0
    bits = (t.to(tl.int32, bitcast=True) << 23) + p.to(tl.int32, bitcast=True)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _ex2_bf16(x):
    """2^x on the MUFU in bf16 (two lanes per register); the result is the MMA operand."""
    return tl.inline_asm_elementwise(
        "ex2.approx.ftz.bf16x2 $0, $1;", "=r,r", [x.to(tl.bfloat16)], dtype=tl.bfloat16, is_pure=True, pack=2
    )

'''

VARIANTS = {
    "base": [],
    "no_exp": [
        (
            _P_LINE,
            _P_LINE.replace("tl.exp2(qk * qk_scale - m_new[:, None])", "qk * qk_scale - m_new[:, None]"),
        )
    ],
    "no_rescale": [(_ACC_LINE, _ACC_LINE.replace("acc * alpha[:, None]", "acc"))],
    "poly": [(_P_LINE, _P_LINE.replace("tl.exp2(", "_ex2_poly("))],
    "poly_half": [
        (
            _P_LINE,
            "    x = qk * qk_scale - m_new[:, None]\n"
            "    half = tl.arange(0, x.shape[1]) >= x.shape[1] // 2\n"
            "    p = tl.where(half[None, :], _ex2_poly(x), tl.exp2(x))\n"
            "    l_i = l_i * alpha + tl.sum(p, axis=1)\n",
        )
    ],
    "lane_sums": [
        (
            "    l_i = l_i * alpha + tl.sum(p, axis=1)\n",
            "    l_i = l_i * alpha[:, None] + tl.sum(tl.reshape(p, [p.shape[0], p.shape[1] // 8, 8]), axis=1)\n",
        ),
        (
            "    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)\n",
            "    l_i = tl.zeros([BLOCK_M, 8], dtype=tl.float32)\n",
        ),
        ("    out = acc / l_i[:, None]\n", "    l_i = tl.sum(l_i, axis=1)\n    out = acc / l_i[:, None]\n"),
    ],
    "bf16_mufu": [
        (
            _P_LINE,
            "    p = _ex2_bf16(qk * qk_scale - m_new[:, None])\n"
            "    l_i = l_i * alpha + tl.sum(p.to(tl.float32), axis=1)\n",
        )
    ],
}

_TMP = tempfile.mkdtemp(prefix="sla_softmax_probe_")  # the variant sources (Triton reads them back)
atexit.register(shutil.rmtree, _TMP, ignore_errors=True)


def variant_module(name: str):
    """A copy of ``lite3r.kernels.sla_forward`` with the variant's source edits (its own autotuners)."""
    from lite3r.kernels import sla_forward

    src = Path(sla_forward.__file__).read_text()
    src = src.replace("LOG2E = 1.4426950408889634\n", "LOG2E = 1.4426950408889634\n" + _HELPERS, 1)
    for old, new in VARIANTS[name]:
        if old not in src:
            raise RuntimeError(f"variant {name}: the kernel source changed; {old!r} not found")
        src = src.replace(old, new, 1)
    path = Path(_TMP) / f"sla_forward_{name}.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(f"lite3r.kernels._sla_forward_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def sass_counts(name: str, warps: int = 8, stages: int = 3) -> dict:
    """Per-iteration opcode counts of the variant's MMA loops, compiled for sm_90a (CPU is enough)."""
    from probes.sla_sass_mix import loop_mixes

    from lite3r.kernels.sla_compile_check import FORWARD_POINTERS, compile_for_hopper, sass

    mod = variant_module(name)
    consts = dict(
        BLOCK_M=128, BLOCK_N=64, HEAD_DIM=64, FEATURE=0, HAS_SPECIAL=True, DOT_PRECISION="tf32",
        LINEAR=3, FUSE_PROJ=True, STORE_LSE=False, RECOMPUTE_STATES=False, PAIR=2, FAST_MAP=True,
    )  # fmt: skip
    k = compile_for_hopper(mod._sla_forward_kernel, FORWARD_POINTERS, consts, warps, stages, 128)
    loops = loop_mixes(sass(k))
    if not loops:
        return {}
    # the main loop: the last of the loops with the most MMAs (the first walks the special-token blocks)
    main = [lp for lp in loops if lp["opcodes"]["HGMMA"] == loops[0]["opcodes"]["HGMMA"]][-1]
    return {"instructions": main["instructions"], "opcodes": main["opcodes"]}


def _time_variants(frames: int, names: list[str], keep: float, repeats: int) -> list[dict]:
    import torch
    from bench_sla_attention import DEVICE, DTYPE, HEAD_DIM, HEADS, TOKENS, median_ms, sla_module

    from lite3r.kernels import sla_linear_domain, sla_ops

    n = frames * TOKENS
    torch.manual_seed(0)
    qkv = torch.randn(1, n, 3, HEADS, HEAD_DIM, device=DEVICE, dtype=DTYPE)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    m = sla_module(keep, special=5)
    geom = m.geometry(n, TOKENS)
    g = sla_ops.geom_to_list(geom)
    none = q.new_empty(0, dtype=torch.float32)
    flops = 4 * HEADS * geom.n_qblocks * geom.topk * geom.block_q * geom.block_k * HEAD_DIM
    rows, ref = [], None
    with torch.no_grad():
        pq, pk, km, sb, zb, *_ = sla_ops.sla_prepare_op(q, k, v, g, "elu", "complement", True, False)
        lut = sla_ops.sla_block_select_op(pq, pk, km, g)
        s_q, z_q = sla_linear_domain.complement_sums(lut, sb, zb, geom.n_kblocks, transpose=False)
        for name in names:
            mod = variant_module(name)

            def run(mod=mod):
                return mod.sla_forward(
                    q, k, v, lut, none, none, s_q, z_q, m.proj_lin.weight, geom, feature="elu",
                    linear="complement", eps=m.config.eps, scale=m.scale, fuse_proj=True, summed_states=True,
                )[0]  # fmt: skip

            out = run().float()
            if ref is None:
                ref = out
            err = ((out - ref).abs().max() / ref.abs().max()).item()
            ms = median_ms(run, repeats)
            row = {
                "frames": frames,
                "variant": name,
                "ms": ms,
                "tflops": flops / ms / 1e9,
                "max_rel_err": err,
            }
            print(
                {key: round(val, 4) if isinstance(val, float) else val for key, val in row.items()},
                flush=True,
            )
            rows.append(row)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, nargs="*", default=[32, 64, 128])
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--keep", type=float, default=0.1)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--sass-only", action="store_true", help="print per-iteration instruction counts only")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    names = ["base"] + [v for v in args.variants if v != "base"]
    if args.sass_only:
        if os.environ.get("TRITON_INTERPRET") == "1":
            raise SystemExit("--sass-only compiles kernels: run it without TRITON_INTERPRET")
        for name in names:
            c = sass_counts(name)
            top = ", ".join(f"{k} {v}" for k, v in list(c.get("opcodes", {}).items())[:10])
            print(f"{name:12s} {c.get('instructions')} instructions / iteration: {top}")
        return 0

    import torch
    from provenance import markdown_table, write_result

    if not torch.cuda.is_available():
        raise SystemExit("sla_softmax_probe needs a CUDA GPU (or --sass-only)")
    rows = []
    for frames in args.frames:
        rows += _time_variants(frames, names, args.keep, args.repeats)
    sass = {name: sass_counts(name) for name in names}
    for r in rows:
        r["loop_instructions"] = sass[r["variant"]].get("instructions")
    out = Path(args.out or "benchmarks/results") / "sla"
    cols = ["frames", "variant", "ms", "tflops", "max_rel_err", "loop_instructions"]
    write_result(
        out / "sla_softmax_probe.json",
        {"rows": rows, "keep": args.keep, "sass": sass},
        markdown_table(rows, cols),
    )
    print(markdown_table(rows, cols))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
