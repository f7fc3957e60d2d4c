"""Where a lite3r-tiny training step spends its time on the GPU (CUDA).

    python benchmarks/probes/tiny_step_profile.py [--views-per-step 192] [--views 8] [--out DIR]

Why: the training step runs ~600 views/s at 192 views per step (``tiny_throughput.md``), a few percent
of the H100 for a 15 M-parameter model, and lite3r-tiny's quality is limited by training steps. This
probe splits one fwd+bwd into the trunk and each head (fwd+bwd on detached features), the loss, and the
optimiser, times the heads in float32 (as the reference, and train_tiny) and under bf16 autocast (also in
the full step, as ``--heads-bf16`` runs it), and
lists the top CUDA kernels of a full step (torch.profiler). Writes tiny_step_profile.json + .md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_synthetic import timed, train_step_fn
from provenance import markdown_table, write_result

from lite3r.training.data.synthetic import SynthConfig, render_batch, train_step_seeds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--views-per-step", type=int, default=192)
    p.add_argument("--views", type=int, default=8, help="views per scene (S)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--top", type=int, default=30, help="CUDA kernels listed")
    p.add_argument("--device", default="cuda", help="cpu: a quick check of the probe itself")
    p.add_argument("--out")
    a = p.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("tiny_step_profile needs CUDA")
    from lite3r.training.losses import LossConfig, targets_from_batch, vggt_loss
    from lite3r.training.tiny import build_tiny

    b = torch.backends
    b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32, b.cudnn.benchmark = True, True, True  # as train_tiny
    dev = torch.device(a.device)
    S, B = a.views, a.views_per_step // a.views
    seeds, _ = train_step_seeds(0, 7, B, (S, S))
    r = render_batch(seeds, S, 224, dev, SynthConfig(supersample=2))
    data = {"images": r.images, "depth": r.depth, "valid": r.valid, "extrinsics": r.extrinsics,
            "intrinsics": r.intrinsics, "world_points": r.world_points}  # fmt: skip
    model = build_tiny("tiny", point_head=True).to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=dev.type == "cuda")
    cfg = LossConfig()
    bf16 = lambda: torch.autocast(dev.type, dtype=torch.bfloat16)
    rows = []

    def add(what, fn):
        ms = timed(fn, dev, a.repeats, warmup=2)[0] * 1e3
        peak = None
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            fn()
            peak = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        rows.append(
            {"what": what, "ms": round(ms, 2), "views_per_s": round(B * S / ms * 1e3, 1), "peak_gib": peak}
        )
        print(rows[-1], flush=True)

    full_step = train_step_fn(model, data, opt, grad_clip=1.0)  # as train_tiny runs it

    add("full step (train_tiny)", full_step)
    model.dpt_autocast = True
    add("full step, DPT heads bf16 (--heads-bf16)", full_step)
    model.dpt_autocast = False

    def trunk():
        with bf16():
            feats = model.encode(data["images"])
        sum(t.float().square().mean() for t in feats.layers.values()).backward()

    add("trunk fwd+bwd", trunk)
    with torch.no_grad(), bf16():
        feats = model.encode(data["images"])
    leaf = {i: t.detach().requires_grad_() for i, t in feats.layers.items()}
    feats = type(feats)(layers=leaf, patch_start_idx=feats.patch_start_idx, image_hw=feats.image_hw,
                        num_layers=feats.num_layers)  # fmt: skip
    hw = tuple(data["images"].shape[-2:])
    heads = {
        "camera head": lambda: model.camera_head(feats.layer(-1)),
        "depth head": lambda: model.depth_head(feats.layers, hw, feats.patch_start_idx, 8),
        "point head": lambda: model.point_head(feats.layers, hw, feats.patch_start_idx, 8),
    }
    for name, head in heads.items():
        for prec, ctx in (("fp32", lambda: torch.autocast(dev.type, enabled=False)), ("bf16", bf16)):

            def run(head=head, ctx=ctx):
                with ctx():
                    out = head()
                out = out if isinstance(out, (list, tuple)) else [out]
                sum(o.float().square().mean() for o in out if torch.is_tensor(o)).backward()

            add(f"{name} fwd+bwd {prec}", run)
    with bf16():
        preds = {
            k: (v.detach() if torch.is_tensor(v) else [x.detach() for x in v])
            for k, v in model(data["images"]).items()
        }
    for k in ("depth", "depth_conf", "world_points", "world_points_conf"):
        preds[k].requires_grad_()
    preds["pose_enc_list"] = [x.requires_grad_() for x in preds["pose_enc_list"]]

    def loss_only():
        vggt_loss(preds, targets_from_batch(data, cfg), cfg)[0].backward()

    add("loss fwd+bwd", loss_only)
    model.zero_grad()
    full_step()

    def optim():
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    add("clip + AdamW", optim)
    full_step()
    if dev.type != "cuda":
        print(markdown_table(rows))
        return 0
    torch.cuda.synchronize()
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        full_step()
        torch.cuda.synchronize()
    ev = [e for e in prof.key_averages() if e.device_time_total > 0]
    ev.sort(key=lambda e: e.device_time_total, reverse=True)
    total = sum(e.device_time_total for e in ev)
    kernels = [{"kernel": e.key[:90], "calls": e.count, "ms": round(e.device_time_total / 1e3, 2),
                "share": round(e.device_time_total / total, 3)} for e in ev[: a.top]]  # fmt: skip
    result = {"views_per_step": B * S, "views": S, "scenes": B, "rows": rows, "kernels_total_ms": total / 1e3,
              "kernels": kernels}  # fmt: skip
    md = markdown_table(rows) + "\n\nTop CUDA kernels of one full step:\n\n" + markdown_table(kernels)
    out = Path(a.out or "benchmarks/results/tiny/throughput")
    write_result(out / "tiny_step_profile.json", result, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
