"""Train lite3r-tiny from scratch on SynthMV scenes rendered online on the training device.

    python -m lite3r.training.train_tiny --out runs/tiny --minutes 14            # H100
    python -m lite3r.training.train_tiny --out runs/tiny --minutes 5 --resume    # continue
    # the shipped recipe: bigger steps, each rendered scene reused in ~6 batches
    python -m lite3r.training.train_tiny --out runs/tiny --minutes 27 --views-per-step 192 --replay 6 \
        --lr 8e-4 --warmup-steps 300

* Data: every optimiser step renders its own scenes (``train_step_seeds(seed, step)``: a pure function
  of the step, so a resumed run sees exactly the data it would have seen), on the GPU, one step ahead
  in a background thread on a side CUDA stream. The view count S is drawn per step from ``views`` and
  the batch holds ``views_per_step // S`` scenes, so every step costs about the same.
* Curriculum: the first ``curriculum`` fraction of the steps uses the easy/medium tiers and at most
  5 views; then every tier with 2–8 views (the test distribution).
* Fine-tuning (``--init-weights assets/lite3r-tiny``): a new trajectory from an exported model's
  weights instead of a random init; the auxiliary point head, which export drops, starts fresh.
* Correspondence supervision (``corr_weight`` > 0, issue #6): a cross-entropy on the attention logits
  of chosen global blocks toward the GT-corresponding patch of every other view
  (``lite3r.training.correspondence``), through forward hooks installed here; off by default.
* Optimiser: AdamW (no decay on biases, norms, LayerScale, tokens, position embeddings), linear
  warm-up then cosine decay to ``min_lr_ratio``, bf16 autocast for the trunk (the heads run in fp32 as
  in VGGT; ``--heads-bf16`` puts the DPT heads under the autocast too, for speed), global grad-norm
  clipping.
* Time budget: with ``--minutes`` and no ``--total-steps`` the first steps are timed and the schedule
  length is fixed from the measured speed (stored in the checkpoint, so a resume keeps it). The run
  stops before the deadline leaving time for the final evaluation, checkpoint and export.
* Outputs in ``--out``: ``checkpoint.pt`` (atomic; model, optimiser, step, schedule, RNG, config),
  ``log.jsonl`` (every event), ``lite3r-tiny/`` (``model.safetensors`` fp16 + ``config.json``, ready
  for ``assets/lite3r-tiny``). stdout carries the worker protocol (one JSON object per line).
* Cancel: SIGTERM or a ``cancel`` line on stdin → checkpoint, ``cancelled`` event, exit code 3.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lite3r.errors import CheckpointError, InputError

EXIT_OK, EXIT_ERROR, EXIT_CANCELLED = 0, 1, 3
CHECKPOINT = "checkpoint.pt"
LOG = "log.jsonl"
EXPORT = "lite3r-tiny"
HANDOVER_WEIGHTS, HANDOVER_STATE = "handover.safetensors", "handover.json"
REWARM_STEPS = 50  # linear LR re-warm-up after a handover (fresh AdamW moments)

HEADS_BF16_WARNING = (
    "--heads-bf16 diverged in its one real use: resuming the step-7,900 lite3r-tiny hand-over with it, the "
    "validation AbsRel at step 8,000 was 0.334 against 0.306 without it, and the loss went NaN at step 8,140 "
    "(benchmarks/results/tiny/continuation_11518/heads_bf16_nan_log.jsonl); train without it"
)

# Fields that define the training trajectory: a resumed run must keep them.
TRAJECTORY = (
    "preset", "image_size", "point_head", "layer_scale_init", "token_init_std", "global_rope", "views", "views_per_step", "lr", "betas", "weight_decay", "warmup_steps",
    "min_lr_ratio", "grad_clip", "seed", "curriculum", "supersample", "replay", "replay_window", "autocast", "loss", "corr_weight",
    "corr_layers", "corr_queries", "corr_heads", "corr_depth_tol", "init_weights",
)  # fmt: skip

# Values of fields added after the first checkpoints were written, as those runs trained: a checkpoint
# without the field resumes with this value, not with a (possibly different) newer default.
LEGACY_VALUES = {
    "corr_weight": 0.0, "replay": 1, "replay_window": 16, "global_rope": True, "init_weights": None,
}  # fmt: skip


@dataclass
class TinyTrainConfig:
    preset: str = "tiny"
    image_size: int | None = None  # None: the preset's size (224 for tiny)
    point_head: bool = True  # auxiliary point head (points in the view-0 frame); dropped at export
    layer_scale_init: float | None = None  # aggregator / camera-trunk LayerScale init (None: VGGT's 0.01)
    token_init_std: float | None = None  # camera / register token init (None: VGGT's 1e-6)
    # RoPE in the global blocks (VGGT: yes). The shipped model's global attention splits its mass over
    # the frames exactly in proportion and does not match patches, and pose is not learned; False makes
    # the cross-frame logits content-only (no measurable effect on CPU: tiny/pose_investigation_cpu.md).
    global_rope: bool = True
    views: tuple[int, int] = (2, 8)
    views_per_step: int = 48  # scenes per step = views_per_step // S
    lr: float = 6e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.05
    warmup_steps: int = 150
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0
    seed: int = 0
    total_steps: int | None = None  # None: fixed from the measured speed and --minutes
    curriculum: float = 0.2
    supersample: int = 2
    # Scene replay: each rendered view is used about ``replay`` times. Rendering, not the model, limits
    # training speed on the H100 (benchmarks/results/tiny/throughput/tiny_throughput.md: ~190 views/s rendered at
    # supersample 2 against ~600 views/s trained at 192 views per step). With replay > 1 every step renders
    # views_per_step / (replay * views[1]) fresh scenes of views[1] views and draws its batch from the
    # scenes of the last ``replay_window`` steps (view 0 plus a random subset of the others); 1 = off.
    replay: int = 1
    replay_window: int = 16
    autocast: str = "bf16"  # bf16 | fp32
    loss: dict = field(default_factory=dict)  # overrides of lite3r.training.losses.LossConfig
    # Correspondence supervision of global attention (lite3r.training.correspondence, issue #6): weight
    # of the cross-entropy of q·k/√d toward the GT-corresponding patch of every other view (0 = off),
    # the global blocks it applies to (None: the middle one), query patches per view, heads supervised,
    # relative depth tolerance of the occlusion test.
    corr_weight: float = 0.0
    corr_layers: tuple[int, ...] | None = None
    corr_queries: int = 64
    corr_heads: int = 1
    corr_depth_tol: float = 0.05
    # Fine-tuning: a fresh trajectory (step 0, its own schedule) that starts from these weights (an
    # exported model folder such as assets/lite3r-tiny, or a .safetensors file) instead of a random init.
    # Parts the file lacks (the auxiliary point head, which export drops) keep their fresh init.
    init_weights: str | None = None
    eval_every: int = 500
    eval_scenes: int = 32  # validation scenes (0: no evaluation at all)
    eval_views: int = 4
    log_every: int = 10
    ckpt_every_s: float = 180.0
    compile: bool = False
    # DPT heads under the bf16 autocast too (float32 as the reference otherwise): a speed option, not
    # part of the trajectory, so a resumed run may switch it on (VGGT.dpt_autocast)
    heads_bf16: bool = False
    prefetch: bool = True
    deterministic: bool = False

    def validate(self) -> None:
        lo, hi = self.views
        if not 1 <= lo <= hi:
            raise InputError(f"views must be 1 <= lo <= hi, got {self.views}")
        if self.views_per_step < hi:
            raise InputError(f"views_per_step ({self.views_per_step}) must be >= the largest view count {hi}")
        if self.autocast not in ("bf16", "fp32"):
            raise InputError(f"autocast must be bf16 or fp32, got {self.autocast!r}")
        if self.replay < 1 or self.replay_window < 1:
            raise InputError(f"replay ({self.replay}) and replay_window ({self.replay_window}) must be >= 1")
        if self.heads_bf16 and self.autocast != "bf16":
            raise InputError("heads_bf16 runs the DPT heads under the bf16 autocast: it needs autocast bf16")
        if not 0 <= self.curriculum < 1:
            raise InputError("curriculum must be in [0, 1)")
        if self.corr_weight < 0 or self.corr_queries < 1 or self.corr_heads < 1 or self.corr_depth_tol <= 0:
            raise InputError("need corr_weight >= 0, corr_queries >= 1, corr_heads >= 1, corr_depth_tol > 0")
        if self.corr_weight > 0 and self.compile:
            raise InputError(
                "correspondence supervision (corr_weight > 0) hooks the global attention modules, which "
                "the compiled blocks do not support; drop --compile or set --corr-weight 0"
            )

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> TinyTrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise InputError(f"unknown training config fields {sorted(unknown)}")
        d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**{**LEGACY_VALUES, **d})


# --------------------------------------------------------------------------------------------------
# Small pieces
# --------------------------------------------------------------------------------------------------


class Reporter:
    """Worker-protocol JSON lines on stdout (flushed) and in ``log.jsonl``."""

    def __init__(self, out: Path, quiet: bool = False):
        self.path = out / LOG
        self.quiet = quiet

    def __call__(self, event: str, **fields) -> None:
        obj = {"event": event, "time": round(time.time(), 3), **fields}
        line = json.dumps(obj, default=_jsonable)
        with open(self.path, "a") as f:
            f.write(line + "\n")
        if not self.quiet:
            print(line, flush=True)


def _jsonable(x):
    if isinstance(x, torch.Tensor):
        return x.item() if x.numel() == 1 else x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    return str(x)


class StopFlag:
    def __init__(self) -> None:
        self.event = threading.Event()
        self.reason: str | None = None

    def set(self, reason: str) -> None:
        self.reason = self.reason or reason
        self.event.set()

    def __call__(self) -> bool:
        return self.event.is_set()


def lr_at(step: int, total: int, cfg: TinyTrainConfig) -> float:
    """Linear warm-up to ``lr``, then cosine decay to ``lr * min_lr_ratio`` at ``total``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    p = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p)))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = (
            p.ndim < 2 or name.endswith(".bias") or "token" in name or "pos_embed" in name or ".gamma" in name
        )
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_handover(model: torch.nn.Module, folder: Path, state: dict) -> Path:
    """Weights in bfloat16 (point head included) + the trainer state, small enough to leave a machine
    whose full checkpoint (fp32 weights + AdamW moments, ~190 MB) cannot: the device returns files of
    at most 16 MiB and 64 MiB in all. ``--resume-handover`` continues from it with fresh AdamW moments."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    sd = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v).detach().cpu().contiguous()
          for k, v in model.state_dict().items()}  # fmt: skip
    tmp = folder / f"{HANDOVER_WEIGHTS}.tmp{os.getpid()}"
    save_file(sd, str(tmp))
    os.replace(tmp, folder / HANDOVER_WEIGHTS)
    tmp = folder / f"{HANDOVER_STATE}.tmp{os.getpid()}"
    tmp.write_text(json.dumps(state, indent=1, default=_jsonable))
    os.replace(tmp, folder / HANDOVER_STATE)
    return folder


def load_handover(folder: Path) -> tuple[dict, dict]:
    """(state, state dict) of a handover folder; raises CheckpointError naming what is missing."""
    from safetensors.torch import load_file

    w, st = folder / HANDOVER_WEIGHTS, folder / HANDOVER_STATE
    for f in (w, st):
        if not f.is_file():
            raise CheckpointError(f"no handover file {f}", hint="pass the folder written by --handover-out")
    return json.loads(st.read_text()), load_file(str(w))


def load_init_weights(model: torch.nn.Module, source: str | Path) -> dict:
    """Load a fine-tune's starting weights into ``model``; returns what was loaded and what kept its
    fresh init. Only the auxiliary point head may be missing (export drops it); any other missing,
    unexpected or differently shaped tensor is an error naming the key and the fix."""
    from safetensors.torch import load_file

    from lite3r.models.vggt.model import WEIGHTS_FILE

    p = Path(source)
    f = p / WEIGHTS_FILE if p.is_dir() else p
    if not f.is_file() or f.suffix != ".safetensors":
        raise CheckpointError(
            f"no weights to fine-tune from at {f}",
            hint="pass an exported model folder (model.safetensors + config.json) or a .safetensors file",
        )
    sd = load_file(str(f))
    own = model.state_dict()
    unexpected = sorted(set(sd) - set(own))
    missing = sorted(set(own) - set(sd))
    fresh = [k for k in missing if k.startswith("point_head.")]
    wrong = [k for k in sd if k in own and tuple(sd[k].shape) != tuple(own[k].shape)]
    if unexpected or wrong or len(fresh) != len(missing):
        bad = unexpected[:3] + [k for k in missing if k not in fresh][:3]
        bad += [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in wrong[:3]]
        raise CheckpointError(
            f"{f} does not fit this model ({len(unexpected)} unexpected, {len(missing) - len(fresh)} "
            f"missing, {len(wrong)} differently shaped tensors, e.g. {bad})",
            hint="fine-tune with the preset and options the weights were trained with (see their config.json)",
        )
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()}, strict=False)
    return {"file": str(f), "tensors": len(sd), "fresh_init": sorted({k.split(".")[0] for k in fresh})}


def pose_readout_for(cfg: TinyTrainConfig, global_depth: int):
    """The pose read-out an exported model declares (config.json ``pose_readout``): matches of head 0
    of the last global block when the correspondence loss trained that head, else None (camera head).
    The PnP poses are refined jointly over all views (bundle adjustment): +3.2 AUC@30 on validation for
    the sixteenth session's model (benchmarks/results/tiny/ft_pose/bundle_adjustment_cpu.md)."""
    from lite3r.models.vggt.attention_capture import resolve_layers
    from lite3r.models.vggt.match_pose import MatchPoseConfig

    if cfg.corr_weight <= 0 or global_depth - 1 not in resolve_layers(cfg.corr_layers, global_depth):
        return None
    return MatchPoseConfig(layers=(-1,), heads=(0,), solver="pnp", bundle_adjust=True)


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


class StepData:
    """Scenes of optimiser step k (pure function of (seed, k)); optional one-step-ahead prefetch.

    With ``replay`` > 1 the step's batch is drawn from a pool holding the scenes rendered at the last
    ``replay_window`` steps (each step renders a few fresh scenes of ``views[1]`` views). The pool and
    the draw are pure functions of (seed, k) too, so a resumed run re-renders the window and continues
    with exactly the data it would have seen."""

    KEYS = ("images", "depth", "valid", "extrinsics", "intrinsics")

    def __init__(self, cfg: TinyTrainConfig, image_size: int, device: torch.device, total: callable):
        from .data import synthetic

        self.syn, self.cfg, self.size, self.device, self.total = synthetic, cfg, image_size, device, total
        base = dict(supersample=cfg.supersample)
        self.early = synthetic.SynthConfig(tiers=("easy", "medium"), tier_weights=(0.6, 0.4), **base)
        self.late = synthetic.SynthConfig(tiers=("easy", "medium", "hard"), **base)
        self.use_thread = cfg.prefetch and device.type == "cuda"
        self.stream = torch.cuda.Stream(device) if self.use_thread else None
        self.pending: tuple[int, threading.Thread, dict] | None = None
        self.pool: dict[int, dict] = {}  # replay: step -> its fresh scenes [F, views[1], ...]

    @property
    def fresh_scenes(self) -> int:
        """Scenes rendered per step in replay mode."""
        return max(1, math.ceil(self.cfg.views_per_step / (self.cfg.replay * self.cfg.views[1])))

    def phase(self, step: int) -> tuple:
        total = self.total()
        early = total is None or step < self.cfg.curriculum * total
        lo, hi = self.cfg.views
        return (self.early, (lo, min(hi, 5))) if early else (self.late, (lo, hi))

    def _render(self, seeds, S: int, synth_cfg) -> dict:
        b = self.syn.render_batch(seeds, S, self.size, self.device, synth_cfg)
        return {k: getattr(b, k) for k in self.KEYS}

    def make(self, step: int) -> dict:
        """What the producer thread computes for ``step``: the batch, or (replay) the fresh scenes."""
        synth_cfg, views = self.phase(step)
        if self.cfg.replay > 1:
            seeds, _ = self.syn.train_step_seeds(self.cfg.seed, step, self.fresh_scenes, self.cfg.views)
            return self._render(seeds, self.cfg.views[1], synth_cfg)
        seeds, S = self.syn.train_step_seeds(self.cfg.seed, step, self.cfg.views_per_step, views)
        return self._render(seeds[: max(1, self.cfg.views_per_step // S)], S, synth_cfg)

    def draw(self, step: int) -> dict:
        """Replay: ``views_per_step // S`` scenes of the window, each as view 0 plus S - 1 of its other
        views in random order (every view is covisible with view 0, not necessarily with each other)."""
        _, views = self.phase(step)
        _, S = self.syn.train_step_seeds(self.cfg.seed, step, 1, views)
        B = max(1, self.cfg.views_per_step // S)
        rng = np.random.default_rng(self.syn.stream_seed(self.cfg.seed * 1_000_003 + step, 7_777))
        slots = [(st, i) for st in sorted(self.pool) for i in range(self.fresh_scenes)]
        pick = rng.choice(len(slots), size=B, replace=len(slots) < B)
        R = self.cfg.views[1]
        parts: dict[str, list] = {k: [] for k in self.KEYS}
        for j in pick:
            st, i = slots[j]
            idx = torch.tensor([0, *(1 + rng.permutation(R - 1)[: S - 1])], device=self.device)
            for k in self.KEYS:
                parts[k].append(self.pool[st][k][i].index_select(0, idx))
        return {k: torch.stack(v) for k, v in parts.items()}

    def _start(self, step: int) -> None:
        box: dict = {}

        def run():
            try:
                with torch.cuda.stream(self.stream):
                    box["batch"] = self.make(step)
                    box["event"] = torch.cuda.Event()
                    box["event"].record(self.stream)
            except BaseException as exc:  # re-raised in the training thread
                box["error"] = exc

        th = threading.Thread(target=run, name=f"synthmv-step{step}", daemon=True)
        th.start()
        self.pending = (step, th, box)

    def _produced(self, step: int, prefetch_next: bool) -> dict:
        if not self.use_thread:
            return self.make(step)
        if self.pending is None or self.pending[0] != step:
            self.close()
            self._start(step)
        _, th, box = self.pending
        th.join()
        self.pending = None
        if "error" in box:
            raise box["error"]
        cur = torch.cuda.current_stream(self.device)
        cur.wait_event(box["event"])
        for t in box["batch"].values():
            t.record_stream(cur)
        if prefetch_next:
            self._start(step + 1)
        return box["batch"]

    def get(self, step: int, prefetch_next: bool = True) -> dict:
        if self.cfg.replay == 1:
            return self._produced(step, prefetch_next)
        first = max(0, step - self.cfg.replay_window + 1)
        for old in [st for st in self.pool if st < first]:
            del self.pool[old]
        for st in range(first, step):  # after a resume: re-render the window (pure function of st)
            if st not in self.pool:
                self.pool[st] = self.make(st)
        self.pool[step] = self._produced(step, prefetch_next)
        return self.draw(step)

    def close(self) -> None:
        if self.pending is not None:
            self.pending[1].join()
            self.pending = None


# --------------------------------------------------------------------------------------------------
# Evaluation (validation split, fixed scenes)
# --------------------------------------------------------------------------------------------------


class Validation:
    def __init__(self, cfg: TinyTrainConfig, image_size: int, device: torch.device):
        from .data import synthetic

        seeds = synthetic.split_seeds("val", cfg.eval_scenes)
        conf = synthetic.SynthConfig(supersample=cfg.supersample)
        self.batches = [
            synthetic.render_batch(seeds[i : i + 8], cfg.eval_views, image_size, device, conf)
            for i in range(0, len(seeds), 8)
        ]
        self.cfg = cfg
        self.baselines = None

    @torch.no_grad()
    def __call__(self, model, autocast) -> dict:
        from lite3r.eval import metrics as M
        from lite3r.geometry import pose_encoding_to_extri_intri

        from .losses import LossConfig, targets_from_batch, vggt_loss

        was = model.training
        model.eval()
        rows, base_rows, losses = [], [], []
        loss_cfg = LossConfig.from_options(**self.cfg.loss)
        for b in self.batches:
            with autocast():
                preds = model(b.images)
            tg = targets_from_batch({"extrinsics": b.extrinsics, "intrinsics": b.intrinsics, "depth": b.depth,
                                     "valid": b.valid}, loss_cfg)  # fmt: skip
            losses.append(float(vggt_loss(preds, tg, loss_cfg)[0]))
            H, W = b.images.shape[-2:]
            ext, _ = pose_encoding_to_extri_intri(preds["pose_enc"].float(), (H, W))
            depth = preds["depth"][..., 0].float().cpu().numpy()
            ext = ext.cpu().numpy()
            gt_d, gt_v, gt_e = b.depth.cpu().numpy(), b.valid.cpu().numpy(), b.extrinsics.cpu().numpy()
            for i in range(len(b)):
                dm = M.depth_metrics(depth[i], gt_d[i], gt_v[i], policy="lsq_scene")
                pm = M.pose_metrics(ext[i], gt_e[i])
                rows.append((dm["abs_rel"], dm["delta1"], pm["auc@30"], pm["rra@15"], pm["rta@15"]))
                if self.baselines is None:
                    cd = M.depth_metrics(np.ones_like(gt_d[i]), gt_d[i], gt_v[i], policy="lsq_scene")
                    ident = np.tile(np.eye(4)[:3], (gt_e.shape[1], 1, 1))
                    base_rows.append((cd["abs_rel"], cd["delta1"], M.pose_metrics(ident, gt_e[i])["auc@30"]))
        if self.baselines is None:
            a = np.nanmean(np.array(base_rows), 0)
            self.baselines = {
                "const_depth_abs_rel": a[0],
                "const_depth_delta1": a[1],
                "identity_auc@30": a[2],
            }
        model.train(was)
        a = np.nanmean(np.array(rows), 0)
        out = {"val_loss": float(np.mean(losses)), "abs_rel": a[0], "delta1": a[1], "auc@30": a[2],
               "rra@15": a[3], "rta@15": a[4]}  # fmt: skip
        out.update({f"baseline_{k}": float(v) for k, v in self.baselines.items()})
        return {k: float(v) for k, v in out.items()}


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but CUDA is not available")
    return dev


def _rng_state() -> dict:
    st = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _correspondence_term(captured: dict, targets, model, cfg: TinyTrainConfig) -> tuple:
    """Mean correspondence cross-entropy (and top-1 accuracy) over the captured global layers."""
    from .correspondence import correspondence_loss, patch_correspondences

    agg = model.aggregator
    corr_t = patch_correspondences(targets.world_points, targets.valid, targets.depth, targets.extrinsics,
                                   targets.intrinsics, agg.patch_size, cfg.corr_depth_tol)  # fmt: skip
    S = targets.depth.shape[1]
    losses, accs = [], []
    for q, k, _ in captured.values():
        lo, acc = correspondence_loss(q, k, corr_t, S, agg.patch_start_idx, cfg.corr_queries, cfg.corr_heads)
        losses.append(lo)
        accs.append(acc)
    if not losses:
        raise RuntimeError("correspondence supervision is on but no global attention output was captured")
    return torch.stack(losses).mean(), torch.stack(accs).mean()


def _restores_cuda_flags(fn):
    """The CUDA backend flags a run sets (TF32, cuDNN autotuning) are restored afterwards: a caller in
    the same process (a test, a notebook) must not inherit TF32 matmuls it did not ask for."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        b = torch.backends
        saved = (b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32, b.cudnn.benchmark)
        try:
            return fn(*args, **kwargs)
        finally:
            b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32, b.cudnn.benchmark = saved

    return wrapper


@_restores_cuda_flags
def train(
    cfg: TinyTrainConfig,
    out: str | Path,
    minutes: float | None = None,
    resume: bool = False,
    device: str = "auto",
    max_steps: int | None = None,
    export_dirs: tuple[Path, ...] = (),
    stop: StopFlag | None = None,
    quiet: bool = False,
    explicit: set[str] | None = None,
    schedule_minutes: float | None = None,
    handover_out: Path | None = None,
    resume_handover: Path | None = None,
) -> int:
    """Run (or continue) a training; returns the exit code. ``max_steps`` and ``minutes`` limit this
    invocation; ``schedule_minutes`` (default ``minutes``) is the time the LR schedule is planned for
    when it is not fixed yet (a plan over several invocations, continued with ``resume``).
    ``handover_out`` also writes a bf16 handover at the end; ``resume_handover`` continues one on
    another machine (same step, schedule and data; AdamW moments start afresh under a short LR
    re-warm-up, so the continuation is close to, not bit-for-bit, the uninterrupted run)."""
    from .correspondence import AttentionCapture
    from .losses import LossConfig, targets_from_batch, vggt_loss
    from .tiny import PRESETS, build_tiny, export_tiny

    t0 = time.perf_counter()
    deadline = None if minutes is None else t0 + 60.0 * minutes
    plan_end = None if minutes is None else t0 + 60.0 * (schedule_minutes or minutes)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = Reporter(out, quiet)
    stop = stop or StopFlag()
    dev = _device(device)
    ckpt_path = out / CHECKPOINT
    state = None
    if resume and resume_handover is not None:
        raise InputError("--resume and --resume-handover are exclusive", hint="pick one")
    handover_weights = None
    if resume_handover is not None:
        state, handover_weights = load_handover(Path(resume_handover))
    elif resume:
        if not ckpt_path.is_file():
            raise CheckpointError(
                f"no checkpoint to resume at {ckpt_path}", hint="run without --resume first"
            )
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    if state is not None:
        stored = TinyTrainConfig.from_dict(state["config"])
        for name in explicit or ():
            if name in TRAJECTORY and getattr(cfg, name) != getattr(stored, name):
                raise InputError(
                    f"--{name.replace('_', '-')} {getattr(cfg, name)} differs from the checkpoint's "
                    f"{getattr(stored, name)}: a resumed run keeps its trajectory",
                    hint="drop the option or start a new --out folder",
                )
        keep = {n: getattr(cfg, n) for n in (explicit or ()) if n not in TRAJECTORY}
        cfg = dataclasses.replace(stored, **keep)
        if cfg.total_steps is None and state.get("total_steps") is not None:
            cfg = dataclasses.replace(cfg, total_steps=state["total_steps"])
    cfg.validate()
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    image_size = cfg.image_size or PRESETS[cfg.preset]["img_size"]
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # the fp32 heads; recorded in the log
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = not cfg.deterministic

    extra = {
        k: getattr(cfg, k) for k in ("layer_scale_init", "token_init_std") if getattr(cfg, k) is not None
    }
    if not cfg.global_rope:
        extra["global_rope"] = False
    model = build_tiny(cfg.preset, seed=cfg.seed, point_head=cfg.point_head, **extra).to(dev)
    model.dpt_autocast = cfg.heads_bf16
    if cfg.heads_bf16:
        print(HEADS_BF16_WARNING, file=sys.stderr, flush=True)
    model.train()
    capture = AttentionCapture(model, cfg.corr_layers) if cfg.corr_weight > 0 else None
    opt = torch.optim.AdamW(
        param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, fused=dev.type == "cuda"
    )
    loss_cfg = LossConfig.from_options(**cfg.loss)
    step, train_seconds = 0, 0.0
    total = cfg.total_steps
    rewarm_from = None  # first step after a handover (fresh AdamW moments)
    if state is not None:
        if handover_weights is not None:
            model.load_state_dict({k: v.to(model.state_dict()[k].dtype) for k, v in handover_weights.items()})
            rewarm_from = state["step"]
            torch.manual_seed(cfg.seed * 1_000_003 + state["step"])
        else:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            rewarm_from = state.get("rewarm_from")
            _set_rng_state(state["rng"])
        step, train_seconds = state["step"], state["train_seconds"]
        if "total_steps" not in (explicit or ()):  # an explicit --total-steps re-plans the schedule
            total = state.get("total_steps", total)
    else:
        torch.manual_seed(cfg.seed)
        if cfg.init_weights is not None:
            report("init_weights", **load_init_weights(model, cfg.init_weights))
    fwd = model
    if cfg.compile:
        for blk in [*model.aggregator.frame_blocks, *model.aggregator.global_blocks]:
            blk.compile(dynamic=False)
    autocast = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if cfg.autocast == "bf16" else (
        lambda: torch.autocast(dev.type, enabled=False))  # fmt: skip
    n_params = sum(p.numel() for p in model.parameters())
    if rewarm_from is not None and resume_handover is not None:
        report("handover_resumed", step=step, folder=str(resume_handover), rewarm_steps=REWARM_STEPS,
               note="weights from bf16; AdamW moments start afresh")  # fmt: skip
    report("started", step=step, total=total, resumed=resume or resume_handover is not None, device=str(dev), params=n_params,
           config=cfg.to_dict(), image_size=image_size, torch=torch.__version__,
           tf32=torch.backends.cuda.matmul.allow_tf32 if dev.type == "cuda" else None)  # fmt: skip

    box = {"total": total}
    data = StepData(cfg, image_size, dev, lambda: box["total"])
    val = Validation(cfg, image_size, dev) if cfg.eval_scenes > 0 else None

    def save(final: bool = False) -> Path:
        _atomic_save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                      "total_steps": box["total"], "train_seconds": train_seconds, "rng": _rng_state(),
                      "rewarm_from": rewarm_from,
                      "config": dataclasses.replace(cfg, total_steps=box["total"]).to_dict()}, ckpt_path)  # fmt: skip
        report("checkpoint", step=step, path=str(ckpt_path), final=final)
        return ckpt_path

    def finish(reason: str) -> int:
        data.close()
        metrics = {}
        if val is not None:
            metrics = last_eval["metrics"] if last_eval.get("step") == step else val(model, autocast)
            if last_eval.get("step") != step:
                report("eval", step=step, metrics=metrics)
        save(final=True)
        paths = []
        model.pose_readout = pose_readout_for(cfg, len(model.aggregator.global_blocks))
        for folder in (out / EXPORT, *export_dirs):
            export_tiny(model, folder, {"steps": step, "total_steps": box["total"], "val": metrics,
                                        "train_config": cfg.to_dict()})  # fmt: skip
            paths.append(str(folder))
        if handover_out is not None:
            save_handover(model, Path(handover_out), {"step": step, "total_steps": box["total"],
                          "train_seconds": train_seconds, "config": cfg.to_dict()})  # fmt: skip
            report("handover", step=step, folder=str(handover_out))
        report("finished", step=step, total=box["total"], reason=reason, adapter=paths[0], exports=paths,
               train_seconds=round(train_seconds, 1), wall_seconds=round(time.perf_counter() - t0, 1))  # fmt: skip
        return EXIT_OK

    eval_seconds = 0.0
    last_eval: dict = {}
    if val is not None and step == 0 and (cfg.eval_every > 0 or minutes is not None):
        te = time.perf_counter()
        last_eval.update(step=0, metrics=val(model, autocast))
        report("eval", **last_eval)
        eval_seconds = time.perf_counter() - te
    last_ckpt = time.perf_counter()
    calib: list[float] = []
    acc: dict[str, float] = {}
    acc_n, data_wait, t_log = 0, 0.0, time.perf_counter()
    steps_this_run, run_seconds = 0, 0.0
    last_end = time.perf_counter()
    reserve = 10.0 + 2.0 * eval_seconds + 5.0  # final eval + checkpoint + export
    while True:
        if box["total"] is not None and step >= box["total"]:
            return finish("total_steps")
        if max_steps is not None and steps_this_run >= max_steps:
            return finish("max_steps")
        if stop():
            data.close()
            save()
            report("cancelled", step=step, checkpoint=str(ckpt_path), reason=stop.reason)
            return EXIT_CANCELLED
        ts = time.perf_counter()
        batch = data.get(step, prefetch_next=box["total"] is None or step + 1 < box["total"])
        tw = time.perf_counter()
        lr = lr_at(step, box["total"] or 10**9, cfg)
        if rewarm_from is not None:
            lr *= min(1.0, (step - rewarm_from + 1) / REWARM_STEPS)
        for g in opt.param_groups:
            g["lr"] = lr
        with autocast():
            preds = fwd(batch["images"])
        targets = targets_from_batch(batch, loss_cfg)
        loss, terms = vggt_loss(preds, targets, loss_cfg)
        if capture is not None:
            corr, corr_acc = _correspondence_term(capture.pop(), targets, model, cfg)
            terms["corr"], terms["corr_acc"] = corr, corr_acc
            loss = loss + cfg.corr_weight * corr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        step += 1
        steps_this_run += 1
        for k, v in terms.items():
            acc[k] = acc.get(k, 0.0) + v.detach()
        acc["loss"] = acc.get("loss", 0.0) + loss.detach()
        acc["grad_norm"] = acc.get("grad_norm", 0.0) + gnorm.detach()
        acc_n += 1
        data_wait += tw - ts
        if dev.type == "cuda" and step % cfg.log_every == 0:
            torch.cuda.synchronize(dev)
        dt = time.perf_counter() - ts
        train_seconds += dt
        run_seconds += dt
        # fix the schedule length from the measured speed at the end of the warm-up (the LR does not
        # depend on it before), from the recent steps: the first ones pay one-off costs (autotuning of
        # every new batch shape, allocator growth)
        now_end = time.perf_counter()
        if box["total"] is None and plan_end is not None:
            if steps_this_run > 3:
                calib.append(now_end - last_end)
            if step >= max(cfg.warmup_steps, 24) or len(calib) >= 400:
                recent = calib[-max(8, len(calib) // 2) :]
                per_step = float(np.median(recent)) if recent else dt
                per_step *= 1.0 + 0.03  # logging, checkpoints
                left = plan_end - time.perf_counter() - reserve
                per_eval = eval_seconds / max(1, cfg.eval_every) if cfg.eval_every > 0 else 0.0
                box["total"] = max(step + 1, step + int(left / (per_step + per_eval)))
                report("schedule", step=step, total=box["total"], seconds_per_step=per_step)
        last_end = now_end
        if step % cfg.log_every == 0:
            now = time.perf_counter()
            sps = acc_n / max(now - t_log, 1e-9)
            vals = {k: float(v) / acc_n for k, v in acc.items()}
            eta = None if box["total"] is None else (box["total"] - step) / max(sps, 1e-9)
            report("step", step=step, total=box["total"], loss=vals.pop("loss"), terms=vals, lr=lr,
                   steps_per_s=round(sps, 3), views_per_s=round(sps * cfg.views_per_step, 1),
                   data_wait_frac=round(data_wait / max(now - t_log, 1e-9), 3), eta_s=eta,
                   views=int(batch["images"].shape[1]), scenes=int(batch["images"].shape[0]))  # fmt: skip
            acc, acc_n, data_wait, t_log = {}, 0, 0.0, now
        if step % cfg.log_every == 0 and not math.isfinite(float(loss.detach())):
            raise FloatingPointError(f"non-finite loss at step {step}: {float(loss.detach())}")
        if val is not None and cfg.eval_every > 0 and step % cfg.eval_every == 0:
            te = time.perf_counter()
            last_eval.update(step=step, metrics=val(model, autocast))
            report("eval", **last_eval)
            eval_seconds = max(eval_seconds, time.perf_counter() - te)
        if time.perf_counter() - last_ckpt > cfg.ckpt_every_s:
            save()
            last_ckpt = time.perf_counter()
        if deadline is not None:
            per_step = run_seconds / max(1, steps_this_run)
            if time.perf_counter() + 1.5 * per_step + reserve > deadline:
                return finish("time_limit")


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m lite3r.training.train_tiny", description=__doc__.splitlines()[0]
    )
    p.add_argument("--out", required=True, help="output folder (checkpoint, log.jsonl, lite3r-tiny/)")
    p.add_argument("--minutes", type=float, help="wall-clock budget of this invocation")
    p.add_argument(
        "--schedule-minutes",
        type=float,
        help="plan the LR schedule for this much training time (default --minutes); continue with --resume",
    )
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    p.add_argument(
        "--handover-out", type=Path, help="also write bf16 weights + trainer state here at the end"
    )
    p.add_argument(
        "--resume-handover",
        type=Path,
        help="continue a --handover-out folder (another machine: fresh AdamW moments, LR re-warm-up)",
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--steps", type=int, help="stop this invocation after N optimiser steps")
    p.add_argument("--export-dir", action="append", default=[], help="also export the final model here")
    p.add_argument("--no-stdin", action="store_true", help="do not watch stdin for a `cancel` line")
    p.add_argument("--quiet", action="store_true", help="log.jsonl only, nothing on stdout")
    g = p.add_argument_group("training (defaults: TinyTrainConfig)")
    g.add_argument("--preset", choices=["tiny", "small", "micro"])
    g.add_argument("--image-size", type=int)
    g.add_argument(
        "--point-head",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="auxiliary point head during training (default on; never exported)",
    )
    g.add_argument("--layer-scale-init", type=float)
    g.add_argument(
        "--global-rope",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="2-D RoPE in the global (cross-frame) blocks (default on, as VGGT)",
    )
    g.add_argument("--token-init-std", type=float)
    g.add_argument("--views", type=int, nargs=2, metavar=("MIN", "MAX"))
    g.add_argument("--views-per-step", type=int)
    g.add_argument("--lr", type=float)
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--warmup-steps", type=int)
    g.add_argument("--min-lr-ratio", type=float)
    g.add_argument("--grad-clip", type=float)
    g.add_argument("--seed", type=int)
    g.add_argument("--total-steps", type=int)
    g.add_argument("--curriculum", type=float)
    g.add_argument("--supersample", type=int)
    g.add_argument("--replay", type=int, help="uses of each rendered view (1 = every step renders its batch)")
    g.add_argument("--replay-window", type=int, help="steps whose scenes the replay draws from")
    g.add_argument("--autocast", choices=["bf16", "fp32"])
    g.add_argument(
        "--loss", type=json.loads, help="LossConfig overrides as JSON, e.g. '{\"camera_weight\": 5}'"
    )
    g.add_argument(
        "--corr-weight", type=float, help="correspondence supervision of global attention (0 = off)"
    )
    g.add_argument("--corr-layers", type=int, nargs="+", help="global blocks to supervise (default: middle)")
    g.add_argument("--corr-queries", type=int, help="query patches per view for the correspondence loss")
    g.add_argument("--corr-heads", type=int, help="attention heads supervised (the first N)")
    g.add_argument("--corr-depth-tol", type=float, help="relative depth tolerance of the occlusion test")
    g.add_argument(
        "--init-weights",
        help="fine-tune: start from this exported model folder or .safetensors file (step 0, new schedule)",
    )
    g.add_argument("--eval-every", type=int)
    g.add_argument("--eval-scenes", type=int)
    g.add_argument("--eval-views", type=int)
    g.add_argument("--log-every", type=int)
    g.add_argument("--ckpt-every-s", type=float)
    g.add_argument(
        "--compile", action="store_true", default=None, help="torch.compile the transformer blocks"
    )
    g.add_argument(
        "--heads-bf16",
        action="store_true",
        default=None,
        help="run the DPT heads under the bf16 autocast (experimental: " + HEADS_BF16_WARNING + ")",
    )
    g.add_argument("--no-prefetch", dest="prefetch", action="store_false", default=None)
    g.add_argument("--deterministic", action="store_true", default=None, help="deterministic GPU kernels")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    fields = {f.name for f in dataclasses.fields(TinyTrainConfig)}
    given = {k: (tuple(v) if isinstance(v, list) else v) for k, v in vars(args).items()
             if k in fields and v is not None}  # fmt: skip
    if given.get("deterministic"):
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before CUDA initialises
    stop = StopFlag()
    signal.signal(signal.SIGTERM, lambda *_: stop.set("SIGTERM"))
    if not args.no_stdin:

        def watch():
            try:
                for line in sys.stdin:
                    if line.strip().lower() == "cancel":
                        stop.set("stdin")
                        return
            except (OSError, ValueError):
                return

        threading.Thread(target=watch, daemon=True).start()
    try:
        cfg = TinyTrainConfig(**given)
        return train(cfg, args.out, args.minutes, args.resume, args.device, args.steps,
                     tuple(Path(p) for p in args.export_dir), stop, args.quiet, set(given),
                     args.schedule_minutes, args.handover_out, args.resume_handover)  # fmt: skip
    except Exception as exc:  # report, then a non-zero exit code
        print(json.dumps({"event": "error", "message": f"{type(exc).__name__}: {exc}",
                          "traceback": traceback.format_exc()}), flush=True)  # fmt: skip
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
