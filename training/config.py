"""Distillation run configuration: nested dataclasses ↔ YAML, saved with every run.

One file describes a run completely (base model, conversion, precision policy, losses, optimiser,
data, evaluation, checkpoints), so a run can be repeated, resumed and audited from its output folder.
Unknown keys and wrong types are errors that name the file and the key: a typo must never silently
fall back to a default.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lite3r.errors import InputError

# The conversion the headline run uses: SLA on the cross-view (global) sites, 10 % of the key
# blocks kept. Passed verbatim to ``lite3r.convert.Lite3RConfig`` (its fields are the SLA helper's).
DEFAULT_CONVERSION: dict[str, Any] = {"sites": ["global"], "keep_ratio": 0.1}


@dataclass
class ModelConfig:
    """The dense base model (the teacher) and where its weights come from."""

    name: str = "lite3r-tiny"  # a name in lite3r.models.registry
    weights: str | None = None  # weights file; None → the registry's default for `name`
    random_init: bool = False  # seeded random weights instead of a checkpoint (tests, memory checks)
    init_seed: int = 0
    # The family's model config (e.g. VGGTConfig.to_dict()) for random_init; None → the registry's
    # config for `name` (VGGT-1B has one; lite3r-tiny's comes with its weights).
    config: dict[str, Any] | None = None


@dataclass
class QATConfig:
    """FP8 fake quantisation of the student's Linears (E4M3, per-token / per-row, as the kernel)."""

    enabled: bool = True
    # Which Linears: "trunk" (those under the model's trunk_modules(), what deployment runs in FP8),
    # "all", or a list of qualified module names whose Linears are wrapped.
    modules: str | list[str] = "trunk"
    # Substrings of qualified names left unquantised. One policy for training and deployment
    # (method.md C2): proj_lin stays bf16 in both (lite3r.quant.selection.DEFAULT_SKIP).
    skip: list[str] = field(default_factory=lambda: ["proj_lin"])


@dataclass
class DistillConfig:
    """Partial attention distillation: MSE of attention-sublayer outputs, student vs teacher."""

    enabled: bool = True
    sites: list[str] | None = None  # attention-site names; None → the sites the conversion touched
    gamma_max: float = 0.1  # γ(t) decays on a cosine from gamma_max (step 0) to gamma_min (last step)
    gamma_min: float = 0.01


@dataclass
class LossConfig:
    """Task-loss weights (passed to lite3r.training.losses)."""

    camera_weight: float = 1.0
    depth_weight: float = 1.0
    options: dict[str, Any] = field(default_factory=dict)  # extra keyword arguments for the task loss


@dataclass
class OptimConfig:
    lr: float = 1.0e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1.0e-8
    weight_decay: float = 0.0
    warmup_steps: int = 30
    schedule: str = "cosine"  # cosine | linear | constant (after the linear warm-up)
    min_lr_ratio: float = 0.1  # final lr = lr × min_lr_ratio (cosine / linear)
    grad_clip: float | None = 1.0  # global L2 norm; None → no clipping
    grad_accum: int = 1  # micro-batches per optimiser step (per process)


@dataclass
class PrecisionConfig:
    autocast: str = "bf16"  # bf16 | fp32 (no autocast); the model's heads keep their own fp32 policy
    activation_checkpointing: bool = False  # recompute trunk blocks in backward (full-size models)
    # Deterministic GPU kernels (bit-for-bit resume on CUDA; slower). CPU runs are deterministic anyway.
    deterministic: bool = False


@dataclass
class DataConfig:
    source: str = "synthetic"  # synthetic | blendedmvs | dtu
    root: str | None = None  # dataset folder (blendedmvs / dtu)
    image_size: int = 224
    views: tuple[int, int] = (2, 8)  # views per training sample, drawn uniformly in [min, max]
    batch_size: int = 1  # samples per micro-batch, per process
    num_workers: int = 0
    options: dict[str, Any] = field(default_factory=dict)  # extra keyword arguments for the dataset


@dataclass
class EvalConfig:
    """Periodic evaluation on held-out data only (synthetic validation split / BlendedMVS val PIDs)."""

    every: int = 0  # optimiser steps between evaluations; 0 → only at the end
    at_end: bool = True
    split: str = "val"  # never "train"; "test" only for the final report, never during training
    scenes: int = 16
    views: int = 8


@dataclass
class CheckpointConfig:
    every: int = 50  # optimiser steps between adapter + resume checkpoints (0 → only at the end)


@dataclass
class DistillRunConfig:
    """Everything a distillation run needs. Saved as ``config.yaml`` in the output folder."""

    name: str = "lite3r-distill"
    output_dir: str = "runs/lite3r-distill"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    steps: int = 100  # optimiser steps
    threads: int | None = None  # torch CPU threads (None → leave as is)
    log_every: int = 1
    model: ModelConfig = field(default_factory=ModelConfig)
    conversion: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_CONVERSION))
    qat: QATConfig = field(default_factory=QATConfig)
    # Extra fnmatch patterns on parameter names to train besides proj_lin (empty by default).
    unfreeze: list[str] = field(default_factory=list)
    distill: DistillConfig = field(default_factory=DistillConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def validate(self, source: str = "config") -> DistillRunConfig:
        """Reject unsupported combinations loudly (a bad value must not train for hours)."""

        def bad(key, msg):
            raise InputError(f"{source}: {key}: {msg}", hint="fix the value in the YAML file")

        if self.steps < 1:
            bad("steps", f"must be ≥ 1, got {self.steps}")
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith("cuda")):
            bad("device", f"must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.optim.schedule not in ("cosine", "linear", "constant"):
            bad("optim.schedule", f"must be cosine, linear or constant, got {self.optim.schedule!r}")
        if self.optim.grad_accum < 1:
            bad("optim.grad_accum", "must be ≥ 1")
        if self.optim.warmup_steps < 0:
            bad("optim.warmup_steps", "must be ≥ 0")
        if not 0.0 <= self.optim.min_lr_ratio <= 1.0:
            bad("optim.min_lr_ratio", "must be in [0, 1]")
        if self.precision.autocast not in ("bf16", "fp32"):
            bad("precision.autocast", f"must be bf16 or fp32, got {self.precision.autocast!r}")
        if self.data.source not in ("synthetic", "blendedmvs", "dtu"):
            bad("data.source", f"must be synthetic, blendedmvs or dtu, got {self.data.source!r}")
        if self.data.source != "synthetic" and not self.data.root:
            bad("data.root", f"the {self.data.source} source needs the dataset folder")
        lo, hi = self.data.views
        if not 1 <= lo <= hi:
            bad("data.views", f"must be [min, max] with 1 ≤ min ≤ max, got {list(self.data.views)}")
        if self.data.batch_size < 1:
            bad("data.batch_size", "must be ≥ 1")
        if self.eval.split == "train":
            bad("eval.split", "evaluation must use held-out data (val or test), never the training split")
        if self.distill.gamma_min < 0 or self.distill.gamma_max < self.distill.gamma_min:
            bad("distill", "need 0 ≤ gamma_min ≤ gamma_max")
        if isinstance(self.qat.modules, str) and self.qat.modules not in ("trunk", "all"):
            bad("qat.modules", "must be trunk, all or a list of module-name patterns")
        if not isinstance(self.conversion, dict) or not self.conversion:
            bad("conversion", "must be a non-empty mapping (the lite3r.convert.Lite3RConfig fields)")
        return self

    # ---- serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return _to_plain(self)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    def save(self, path: str | Path) -> Path:
        """Write the YAML atomically (the run folder always holds a complete config)."""
        from lite3r.adapters import atomic_write_bytes

        return atomic_write_bytes(Path(path), self.to_yaml().encode())

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> DistillRunConfig:
        return _from_plain(cls, data, source, "").validate(source)

    @classmethod
    def load(cls, path: str | Path) -> DistillRunConfig:
        import yaml

        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise InputError(f"cannot read the config file {path}: {exc.strerror}") from exc
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise InputError(f"{path} is not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise InputError(f"{path}: the top level must be a mapping of settings")
        return cls.from_dict(data, source=str(path))

    def fingerprint(self) -> str:
        """Stable JSON of the config (what checkpoints record)."""
        return json.dumps(self.to_dict(), sort_keys=True)


def _to_plain(obj):
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): _to_plain(v) for k, v in obj.items()}
    return obj


def _from_plain(cls, data, source: str, prefix: str):
    if not isinstance(data, dict):
        raise InputError(f"{source}: {prefix or 'top level'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise InputError(
            f"{source}: unknown setting(s) {', '.join(prefix + k for k in unknown)}",
            hint=f"valid keys{' under ' + prefix.rstrip('.') if prefix else ''}: {', '.join(sorted(names))}",
        )
    kwargs = {}
    for key, value in data.items():
        kwargs[key] = _convert(hints[key], value, source, prefix + key)
    return cls(**kwargs)


def _convert(tp, value, source: str, key: str):
    """Check/convert one YAML value against a type hint (dataclass, Optional, list, tuple, scalars)."""

    def bad(expected):
        raise InputError(f"{source}: {key} must be {expected}, got {value!r}")

    if dataclasses.is_dataclass(tp):
        return _from_plain(tp, value, source, key + ".")
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            bad("set (not null)")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, source, key)
            except InputError as exc:
                errors.append(exc)
        raise errors[0]
    if tp is Any:
        return value
    if origin is list:
        if not isinstance(value, list):
            bad("a list")
        return [_convert(args[0], v, source, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            bad(f"a list of {len(args)} values")
        return tuple(_convert(a, v, source, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict:
        if not isinstance(value, dict):
            bad("a mapping")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            bad("true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            bad("an integer")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads `1e-8` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                bad("a number")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            bad("a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            bad("a string")
        return value
    raise TypeError(f"unsupported config type {tp!r} for {key}")
