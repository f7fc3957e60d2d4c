"""How a VGGT-family model's global attention spreads over frames (CPU or CUDA).

    python benchmarks/probes/cross_frame_attention.py --weights assets/lite3r-tiny [--scenes 8 --views 4]

Why (issue #6): lite3r-tiny learns depth but not pose. Pose needs cross-view matching, and matching
shows in the global blocks' attention. Per global block and head, on SynthMV test scenes, this prints:

* ``cross``: attention mass of a patch query on the other frames' tokens. Attention that ignores
  which frame a key comes from gives exactly 1 - 1/S.
* ``same_pos``: mass on the other frames' patches at the query's own grid position (RoPE makes
  these free: every frame has the same positions), next to the uniform share 1/P.
* ``gt_match``: mass on the other frames' patch that sees the query's 3-D point (GT, occlusion-tested),
  next to ``same_pos`` for the queries whose GT patch moved.
* ``special``: mass on the camera and register tokens of all frames (attention sinks).
* ``entropy``: normalised by log N.

Writes cross_frame_attention.json + .md via provenance (``--out``, ``$OUT`` or benchmarks/results/tiny).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from provenance import markdown_table, write_result

from lite3r.models.vggt.attention_capture import GlobalQKCapture
from lite3r.models.vggt.model import VGGT
from lite3r.training.correspondence import patch_correspondences
from lite3r.training.data.synthetic import SynthConfig, render_batch, split_seeds
from lite3r.training.losses import LossConfig, targets_from_batch


def load(weights: str) -> VGGT:
    """An exported folder (config.json + model.safetensors) or a train_tiny hand-over folder."""
    folder = Path(weights)
    if (folder / "handover.json").is_file():
        import json

        from safetensors.torch import load_file

        from lite3r.training.tiny import build_tiny

        cfg = json.loads((folder / "handover.json").read_text())["config"]
        extra = {"global_rope": False} if cfg.get("global_rope") is False else {}
        model = build_tiny(cfg["preset"], point_head=cfg["point_head"], **extra)
        model.load_state_dict(
            {k: v.float() for k, v in load_file(str(folder / "handover.safetensors")).items()}
        )
        return model
    return VGGT.from_pretrained(folder)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default="assets/lite3r-tiny")
    p.add_argument("--scenes", type=int, default=8)
    p.add_argument("--views", type=int, default=4)
    p.add_argument("--label", default=None, help="name in the output file (default: the folder name)")
    p.add_argument("--out")
    a = p.parse_args(argv)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model = load(a.weights).to(dev).eval()
    agg = model.aggregator
    size = agg.cfg.img_size
    b = render_batch(split_seeds("test", a.scenes), a.views, size, dev, SynthConfig())
    batch = {"images": b.images, "depth": b.depth, "valid": b.valid, "extrinsics": b.extrinsics,
             "intrinsics": b.intrinsics}  # fmt: skip
    tg = targets_from_batch(batch, LossConfig())
    corr = patch_correspondences(tg.world_points, tg.valid, tg.depth, tg.extrinsics, tg.intrinsics,
                                 agg.patch_size, 0.05)  # fmt: skip
    with (
        torch.no_grad(),
        GlobalQKCapture(model, tuple(range(len(agg.global_blocks))), grad_only=False) as cap,
    ):
        model(b.images)
        got = cap.pop()
    rows = []
    S, s0 = a.views, agg.patch_start_idx
    for layer, (q, k, P) in sorted(got.items()):
        att = torch.softmax((q.float() @ k.float().transpose(-1, -2)) / q.shape[-1] ** 0.5, -1)  # [B,H,N,N]
        B, H, N, _ = att.shape
        frame = torch.arange(N, device=att.device) // P
        slot = torch.arange(N, device=att.device) % P
        patch = slot >= s0
        other = frame[:, None] != frame[None, :]
        same = other & (slot[:, None] == slot[None, :]) & patch[None, :]
        ent = -(att * att.clamp_min(1e-12).log()).sum(-1) / np.log(N)
        # GT match mass: query patch (frame i, slot) -> key patch index in frame j from `corr`
        gt_mass, same_moved = [], []
        G = P - s0
        for h in range(H):
            vals, sm = [], []
            for bi in range(B):
                for i in range(S):
                    for j in range(S):
                        if i == j:
                            continue
                        tgt = corr[bi, i, :, j]  # [G] target patch in frame j, -1 when none
                        ok = tgt >= 0
                        if not bool(ok.any()):
                            continue
                        qi = i * P + s0 + torch.nonzero(ok).squeeze(1)
                        kj = j * P + s0 + tgt[ok]
                        vals.append(att[bi, h, qi, kj])
                        moved = tgt[ok] != torch.nonzero(ok).squeeze(1)
                        if bool(moved.any()):
                            sm.append(att[bi, h, qi[moved], j * P + s0 + torch.nonzero(ok).squeeze(1)[moved]])
            gt_mass.append(float(torch.cat(vals).mean()) if vals else float("nan"))
            same_moved.append(float(torch.cat(sm).mean()) if sm else float("nan"))
        for h in range(H):
            qs = patch
            rows.append({
                "layer": layer, "head": h,
                "cross": round(float((att[:, h] * other).sum(-1)[:, qs].mean()), 4),
                "cross_uniform": round(1 - 1 / S, 4),
                "special": round(float((att[:, h] * (~patch)[None, :]).sum(-1)[:, qs].mean()), 4),
                "same_pos": round(float((att[:, h] * same).sum(-1)[:, qs].mean()) / (S - 1), 4),
                "gt_match": round(gt_mass[h], 4),
                "same_pos_when_moved": round(same_moved[h], 4),
                "uniform_key": round(1 / N, 5),
                "entropy": round(float(ent[:, h][:, qs].mean()), 3),
            })  # fmt: skip
    name = a.label or Path(a.weights).name
    text = markdown_table(rows)
    print(f"{name}: {a.scenes} test scenes x {a.views} views, {G} patches per frame; per-key masses\n")
    print(text)
    out = Path(a.out or os.environ.get("OUT") or "benchmarks/results/tiny")
    write_result(out / f"cross_frame_attention_{name}.json", rows, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
