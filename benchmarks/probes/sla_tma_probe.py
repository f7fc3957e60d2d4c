"""Does loading the selected key blocks with TMA make the SLA forward faster? (GPU probe)

    python benchmarks/probes/sla_tma_probe.py [--frames 32 64 128] [--settings 2,8,3,128 ...]
        [--repeats 40] [--out DIR]

At VGGT shapes on the module's inference path (complement branch, summed states, fused projection,
10 % kept), in one process and interleaved (the gather kernel first and again last, so drift within
the run shows), CUDA-graph replay times of:

- ``gather``: ``kernels/sla_forward.py`` (autotuned; cp.async gathers with the virtual → physical key
  mapping), what ``SLAConfig(key_loads="gather")`` runs;
- ``tma``: ``kernels/sla_forward_tma.py`` (autotuned; TMA boxes from the prepare pass's virtual-order
  K/V copies, no mapping), what ``key_loads="tma"`` runs;
- ``tma P,W,S[,R]``: the TMA kernel with a fixed launch setting: PAIR key blocks per step, W warps,
  S pipeline stages, R registers per thread at most;
- ``prepare`` with and without the virtual K/V copies (their cost), and the whole module with each
  key-load path.

Every kernel output is checked against the gather kernel's (max |Δ| relative to max |o|).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SETTINGS = ["2,8,3,128", "2,8,2,128", "1,8,3,128", "2,4,3", "2,8,3"]


def _time(frames: int, keep: float, repeats: int, settings: list[str]) -> list[dict]:
    from functools import partial

    import torch
    from bench_sla_attention import DEVICE, DTYPE, HEAD_DIM, HEADS, TOKENS, graph_ms, sla_module

    from lite3r.kernels import sla_forward, sla_forward_tma, sla_linear_domain, sla_ops

    n = frames * TOKENS
    torch.manual_seed(0)
    qkv = torch.randn(1, n, 3, HEADS, HEAD_DIM, device=DEVICE, dtype=DTYPE)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    m = sla_module(keep, special=5, key_loads="tma")
    m_gather = sla_module(keep, special=5, key_loads="gather")
    m_gather.load_state_dict(m.state_dict())
    geom = m.geometry(n, TOKENS)
    g = sla_ops.geom_to_list(geom)
    none = q.new_empty(0, dtype=torch.float32)
    flops = 4 * HEADS * geom.n_qblocks * geom.topk * geom.block_q * geom.block_k * HEAD_DIM
    w = m.proj_lin.weight
    kw = dict(feature="elu", linear="complement", eps=m.config.eps, scale=m.scale)
    rows = []
    with torch.no_grad():
        prep = partial(sla_ops.sla_prepare_op, q, k, v, g, "elu", "complement", True, False)
        pq, pk, km, sb, zb, _, _, kv, vv = prep(True)
        lut = sla_ops.sla_block_select_op(pq, pk, km, g)
        s_q, z_q = sla_linear_domain.complement_sums(lut, sb, zb, geom.n_kblocks, transpose=False)

        def gather():
            return sla_forward.sla_forward(
                q, k, v, lut, none, none, s_q, z_q, w, geom, fuse_proj=True, summed_states=True, **kw
            )[0]

        def tma(setting=None):
            if setting is None:
                return lambda: sla_forward_tma.sla_forward_tma(q, kv, vv, lut, s_q, z_q, w, geom, **kw)
            pair, warps, stages, *reg = map(int, setting.split(","))
            launch = {"num_warps": warps, "num_stages": stages, **({"maxnreg": reg[0]} if reg else {})}
            return lambda: sla_forward_tma.sla_forward_tma(
                q, kv, vv, lut, s_q, z_q, w, geom, pair=pair, launch=launch, **kw
            )

        ref = gather().float()
        kernels = [("gather", gather), ("tma", tma())] + [(f"tma {c}", tma(c)) for c in settings]
        kernels.append(("gather (again)", gather))
        for name, fn in kernels:
            try:
                err = ((fn().float() - ref).abs().max() / ref.abs().max()).item()
                ms = graph_ms(fn, repeats)
            except Exception as exc:  # a setting that does not compile or fit: reported, not hidden
                rows.append({"frames": frames, "what": name, "error": f"{type(exc).__name__}: {exc}"[:300]})
                print(rows[-1], flush=True)
                continue
            rows.append(
                {"frames": frames, "what": name, "ms": ms, "tflops": flops / ms / 1e9, "max_rel_err": err}
            )
            print(rows[-1], flush=True)
        for name, fn in [
            ("prepare, no copies", partial(prep, False)),
            ("prepare + virtual K/V copies", partial(prep, True)),
            ("module, gather", partial(m_gather.attend, q, k, v, frame_len=TOKENS)),
            ("module, tma", partial(m.attend, q, k, v, frame_len=TOKENS)),
        ]:
            rows.append({"frames": frames, "what": name, "ms": graph_ms(fn, repeats)})
            print(rows[-1], flush=True)
    rows.append(
        {"frames": frames, "what": "autotune (tma)", "choice": str(sla_forward_tma.autotune_choices())}
    )
    return rows


def _module_ab(frames: int, keep: float, repeats: int, rounds: int) -> list[dict]:
    """The module with each key-load path, alternating for ``rounds`` rounds (graph replays), and the
    device time of every kernel of one call of each (torch.profiler)."""
    from functools import partial

    import torch
    from bench_sla_attention import (
        DEVICE,
        DTYPE,
        HEAD_DIM,
        HEADS,
        TOKENS,
        gpu_kernel_us,
        graph_ms,
        sla_module,
    )

    torch.manual_seed(0)
    qkv = torch.randn(1, frames * TOKENS, 3, HEADS, HEAD_DIM, device=DEVICE, dtype=DTYPE)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    mods = {loads: sla_module(keep, special=5, key_loads=loads) for loads in ("gather", "tma")}
    mods["tma"].load_state_dict(mods["gather"].state_dict())
    rows = []
    with torch.no_grad():
        calls = {loads: partial(m.attend, q, k, v, frame_len=TOKENS) for loads, m in mods.items()}
        for r in range(rounds):
            for loads, fn in calls.items():
                rows.append(
                    {"frames": frames, "what": f"module, {loads}", "round": r, "ms": graph_ms(fn, repeats)}
                )
                print(rows[-1], flush=True)
        for loads, fn in calls.items():
            rows.append({"frames": frames, "what": f"kernels of one call, {loads}", "us": gpu_kernel_us(fn)})
            print(rows[-1], flush=True)
    return rows


def _pipelined(m, q, k, v, groups: int, streams):
    """The module's inference path split into ``groups`` head groups: prepare, selection and complement
    sums of group g+1 (memory-bound, high-priority stream) run while the TMA kernel of group g
    (compute-bound, low-priority stream) runs; everything joins the caller's stream at the end."""
    import torch
    from bench_sla_attention import TOKENS

    from lite3r.kernels import sla_forward_tma, sla_linear_domain, sla_ops

    B, H, N, D = q.shape
    geom = m.geometry(N, TOKENS)
    g = sla_ops.geom_to_list(geom)
    w = m.proj_lin.weight
    main = torch.cuda.current_stream()
    prep_s, kern_s = streams
    o = torch.empty(B, N, H, D, device=q.device, dtype=q.dtype).transpose(1, 2)
    prep_s.wait_stream(main)
    kern_s.wait_stream(main)
    hg = H // groups
    keep_alive = []  # every group's tensors live until the join: they were allocated on prep_s, and a
    # tensor freed early could be reused by the next group's prepare while its kernel still reads it
    for i in range(groups):
        sl = slice(i * hg, (i + 1) * hg)
        qg, kg, vg = q[:, sl], k[:, sl], v[:, sl]
        with torch.cuda.stream(prep_s):
            pq, pk, km, sb, zb, _, _, kv, vv = sla_ops.sla_prepare_op(
                qg, kg, vg, g, "elu", "complement", True, False, True
            )
            lut = sla_ops.sla_block_select_op(pq, pk, km, g)
            s_q, z_q = sla_linear_domain.complement_sums(lut, sb, zb, geom.n_kblocks, transpose=False)
            ready = torch.cuda.Event()
            ready.record(prep_s)
            keep_alive.append((pq, pk, km, sb, zb, kv, vv, lut, s_q, z_q))
        with torch.cuda.stream(kern_s):
            kern_s.wait_event(ready)
            sla_forward_tma.sla_forward_tma(
                qg, kv, vv, lut, s_q, z_q, w, geom, feature="elu", linear="complement", eps=m.config.eps,
                scale=m.scale, out=o[:, sl],
            )  # fmt: skip
    main.wait_stream(prep_s)
    main.wait_stream(kern_s)
    return o


def _pipeline_ab(frames: int, keep: float, repeats: int, rounds: int) -> list[dict]:
    """The module (TMA key loads) against the head-group pipeline with 2 and 4 groups, alternating."""
    from functools import partial

    import torch
    from bench_sla_attention import DEVICE, DTYPE, HEAD_DIM, HEADS, TOKENS, graph_ms, sla_module

    torch.manual_seed(0)
    qkv = torch.randn(1, frames * TOKENS, 3, HEADS, HEAD_DIM, device=DEVICE, dtype=DTYPE)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    m = sla_module(keep, special=5, key_loads="tma")
    lo, hi = torch.cuda.Stream.priority_range()
    streams = (torch.cuda.Stream(priority=hi), torch.cuda.Stream(priority=lo))
    rows = []
    with torch.no_grad():
        ref = m.attend(q, k, v, frame_len=TOKENS).float()
        calls = {"module, tma": partial(m.attend, q, k, v, frame_len=TOKENS)}
        for groups in (2, 4):
            calls[f"pipelined, {groups} head groups"] = partial(_pipelined, m, q, k, v, groups, streams)
        for name, fn in calls.items():
            err = ((fn().float() - ref).abs().max() / ref.abs().max()).item()
            rows.append({"frames": frames, "what": name, "max_rel_err": err})
            print(rows[-1], flush=True)
        for r in range(rounds):
            for name, fn in calls.items():
                rows.append({"frames": frames, "what": name, "round": r, "ms": graph_ms(fn, repeats)})
                print(rows[-1], flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, nargs="*", default=[32, 64, 128])
    ap.add_argument("--keep", type=float, default=0.1)
    ap.add_argument("--repeats", type=int, default=40)
    ap.add_argument("--settings", nargs="*", default=SETTINGS, help="PAIR,warps,stages[,maxnreg] per launch")
    ap.add_argument("--module-rounds", type=int, default=0, help="only the module A/B, this many rounds")
    ap.add_argument("--pipeline-rounds", type=int, default=0, help="only the head-group pipeline A/B")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    import torch
    from provenance import write_rows

    if not torch.cuda.is_available():
        raise SystemExit("sla_tma_probe needs a CUDA GPU")
    rows = []
    for frames in args.frames:
        if args.pipeline_rounds:
            rows += _pipeline_ab(frames, args.keep, args.repeats, args.pipeline_rounds)
        elif args.module_rounds:
            rows += _module_ab(frames, args.keep, args.repeats, args.module_rounds)
        else:
            rows += _time(frames, args.keep, args.repeats, args.settings)
    out = Path(args.out or "benchmarks/results") / "sla"
    name = (
        "sla_tma_pipeline_ab"
        if args.pipeline_rounds
        else "sla_tma_module_ab"
        if args.module_rounds
        else "sla_tma_probe"
    )
    cols = ["frames", "what", "ms", "tflops", "max_rel_err"]
    write_rows(out / f"{name}.json", rows, cols, table_rows=[r for r in rows if "ms" in r], keep=args.keep)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
