"""The real pieces a distillation run is built from (see :class:`~lite3r.training.distill.Components`).

- base model: :func:`lite3r.models.registry.load_model` (hash = SHA-256 of the weights file it read),
  or a seeded random model of the family's config (hash = SHA-256 of its state dict);
- conversion: :func:`lite3r.convert.convert` with :class:`lite3r.convert.Lite3RConfig`;
- FP8 QAT: :func:`lite3r.quant.fake_quant.apply_fp8_qat` with the same layer selection deployment uses;
- task loss: :mod:`lite3r.training.losses` (camera + confidence-weighted depth);
- data: SynthMV rendered online (:mod:`lite3r.training.data.synthetic`), or BlendedMVS / DTU through
  the evaluation loaders (:mod:`lite3r.eval.datasets`), centre-cropped to the training size;
- metrics: :func:`lite3r.eval.evaluate.evaluate_sample` (scale-aligned depth AbsRel, all-pairs pose
  AUC, Sim(3)-aligned Chamfer), a compact subset for the periodic evaluation.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from lite3r.adapters import hash_state_dict, hash_weights_file
from lite3r.errors import InputError, UnsupportedError

from .config import DataConfig, LossConfig, ModelConfig, QATConfig
from .distill import BaseModel, Components, sample_rng

# What the periodic evaluation reports (keys of lite3r.eval.evaluate.flatten(evaluate_sample(...))).
EVAL_KEYS = {
    "depth.lsq_scene.abs_rel": "depth_absrel",
    "depth.lsq_scene.delta1": "depth_delta1",
    "pose.auc@30": "auc30",
    "pose.auc@15": "auc15",
    "points.depth.all.chamfer": "chamfer",
}


def build() -> Components:
    return Components(
        load_base=load_base,
        convert=convert,
        apply_qat=apply_qat,
        task_loss=task_loss,
        make_dataset=make_dataset,
        batch_metrics=batch_metrics,
    )


# ---- models ----------------------------------------------------------------------------------------
def load_base(cfg: ModelConfig, device: torch.device) -> BaseModel:
    from lite3r.models.registry import get_spec, load_model

    spec = get_spec(cfg.name)
    if not cfg.random_init:
        model = load_model(cfg.name, weights=cfg.weights, strict=True, device=device)
        source = getattr(getattr(model, "load_report", None), "source", None)
        if not source:
            raise UnsupportedError(f"the {cfg.name} loader did not report which weights file it read")
        return BaseModel(model, hash_weights_file(source), str(source))
    if cfg.weights is not None:
        raise InputError("model.random_init and model.weights are exclusive", hint="set one of them")
    if spec.family not in FAMILY_CLASSES:
        raise UnsupportedError(f"random initialisation is not implemented for the {spec.family} family")
    config_cls, model_cls = (_import(path) for path in FAMILY_CLASSES[spec.family])
    if cfg.config is not None:
        config = config_cls.from_dict(cfg.config)
    elif spec.config is not None:
        config = spec.config()
    else:
        raise InputError(
            f"model.random_init for {cfg.name} needs model.config (its config comes with its weights)"
        )
    torch.manual_seed(cfg.init_seed)
    with torch.device(device):  # initialise in place (VGGT-1B: 1.2 B parameters)
        model = model_cls(config)
        model.init_weights()
    base_hash = hash_state_dict(model.state_dict())
    return BaseModel(model.eval(), base_hash, None)


FAMILY_CLASSES = {
    "vggt": ("lite3r.models.vggt.config:VGGTConfig", "lite3r.models.vggt.model:VGGT"),
    "da3": ("lite3r.models.da3.config:DA3Config", "lite3r.models.da3.model:DA3"),
}


def _import(path: str):
    import importlib

    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def convert(model: nn.Module, conversion: dict) -> nn.Module:
    from lite3r.convert import Lite3RConfig
    from lite3r.convert import convert as convert_model

    converted = convert_model(model, Lite3RConfig(**conversion))
    return converted if isinstance(converted, nn.Module) else model


def qat_roots(model: nn.Module, qat: QATConfig) -> list[str] | None:
    if qat.modules == "trunk":
        return list(model.trunk_modules())
    if qat.modules == "all":
        return None
    return list(qat.modules)


def apply_qat(model: nn.Module, qat: QATConfig) -> nn.Module:
    from lite3r.quant.fake_quant import apply_fp8_qat

    wrapped = apply_fp8_qat(model, qat_roots(model, qat), skip=tuple(qat.skip))
    if not wrapped:
        raise InputError(f"qat.modules={qat.modules!r} selects no Linear layer of the student")
    return model


# ---- loss ------------------------------------------------------------------------------------------
def task_loss(preds: dict, batch: dict[str, torch.Tensor], cfg: LossConfig):
    from . import losses

    return losses.distillation_task_loss(preds, batch, cfg)


# ---- data ------------------------------------------------------------------------------------------
class SynthScenes:
    """SynthMV, rendered on ``device`` as needed: training micro-batch ``g`` uses
    ``train_step_seeds(seed, g, …)``; held-out scene ``i`` is seed ``split_start + i``."""

    def __init__(self, split: str, seed: int, image_size: int, device: torch.device, options: dict) -> None:
        from .data import synthetic

        self.synthetic = synthetic
        if split not in synthetic.SPLITS:
            raise InputError(f"unknown synthetic split {split!r}; choose one of {tuple(synthetic.SPLITS)}")
        self.split, self.seed, self.image_size, self.device = split, seed, image_size, device
        self.config = synthetic.SynthConfig(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
        )

    def batch(self, g: int, batch_size: int, views: tuple[int, int]) -> dict[str, torch.Tensor]:
        syn = self.synthetic
        if self.split == "train":
            seeds, S = syn.train_step_seeds(self.seed, g, batch_size, tuple(views))
        else:
            seeds, S = syn.split_seeds(self.split, batch_size, start=g * batch_size), views[0]
        b = syn.render_batch(seeds, S, self.image_size, self.device, self.config)
        return {
            "images": b.images,
            "depth": b.depth,
            "valid": b.valid,
            "extrinsics": b.extrinsics,
            "intrinsics": b.intrinsics,
            "world_points": b.world_points,
        }


class EvalDatasetScenes:
    """BlendedMVS / DTU scenes via :mod:`lite3r.eval.datasets`, centre-cropped to ``image_size``.

    Training micro-batch ``g``: scenes and views drawn by an RNG owned by (seed, g). Held-out scene
    ``i``: the i-th scene of the split with its first S views (deterministic).
    """

    def __init__(self, name: str, root: str, split: str, seed: int, image_size: int, options: dict) -> None:
        from lite3r.eval.datasets import open_dataset

        if split == "test":
            split = "val"  # the loaders' held-out split
        self.dataset = open_dataset(name, root, split=split, **options)
        self.scene_names = self.dataset.scenes()
        if not self.scene_names:
            raise InputError(f"{name} split {split!r} at {root} has no scenes")
        self.training, self.seed, self.image_size = split == "train", seed, image_size

    def _tensors(self, sample) -> dict[str, torch.Tensor]:
        from lite3r.eval.datasets.base import center_square

        s = center_square(sample, self.image_size)
        images = np.stack(s.images).astype(np.float32) / 255.0
        valid = np.stack(s.valid_masks())
        depth = np.where(valid, np.stack(s.depth), 0.0).astype(np.float32)
        return {
            "images": torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
            "depth": torch.from_numpy(depth),
            "valid": torch.from_numpy(valid),
            "extrinsics": torch.from_numpy(s.extrinsics.astype(np.float32)),
            "intrinsics": torch.from_numpy(s.intrinsics.astype(np.float32)),
        }

    def batch(self, g: int, batch_size: int, views: tuple[int, int]) -> dict[str, torch.Tensor]:
        items = []
        if self.training:
            rng = sample_rng(self.seed, 11, g)
            S = int(rng.integers(views[0], views[1] + 1))
            for _ in range(batch_size):
                scene = self.scene_names[int(rng.integers(len(self.scene_names)))]
                ids = self.dataset.views(scene)
                pick = rng.choice(len(ids), size=min(S, len(ids)), replace=False)
                items.append(self._tensors(self.dataset.load(scene, [ids[j] for j in pick])))
        else:
            for b in range(batch_size):
                scene = self.scene_names[(g * batch_size + b) % len(self.scene_names)]
                items.append(self._tensors(self.dataset.load(scene, self.dataset.views(scene)[: views[0]])))
        return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def make_dataset(cfg: DataConfig, split: str, seed: int, device: torch.device):
    if cfg.source == "synthetic":
        return SynthScenes(split, seed, cfg.image_size, device, cfg.options)
    name = {"blendedmvs": "blendedmvs", "dtu": "dtu_train"}[cfg.source]
    return EvalDatasetScenes(name, cfg.root, split, seed, cfg.image_size, cfg.options)


# ---- metrics ---------------------------------------------------------------------------------------
def predictions_numpy(preds: dict, image_hw: tuple[int, int]):
    """A model's output dict (VGGT reference dict, DA3 network outputs) → numpy (depth [B,S,H,W], conf,
    extrinsics [B,S,3,4] world→camera, intrinsics [B,S,3,3])."""
    from lite3r.geometry import pose_encoding_to_extri_intri

    if "extrinsics" in preds:  # DA3: decoded cameras
        ext, intr = preds["extrinsics"].float(), preds["intrinsics"].float()
    else:  # VGGT: the last refinement's pose encoding
        ext, intr = pose_encoding_to_extri_intri(preds["pose_enc"].float(), image_hw)
    depth = preds["depth"].float()
    if depth.ndim == 5:
        depth = depth[..., 0]
    conf = preds.get("depth_conf")

    def np_(t):
        return None if t is None else t.detach().float().cpu().numpy()

    return np_(depth), np_(conf), np_(ext), np_(intr)


def batch_metrics(preds: dict, batch: dict[str, torch.Tensor]) -> dict[str, float]:
    """Mean over the batch of the headline metrics (per-scene pose AUC; pooled AUC is for final eval)."""
    from lite3r.eval.evaluate import GroundTruth, MetricConfig, Prediction, evaluate_sample, flatten

    hw = tuple(batch["images"].shape[-2:])
    depth, conf, ext, intr = predictions_numpy(preds, hw)
    cfg = MetricConfig(
        depth_policies=("lsq_scene",),
        lite3r_reference=False,
        point_sources=("depth",),
        max_points=20_000,
        align_max_points=20_000,
    )
    sums: dict[str, float] = {}
    B = depth.shape[0]
    for b in range(B):
        gt = GroundTruth(
            extrinsics=batch["extrinsics"][b].double().cpu().numpy(),
            intrinsics=batch["intrinsics"][b].double().cpu().numpy(),
            depth=batch["depth"][b].float().cpu().numpy(),
            valid=batch["valid"][b].cpu().numpy(),
        )
        pred = Prediction(
            depth=depth[b],
            depth_conf=None if conf is None else conf[b],
            extrinsics=ext[b],
            intrinsics=intr[b],
        )
        flat = flatten(evaluate_sample(pred, gt, cfg))
        for key, short in EVAL_KEYS.items():
            if key in flat:
                sums[short] = sums.get(short, 0.0) + flat[key] / B
    return sums
