"""Distil a Lite3R student from a dense backbone: FP8-aware QAT + partial attention distillation.

The teacher is the dense base model (frozen, ``eval()``, no gradients). The student is
``convert(copy of teacher, Lite3RConfig)`` with FP8 fake quantisation of its Linears; only the SLA
``proj_lin`` matrices train unless the config unfreezes more by name pattern. The loss is the task
loss (camera + confidence-weighted depth against view-0-canonical ground truth, from
:mod:`lite3r.training.losses`) plus γ(t) × the mean MSE between student and teacher
attention-sublayer outputs (after ``proj``, before LayerScale) at the distilled sites. Those outputs
are captured by forward hooks that exist only inside a training step, so no module keeps activations
at inference.

Everything is seeded and every sample is a pure function of (seed, split, index), so a run resumed
from its last checkpoint continues bit for bit, and one process with gradient accumulation A matches
A processes at the same global batch. Results: ``adapter.safetensors`` (the trained tensors + the
full config + the base hash, see :mod:`lite3r.adapters`), ``resume.pt`` (optimiser, scheduler, step,
RNG states, data position), ``config.yaml`` and ``log.jsonl`` (every event) in the output folder.
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from lite3r.adapters import atomic_write_bytes, save_adapter
from lite3r.errors import CheckpointError, InputError, UnsupportedError

from .config import DataConfig, DistillRunConfig, LossConfig, ModelConfig, QATConfig
from .ddp import DistInfo, any_rank, average_gradients, broadcast_tensors, mean_over_ranks

log = logging.getLogger(__name__)

RESUME_FORMAT = "lite3r-resume"
RESUME_VERSION = 1
ADAPTER_FILE = "adapter.safetensors"
RESUME_FILE = "resume.pt"
CONFIG_FILE = "config.yaml"
LOG_FILE = "log.jsonl"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Emit = Callable[[dict[str, Any]], None]


# ---- the pieces a run is assembled from ------------------------------------------------------------
@dataclass
class BaseModel:
    model: nn.Module
    base_hash: str  # lite3r.adapters.hash_weights_file / hash_state_dict
    weights: str | None  # the weights file, None for random weights


@dataclass
class Components:
    """What a run is built from. The defaults are the real Lite3R modules; tests swap in small ones."""

    load_base: Callable[[ModelConfig, torch.device], BaseModel]
    convert: Callable[[nn.Module, dict[str, Any]], nn.Module]
    apply_qat: Callable[[nn.Module, QATConfig], nn.Module]
    task_loss: Callable[[dict[str, Any], dict[str, torch.Tensor], LossConfig], tuple[torch.Tensor, dict]]
    # (data config, split, run seed, device) → Scenes; the device is where scenes are made when the
    # data are generated in the training process (num_workers = 0), e.g. the GPU renderer.
    make_dataset: Callable[[DataConfig, str, int, torch.device], Scenes]
    batch_metrics: Callable[[dict[str, Any], dict[str, torch.Tensor]], dict[str, float]] | None = None


def default_components() -> Components:
    """The real model registry, conversion, FP8 QAT, task loss, data and metrics."""
    from . import components as real

    return real.build()


# ---- distillation hooks ----------------------------------------------------------------------------
class AttentionRecorder:
    """Collects the outputs of named attention modules for one forward pass.

    The hooks are registered on ``__enter__`` and removed on ``__exit__``; outside that window the
    model is untouched. While ``active`` is False (e.g. when activation checkpointing re-runs a block
    in backward) calls are ignored, so each site holds exactly the calls of the forward pass.
    """

    def __init__(self, model: nn.Module, module_names: list[str], detach: bool = False) -> None:
        modules = dict(model.named_modules())
        missing = [n for n in module_names if n not in modules]
        if missing:
            raise ValueError(f"attention modules not found in the model: {missing[:3]}")
        self._modules = [(n, modules[n]) for n in module_names]
        self._handles: list = []
        self.detach = detach
        self.active = False
        self.outputs: dict[str, list[torch.Tensor]] = {n: [] for n in module_names}

    def _hook(self, name: str):
        def hook(_module, _args, output):
            if self.active:
                self.outputs[name].append(output.detach() if self.detach else output)

        return hook

    def __enter__(self) -> AttentionRecorder:
        self.clear()
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in self._modules]
        self.active = True
        return self

    def __exit__(self, *exc) -> None:
        self.active = False
        for h in self._handles:
            h.remove()
        self._handles = []

    def clear(self) -> None:
        for v in self.outputs.values():
            v.clear()


def attention_kd_loss(student: AttentionRecorder, teacher: AttentionRecorder) -> torch.Tensor:
    """Mean over (site module, call) pairs of MSE(student output, teacher output), in fp32.

    Every recorded call must pair up: a different call count or shape means the student and teacher
    did not run the same computation, which is a bug to report, not a pair to skip.
    """
    losses = []
    for name, s_list in student.outputs.items():
        t_list = teacher.outputs[name]
        if len(s_list) != len(t_list):
            raise RuntimeError(f"{name}: student ran {len(s_list)} attention calls, teacher {len(t_list)}")
        for s, t in zip(s_list, t_list):
            if s.shape != t.shape:
                raise RuntimeError(f"{name}: student output {tuple(s.shape)} vs teacher {tuple(t.shape)}")
            losses.append(torch.mean((s.float() - t.detach().float()) ** 2))
    if not losses:
        raise RuntimeError("no attention outputs were recorded at the distilled sites")
    return torch.stack(losses).mean()


def kd_weight(step: int, total_steps: int, gamma_max: float, gamma_min: float) -> float:
    """γ(t) = γ_min + ½(γ_max − γ_min)(1 + cos πt), t = step / (total − 1): γ_max first, γ_min last."""
    t = step / max(1, total_steps - 1)
    return gamma_min + 0.5 * (gamma_max - gamma_min) * (1.0 + math.cos(math.pi * min(1.0, t)))


def lr_factor(step: int, total_steps: int, warmup: int, schedule: str, min_ratio: float) -> float:
    """Linear warm-up to 1 over ``warmup`` steps, then cosine / linear decay to ``min_ratio``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    p = min(1.0, (step - warmup) / max(1, total_steps - warmup - 1))
    if schedule == "linear":
        return 1.0 - (1.0 - min_ratio) * p
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * p))


# ---- model preparation -----------------------------------------------------------------------------
def select_trainable(model: nn.Module, extra_patterns: list[str]) -> list[tuple[str, nn.Parameter]]:
    """Freeze everything, then unfreeze ``proj_lin`` and any parameter matching ``extra_patterns``."""
    patterns = ["*proj_lin*", *extra_patterns]
    chosen = []
    for name, p in model.named_parameters():
        p.requires_grad_(any(fnmatch.fnmatchcase(name, pat) for pat in patterns))
        if p.requires_grad:
            chosen.append((name, p))
    unused = [pat for pat in extra_patterns if not any(fnmatch.fnmatchcase(n, pat) for n, _ in chosen)]
    if unused:
        raise InputError(
            f"unfreeze pattern(s) {unused} match no parameter of the student",
            hint="patterns are fnmatch patterns on names from model.named_parameters()",
        )
    if not chosen:
        raise InputError("the student has no trainable parameter (no proj_lin: did the conversion run?)")
    return chosen


def enable_activation_checkpointing(model: nn.Module, module_names: list[str]) -> int:
    """Recompute every transformer block under ``module_names`` in backward; returns how many.

    Patches the instances' ``forward`` (parameter names and hooks are unchanged). Non-reentrant
    checkpointing, so gradients reach the parameters inside and the distillation hooks see the
    original forward only (the recorder is inactive during recomputation).
    """
    from torch.utils.checkpoint import checkpoint

    from lite3r.models.layers.block import Block

    roots = [model.get_submodule(n) for n in module_names] if module_names else [model]
    n = 0
    seen = set()
    for root in roots:
        for m in root.modules():
            if isinstance(m, Block) and id(m) not in seen:
                seen.add(id(m))
                plain = m.forward

                def forward(*args, _plain=plain, **kwargs):
                    return checkpoint(_plain, *args, use_reentrant=False, **kwargs)

                m.forward = forward
                n += 1
    return n


def attention_site_modules(model: nn.Module, site_names: list[str] | None, converted_only: bool):
    """{site name: module names} for the requested sites (all converted sites when None)."""
    sites = model.attention_sites()
    if site_names is not None:
        unknown = sorted(set(site_names) - set(sites))
        if unknown:
            raise InputError(f"unknown attention site(s) {unknown}; this model has {sorted(sites)}")
        chosen = {s: sites[s] for s in site_names}
    else:
        chosen = dict(sites)
    if converted_only:
        mods = dict(model.named_modules())
        chosen = {
            s: site for s, site in chosen.items() if any(hasattr(mods[m], "proj_lin") for m in site.modules)
        }
    return chosen


# ---- data ------------------------------------------------------------------------------------------
class Scenes(Protocol):
    """A split as the distiller reads it (implemented in :mod:`lite3r.training.components`).

    ``batch(g, batch_size, views)`` → {"images" [B,S,3,H,W] in [0, 1], "depth" [B,S,H,W] (0 =
    invalid), "valid" [B,S,H,W] bool, "extrinsics" [B,S,3,4] world→camera (any world frame),
    "intrinsics" [B,S,3,3], optionally "world_points" [B,S,H,W,3]}. For the training split ``g`` is the
    global micro-batch id and the view count is drawn in the inclusive range ``views``; for held-out
    splits ``g`` is the scene index and ``views`` is (S, S).
    """

    def batch(self, g: int, batch_size: int, views: tuple[int, int]) -> dict[str, torch.Tensor]: ...


def sample_rng(seed: int, *parts: int) -> np.random.Generator:
    """An RNG owned by one sample: a pure function of the run seed and the sample's coordinates."""
    return np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFF, *parts]))


class MicroBatches(torch.utils.data.Dataset):
    """Micro-batch ``g`` of the training split: ``scenes.batch(g, batch_size, views)``.

    ``scenes`` maps a global micro-batch id to its scenes and view count as a pure function of the
    run seed and ``g`` (see :class:`Scenes`), so the data do not depend on the number of workers or
    ranks, nor on where a run was resumed.
    """

    def __init__(self, scenes, batch_size: int, views: tuple[int, int]) -> None:
        self.scenes, self.batch_size, self.views = scenes, batch_size, views

    def __len__(self) -> int:
        return 2**62  # indices are unbounded; the sampler decides which ones a rank reads

    def __getitem__(self, g: int) -> dict[str, torch.Tensor]:
        return self.scenes.batch(g, self.batch_size, self.views)


class RankSampler(torch.utils.data.Sampler):
    """Global micro-batch ids for one rank from a start position: step t, micro m → t·A·W + m·W + r."""

    def __init__(self, start_step: int, total_steps: int, accum: int, info: DistInfo) -> None:
        self.start, self.total, self.accum, self.info = start_step, total_steps, accum, info

    def __iter__(self) -> Iterator[int]:
        W, A, r = self.info.world_size, self.accum, self.info.rank
        for t in range(self.start, self.total):
            for m in range(A):
                yield t * A * W + m * W + r

    def __len__(self) -> int:
        return (self.total - self.start) * self.accum


def _seed_worker(worker_id: int) -> None:
    # Samples are pure functions of their index; seed the worker's global RNGs anyway, per worker,
    # so that any library randomness inside a worker is reproducible and differs between workers.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def canonicalise_to_view0(extrinsics: torch.Tensor) -> torch.Tensor:
    """World→camera [..., S, 3, 4] re-expressed with world = camera 0 (what the models predict)."""
    bottom = torch.zeros_like(extrinsics[..., :1, :])
    bottom[..., 0, 3] = 1
    e = torch.cat([extrinsics, bottom], dim=-2).double()
    rel = e @ torch.linalg.inv(e[..., :1, :, :])
    return rel[..., :3, :].to(extrinsics.dtype)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": _numpy_state_to_tensors(np.random.get_state()),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(_numpy_state_from_tensors(state["numpy"]))
    random.setstate(_to_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _numpy_state_to_tensors(st):
    name, keys, pos, has_gauss, cached = st
    return {
        "name": name,
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached": float(cached),
    }


def _numpy_state_from_tensors(d):
    return (d["name"], d["keys"].numpy().astype(np.uint32), d["pos"], d["has_gauss"], d["cached"])


def _to_tuple(x):
    return tuple(_to_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def resolve_device(device: str, info: DistInfo) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError("device: cuda requested but no CUDA GPU is available", hint="use device: cpu")
        if info.enabled:
            return torch.device("cuda", info.local_rank)
    return torch.device(device)


# ---- the run ---------------------------------------------------------------------------------------
@dataclass
class RunResult:
    status: str  # finished | cancelled
    step: int
    adapter: Path | None
    checkpoint: Path | None
    metrics: dict[str, float] = field(default_factory=dict)


class Distiller:
    """One distillation run: build teacher and student, train, evaluate, checkpoint, resume."""

    def __init__(
        self,
        config: DistillRunConfig,
        components: Components | None = None,
        emit: Emit | None = None,
        dist_info: DistInfo | None = None,
    ) -> None:
        self.cfg = config
        self.comp = components or default_components()
        self.info = dist_info or DistInfo()
        self._emit_fn = emit
        self.out = Path(config.output_dir)
        self.step = 0
        self.history: list[dict[str, Any]] = []
        if config.threads:
            torch.set_num_threads(config.threads)
        self.device = resolve_device(config.device, self.info)
        if config.precision.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=False)
            if self.device.type == "cuda":
                torch.backends.cudnn.benchmark = False
        seed_everything(config.seed)
        self._build_models()
        self._build_optimiser()
        self._train_data = self.comp.make_dataset(config.data, "train", config.seed, self._data_device())
        if config.eval.scenes < self.info.world_size:
            raise InputError(
                f"eval.scenes ({config.eval.scenes}) must be ≥ the number of processes "
                f"({self.info.world_size}): every process evaluates a share of the scenes"
            )
        self._val_data = None
        self._teacher_metrics: dict[str, float] | None = None

    # -- building --------------------------------------------------------------------------------------
    def _build_models(self) -> None:
        cfg = self.cfg
        base = self.comp.load_base(cfg.model, self.device)
        self.base_hash, self.base_weights = base.base_hash, base.weights
        teacher = base.model.to(self.device)
        teacher.eval().requires_grad_(False)
        self.teacher = teacher
        self.input_normalization = getattr(teacher, "input_normalization", "none")
        student = self.comp.convert(copy.deepcopy(teacher), dict(cfg.conversion))
        if cfg.qat.enabled:
            student = self.comp.apply_qat(student, cfg.qat)
        student.to(self.device).train()
        self.student = student
        self.trainable = select_trainable(student, cfg.unfreeze)
        broadcast_tensors([p for _, p in self.trainable], self.info)
        self.num_trainable = sum(p.numel() for _, p in self.trainable)
        self.num_params = sum(p.numel() for p in student.parameters())
        converted = attention_site_modules(student, None, converted_only=True)
        self.converted_sites = sorted(converted)
        if cfg.distill.enabled:
            kd_sites = attention_site_modules(
                student, cfg.distill.sites, converted_only=cfg.distill.sites is None
            )
            self.kd_modules = [m for s in sorted(kd_sites) for m in kd_sites[s].modules]
            self.kd_sites = sorted(kd_sites)
            self.teacher_trunk_only = all(site.trunk for site in kd_sites.values())
            if not self.kd_modules:
                raise InputError("distill.sites selects no attention module (is any site converted?)")
        else:
            self.kd_modules, self.kd_sites, self.teacher_trunk_only = [], [], True
        self.checkpointed_blocks = 0
        if cfg.precision.activation_checkpointing:
            trunk = student.trunk_modules() if hasattr(student, "trunk_modules") else []
            self.checkpointed_blocks = enable_activation_checkpointing(student, trunk)

    def _build_optimiser(self) -> None:
        o = self.cfg.optim
        decay = [p for n, p in self.trainable if p.ndim >= 2 and "proj_lin" not in n]
        no_decay = [p for n, p in self.trainable if not (p.ndim >= 2 and "proj_lin" not in n)]
        groups = [{"params": no_decay, "weight_decay": 0.0}]
        if decay:
            groups.append({"params": decay, "weight_decay": o.weight_decay})
        # foreach=False: one deterministic update path on every device.
        self.optimiser = torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, eps=o.eps, foreach=False)
        total = self.cfg.steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimiser,
            lambda s: lr_factor(s, total, o.warmup_steps, o.schedule, o.min_lr_ratio),
        )

    # -- events and files -------------------------------------------------------------------------------
    def emit(self, event: dict[str, Any]) -> None:
        if not self.info.is_main:
            return
        self.history.append(event)
        line = json.dumps(event, default=float)
        with open(self.out / LOG_FILE, "a") as f:
            f.write(line + "\n")
        if self._emit_fn is not None:
            self._emit_fn(event)

    def trained_tensors(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().to("cpu", torch.float32).clone() for n, p in self.trainable}

    def save_checkpoint(self) -> tuple[Path, Path]:
        """Adapter first, then the resume state (each file atomic); only rank 0 writes."""
        adapter = self.out / ADAPTER_FILE
        resume = self.out / RESUME_FILE
        if not self.info.is_main:
            return adapter, resume
        cfg = self.cfg
        save_adapter(
            adapter,
            self.trained_tensors(),
            conversion=dict(cfg.conversion),
            base_model=cfg.model.name,
            base_hash=self.base_hash,
            precision=self.precision_policy(),
            config=cfg.to_dict(),
            step=self.step,
        )
        state = {
            "format": RESUME_FORMAT,
            "format_version": RESUME_VERSION,
            "step": self.step,
            "data_position": self.step,  # next optimiser step; micro-batch ids follow from it
            "world_size": self.info.world_size,
            "trainable": {n: p.detach().to("cpu").clone() for n, p in self.trainable},
            "optimiser": self.optimiser.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(),
            "config": cfg.to_dict(),
            "base_hash": self.base_hash,
        }
        import io

        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(resume, buf.getvalue())
        return adapter, resume

    def precision_policy(self) -> dict[str, Any]:
        q = self.cfg.qat
        return {
            "fp8_qat": q.enabled,
            "fp8_format": "e4m3",
            "qat_modules": q.modules,
            "qat_skip": q.skip,
            "autocast": self.cfg.precision.autocast,
        }

    def load_resume(self, path: str | Path) -> None:
        """Restore the state saved by :meth:`save_checkpoint` (same config, same base, same world size)."""
        path = Path(path)
        if path.is_dir():
            path = path / RESUME_FILE
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError as exc:
            raise CheckpointError(
                f"no resume checkpoint at {path}", hint="run without --resume to start a new run"
            ) from exc
        except Exception as exc:  # torch raises assorted errors for truncated/foreign files
            raise CheckpointError(f"{path} is not a readable resume checkpoint ({exc})") from exc
        if not isinstance(state, dict) or state.get("format") != RESUME_FORMAT:
            raise CheckpointError(f"{path} is not a Lite3R resume checkpoint")
        if state["base_hash"] != self.base_hash:
            raise CheckpointError(
                f"{path} was made from different base weights than this run loads",
                hint="resume with the same model.weights as the original run",
            )
        if state["world_size"] != self.info.world_size:
            raise CheckpointError(
                f"{path} was saved by {state['world_size']} process(es), this run has {self.info.world_size}",
                hint="resume with the same number of processes (the data order depends on it)",
            )
        # Settings that do not change the trajectory may differ (more steps, another folder, …).
        saved, now = _trajectory_settings(state["config"]), _trajectory_settings(self.cfg.to_dict())
        if saved != now:
            diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
            raise CheckpointError(
                f"{path} was saved with a different config ({', '.join(diff)} differ)",
                hint="resume with the run's own config.yaml",
            )
        params = dict(self.trainable)
        if set(state["trainable"]) != set(params):
            raise CheckpointError(f"{path}: its trained tensors do not match this run's trainable set")
        with torch.no_grad():
            for n, t in state["trainable"].items():
                params[n].copy_(t)
        self.optimiser.load_state_dict(state["optimiser"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        self.step = int(state["step"])

    # -- forward passes ---------------------------------------------------------------------------------
    def _autocast(self):
        if self.cfg.precision.autocast == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def prepare_batch(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        if "world_points" in batch:  # into camera 0's frame, like the poses below
            e0 = batch["extrinsics"][:, 0].to(batch["world_points"].dtype)  # [B, 3, 4]
            pts = batch["world_points"]
            moved = torch.einsum("bij,bshwj->bshwi", e0[:, :, :3], pts) + e0[:, None, None, None, :, 3]
            batch["world_points"] = torch.where(batch["valid"][..., None], moved, torch.zeros_like(moved))
        batch["extrinsics"] = canonicalise_to_view0(batch["extrinsics"])
        images = batch["images"]
        if self.input_normalization == "imagenet":
            mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(3, 1, 1)
            std = torch.tensor(IMAGENET_STD, device=images.device).view(3, 1, 1)
            images = (images - mean) / std
        elif self.input_normalization != "none":
            raise InputError(f"unknown input_normalization {self.input_normalization!r}")
        batch["model_images"] = images
        return batch

    def _teacher_forward(self, images: torch.Tensor) -> None:
        with torch.no_grad():
            if self.teacher_trunk_only and hasattr(self.teacher, "encode"):
                self.teacher.encode(images)
            else:
                self.teacher(images)

    def losses(self, batch: dict[str, torch.Tensor], kd_gamma: float):
        """Forward student (and teacher) on one micro-batch → (total loss, {term: value})."""
        images = batch["model_images"]
        with self._autocast():
            if self.kd_modules:
                rec_s = AttentionRecorder(self.student, self.kd_modules)
                rec_t = AttentionRecorder(self.teacher, self.kd_modules, detach=True)
                with rec_s:
                    preds = self.student(images)
                with rec_t:
                    self._teacher_forward(images)
            else:
                preds = self.student(images)
            task, terms = self.comp.task_loss(preds, batch, self.cfg.loss)
            terms = {k: v for k, v in terms.items()}
            total = task
            if self.kd_modules:
                kd = attention_kd_loss(rec_s, rec_t)
                rec_t.clear()
                total = task + kd_gamma * kd
                terms["kd"] = kd
        terms["task"] = task
        return total, terms, preds, (rec_s if self.kd_modules else None)

    # -- training ---------------------------------------------------------------------------------------
    def _data_device(self) -> torch.device:
        return self.device if self.cfg.data.num_workers == 0 else torch.device("cpu")

    def _loader(self, start_step: int) -> Iterator[dict[str, torch.Tensor]]:
        """This rank's micro-batches from ``start_step`` on (in-process, or from DataLoader workers)."""
        cfg = self.cfg
        data = MicroBatches(self._train_data, cfg.data.batch_size, cfg.data.views)
        sampler = RankSampler(start_step, cfg.steps, cfg.optim.grad_accum, self.info)
        if cfg.data.num_workers == 0:
            return (data[g] for g in sampler)
        gen = torch.Generator().manual_seed(cfg.seed * 1000 + self.info.rank)
        return iter(
            torch.utils.data.DataLoader(
                data,
                batch_size=None,
                sampler=sampler,
                num_workers=cfg.data.num_workers,
                worker_init_fn=_seed_worker,
                generator=gen,
                pin_memory=self.device.type == "cuda",
            )
        )

    def train_step(self, micro_batches: Iterator[dict[str, torch.Tensor]]) -> dict[str, float]:
        cfg = self.cfg
        A = cfg.optim.grad_accum
        gamma = kd_weight(self.step, cfg.steps, cfg.distill.gamma_max, cfg.distill.gamma_min)
        sums: dict[str, float] = {}
        for _ in range(A):
            batch = self.prepare_batch(next(micro_batches))
            total, terms, _, rec = self.losses(batch, gamma)
            if not total.requires_grad:
                raise UnsupportedError(
                    "no trainable parameter influences the loss: every converted attention ran its dense "
                    f"fallback (sequences shorter than 2 key blocks of {self.cfg.conversion.get('block_k', 64)} "
                    "tokens?) or the trainable tensors are not used",
                    hint="use more views / larger images, or smaller conversion.block_q / block_k",
                )
            (total / A).backward()
            if rec is not None:
                rec.clear()
            for k, v in {"loss": total, **terms}.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) / A
        params = [p for _, p in self.trainable]
        average_gradients(params, self.info)
        if cfg.optim.grad_clip:
            gn = torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip, foreach=False)
        else:
            gn = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))
        lr = self.optimiser.param_groups[0]["lr"]
        self.optimiser.step()
        self.scheduler.step()
        self.optimiser.zero_grad(set_to_none=True)
        self.step += 1
        sums = mean_over_ranks(sums, self.info, self.device)
        sums["grad_norm"] = float(gn)
        sums["gamma"] = gamma if self.kd_modules else 0.0
        sums["lr"] = lr
        return sums

    def run(
        self, should_stop: Callable[[], bool] = lambda: False, resume: str | Path | None = None
    ) -> RunResult:
        cfg = self.cfg
        if self.info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        if resume is not None:
            self.load_resume(resume)
        elif self.info.is_main:
            cfg.save(self.out / CONFIG_FILE)
        start = self.step
        global_batch = cfg.data.batch_size * cfg.optim.grad_accum * self.info.world_size
        self.emit(
            {
                "event": "started",
                "step": self.step,
                "total": cfg.steps,
                "resumed": resume is not None,
                "output_dir": str(self.out),
                "model": cfg.model.name,
                "device": str(self.device),
                "world_size": self.info.world_size,
                "global_batch": global_batch,
                "trainable_parameters": self.num_trainable,
                "total_parameters": self.num_params,
                "trainable": [n for n, _ in self.trainable],
                "converted_sites": self.converted_sites,
                "distilled_sites": self.kd_sites,
                "checkpointed_blocks": self.checkpointed_blocks,
                "base_hash": self.base_hash,
            }
        )
        batches = self._loader(start)
        t0 = time.perf_counter()
        window: list[float] = []
        last = t0
        metrics: dict[str, float] = {}
        try:
            while self.step < cfg.steps:
                if any_rank(bool(should_stop()), self.info, self.device):
                    _, resume_path = self.save_checkpoint()
                    self.emit({"event": "checkpoint", "step": self.step, "path": str(resume_path)})
                    self.emit({"event": "cancelled", "step": self.step, "checkpoint": str(resume_path)})
                    return RunResult("cancelled", self.step, self.out / ADAPTER_FILE, resume_path)
                logs = self.train_step(batches)
                now = time.perf_counter()
                window = [*window[-19:], now - last]
                last = now
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    sps = len(window) / sum(window)
                    self.emit(
                        {
                            "event": "step",
                            "step": self.step,
                            "total": cfg.steps,
                            "loss": logs.pop("loss"),
                            "terms": {k: v for k, v in logs.items() if k not in ("lr",)},
                            "lr": logs["lr"],
                            "steps_per_s": sps,
                            "samples_per_s": sps * global_batch,
                            "samples_per_s_per_process": sps * global_batch / self.info.world_size,
                            "eta_s": (cfg.steps - self.step) / sps,
                            "elapsed_s": now - t0,
                        }
                    )
                if cfg.eval.every and self.step % cfg.eval.every == 0 and self.step < cfg.steps:
                    self.emit({"event": "eval", "step": self.step, "metrics": self.evaluate()})
                if cfg.checkpoint.every and self.step % cfg.checkpoint.every == 0 and self.step < cfg.steps:
                    _, resume_path = self.save_checkpoint()
                    self.emit({"event": "checkpoint", "step": self.step, "path": str(resume_path)})
                last = time.perf_counter()  # steps_per_s counts training steps, not evaluations / checkpoints
        finally:
            del batches
        adapter, resume_path = self.save_checkpoint()
        self.emit({"event": "checkpoint", "step": self.step, "path": str(resume_path)})
        if cfg.eval.at_end:
            metrics = self.evaluate()
            self.emit({"event": "eval", "step": self.step, "metrics": metrics})
        self.emit(
            {
                "event": "finished",
                "step": self.step,
                "adapter": str(adapter),
                "elapsed_s": time.perf_counter() - t0,
            }
        )
        return RunResult("finished", self.step, adapter, resume_path, metrics)

    # -- evaluation -------------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """Held-out metrics of the student (and of the teacher, computed once) on ``eval.split``.

        Uses its own data and no global RNG, so evaluating never changes the training trajectory.
        Each rank evaluates a share of the scenes; the means are over all scenes.
        """
        cfg = self.cfg
        if self._val_data is None:
            self._val_data = self.comp.make_dataset(cfg.data, cfg.eval.split, cfg.seed, self.device)
        need_teacher = self.comp.batch_metrics is not None and self._teacher_metrics is None
        n = cfg.eval.scenes
        mine = range(self.info.rank, n, self.info.world_size)
        sums: dict[str, float] = {}

        def add(prefix, values):
            for k, v in values.items():
                sums[f"{prefix}/{k}"] = sums.get(f"{prefix}/{k}", 0.0) + float(v)

        with torch.no_grad():
            for i in mine:
                views = (cfg.eval.views, cfg.eval.views)
                batch = self.prepare_batch(self._val_data.batch(i, 1, views))
                _, terms, preds, rec = self.losses(batch, kd_gamma=0.0)
                if rec is not None:
                    rec.clear()
                add("val", terms)
                if self.comp.batch_metrics is not None:
                    add("val", self.comp.batch_metrics(preds, batch))
                if need_teacher:
                    with self._autocast():
                        tpreds = self.teacher(batch["model_images"])
                    add("teacher", self.comp.batch_metrics(tpreds, batch))
        sums = mean_over_ranks(sums, self.info, self.device)
        means = {k: v * self.info.world_size / n for k, v in sums.items()}
        if need_teacher:
            self._teacher_metrics = {k: v for k, v in means.items() if k.startswith("teacher/")}
        return {**means, **(self._teacher_metrics or {})}


def _trajectory_settings(config: dict) -> dict:
    d = {
        k: v
        for k, v in config.items()
        if k not in ("steps", "output_dir", "eval", "checkpoint", "log_every", "threads", "name", "device")
    }
    d["data"] = {k: v for k, v in d.get("data", {}).items() if k != "num_workers"}
    return d


def run_distillation(
    config: DistillRunConfig,
    components: Components | None = None,
    emit: Emit | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    resume: str | Path | None = None,
    dist_info: DistInfo | None = None,
) -> RunResult:
    """Build a :class:`Distiller` and run it (the worker and ``lite3r train`` call this)."""
    return Distiller(config, components, emit, dist_info).run(should_stop=should_stop, resume=resume)
