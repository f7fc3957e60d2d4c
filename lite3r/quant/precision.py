"""Precision modes ``fp32`` | ``bf16`` | ``fp8``: what each device supports and how a model is set up.

Policy (applied by :func:`apply_precision`, once, at build time — no autocast re-casts per forward):

- ``fp32``: every parameter and buffer float32.
- ``bf16``: the trunk (``model.trunk_modules()``) in bfloat16, the heads (``model.head_modules()``)
  in float32.
- ``fp8``: as bf16, and every trunk Linear (except the skip list, default ``proj_lin``) runs a real
  FP8 GEMM with fused LayerNorm→FP8 and GELU→FP8 producers (``apply_fp8_inference``).

``head_precision`` (bf16 / fp8 only): ``fp32`` (default, as the references run their heads) or
``bf16``: the dense-prediction heads (the DPTs: VGGT depth/point, DA3 DualDPT) in bfloat16. Why: at
32 frames × 518 px the fp32 DPT convolutions and resamplings are ~100 of the 355 ms of a compiled
Lite3R FP8 forward on the H100 (``benchmarks/results/profile``). Their final activations (exp,
1 + exp) still run in float32. The camera heads stay float32 (a few tokens per frame: no time to win,
and pose is the most precision-sensitive output).

Boundary casts: a forward pre-hook on each trunk module casts its floating inputs (the images) to
bfloat16, so the model code needs no dtype logic on the way in (``cast_trunk_inputs``). The heads cast
their own inputs to float32, chunk by chunk (the models do this); a pre-hook on the head modules
(``cast_head_inputs=True``) would cast *all* cached features at once, which costs 2× their size in
float32, so it is off by default. An unsupported precision raises ``UnsupportedError`` with the
reason; nothing silently runs something else.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field

import torch
from torch import nn

from lite3r.errors import UnsupportedError

PRECISIONS = ("fp32", "bf16", "fp8")
HEAD_PRECISIONS = ("fp32", "bf16")
FP8_MIN_CAPABILITY = (8, 9)
# FP8 GEMM accumulation. Hopper's FP8 tensor cores add products into an accumulator of reduced
# precision (about 14 bits retained, DeepSeek-V3 technical report §3.3.2). With
# ``use_fast_accum=False`` the GEMM promotes partial sums into float32 registers every few K tiles;
# ``True`` keeps the tensor-core accumulator over the whole K loop: 1.2-1.3× faster GEMMs on the
# H100 at VGGT shapes (benchmarks/results/fp8), with an error that grows with K (1024 for
# qkv/proj/fc1, 4096 for fc2). Off until measured to be harmless next to the quantisation error:
# tests/test_fp8_gpu.py::test_fast_accumulation_error and benchmarks/bench_fp8_linear.py print both.
FP8_FAST_ACCUM_DEFAULT = False


def _device(device) -> torch.device:
    d = torch.device(device)
    if d.type == "cuda" and d.index is None and torch.cuda.is_available():
        d = torch.device("cuda", torch.cuda.current_device())
    return d


@functools.cache
def _rowwise_fp8_probe(index: int) -> str | None:
    """Run a tiny row-wise scaled FP8 GEMM with a bf16 bias on GPU ``index``; None if it works."""
    try:
        dev = torch.device("cuda", index)
        a = torch.ones(16, 32, device=dev).to(torch.float8_e4m3fn)
        b = torch.ones(16, 32, device=dev).to(torch.float8_e4m3fn)
        out = torch._scaled_mm(
            a,
            b.t(),
            scale_a=torch.ones(16, 1, device=dev),
            scale_b=torch.ones(1, 16, device=dev),
            bias=torch.zeros(16, device=dev, dtype=torch.bfloat16),
            out_dtype=torch.bfloat16,
        )
        if not bool((out.float() == 32.0).all()):
            return "row-wise scaled FP8 GEMM returned wrong values"
    except Exception as e:  # any failure means "not supported here"; the reason is reported
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return None


def _triton_problem() -> str | None:
    try:
        import triton  # noqa: F401
        from torch.library import custom_op  # noqa: F401
    except ImportError as e:
        return f"the fused FP8 kernels need Triton and torch.library.custom_op ({e})"
    return None


def precision_support(device) -> dict[str, tuple[bool, str]]:
    """For each precision: (supported on ``device``, reason). The reason is shown to the user."""
    d = _device(device)
    out: dict[str, tuple[bool, str]] = {"fp32": (True, "supported everywhere")}
    if d.type == "cpu":
        out["bf16"] = (True, "supported on CPU (slower than fp32 on many CPUs)")
        out["fp8"] = (
            False,
            "fp8 needs an NVIDIA GPU with FP8 tensor cores (compute capability 8.9 or "
            "newer, e.g. H100, L40S, RTX 4090); FP8 GEMMs do not exist on the CPU",
        )
        return out
    if d.type != "cuda":
        reason = f"Lite3R runs bf16 and fp8 on CUDA GPUs (and bf16 on CPU), not on {d.type}"
        out["bf16"] = (False, reason)
        out["fp8"] = (False, reason)
        return out
    if not torch.cuda.is_available():
        reason = "CUDA is not available in this PyTorch build or on this machine"
        return {"fp32": (False, reason), "bf16": (False, reason), "fp8": (False, reason)}
    name = torch.cuda.get_device_name(d)
    cap = torch.cuda.get_device_capability(d)
    sm = f"sm_{cap[0]}{cap[1]}"
    if cap >= (8, 0):
        out["bf16"] = (True, f"{name} ({sm}) has bf16 tensor cores")
    else:
        out["bf16"] = (False, f"{name} ({sm}) has no bf16 tensor cores (needs compute capability 8.0+)")
    if cap < FP8_MIN_CAPABILITY:
        out["fp8"] = (
            False,
            f"{name} ({sm}) has no FP8 tensor cores (needs compute capability 8.9+, "
            "e.g. H100, L40S, RTX 4090)",
        )
        return out
    problem = _triton_problem()
    if problem is None and not hasattr(torch, "_scaled_mm"):
        problem = f"torch {torch.__version__} has no torch._scaled_mm"
    if problem is None:
        err = _rowwise_fp8_probe(d.index)
        if err is not None:
            problem = (
                f"torch {torch.__version__} cannot run row-wise scaled FP8 GEMMs on {name} ({sm}): {err}"
            )
    out["fp8"] = (problem is None, problem or f"{name} ({sm}) runs row-wise scaled FP8 GEMMs")
    return out


def check_precision(precision: str, device) -> None:
    """Raise ``UnsupportedError`` (with the reason) unless ``precision`` runs on ``device``."""
    if precision not in PRECISIONS:
        raise UnsupportedError(
            f"unknown precision {precision!r}", hint=f"choose one of {', '.join(PRECISIONS)}"
        )
    ok, reason = precision_support(device)[precision]
    if not ok:
        alternatives = [p for p, (good, _) in precision_support(device).items() if good]
        raise UnsupportedError(
            f"precision {precision} is not supported on {device}: {reason}",
            hint=f"choose {' or '.join(alternatives)}" if alternatives else None,
        )


@dataclass
class PrecisionReport:
    """What ``apply_precision`` set up; the engine records it with every result."""

    precision: str
    device: str
    trunk_dtype: str
    head_dtype: str
    trunk_modules: list[str] = field(default_factory=list)
    head_modules: list[str] = field(default_factory=list)
    trunk_input_cast: bool = True
    head_input_cast: bool = False
    fp8: dict | None = None  # FP8InferenceReport as a dict, for fp8
    bf16_heads: list[str] = field(default_factory=list)  # heads cast to bfloat16 (head_precision bf16)

    @property
    def heads_words(self) -> str:
        return "bf16 DPT heads · fp32 camera head" if self.bf16_heads else "fp32 heads"

    @property
    def description(self) -> str:
        """What runs, in words for the app/CLI, e.g. "fp8 trunk linears (LN/GELU→FP8 fused) · fp32 heads"."""
        if self.precision == "fp32":
            return "fp32"
        if self.precision == "bf16":
            return f"bf16 trunk · {self.heads_words}"
        f = self.fp8 or {}
        notes = []
        if f.get("fused_layernorms") or f.get("fused_gelus"):
            notes.append("LN/GELU→FP8 fused")
        if f.get("fast_accum"):
            notes.append("fast accumulation")
        detail = f" ({', '.join(notes)})" if notes else ""
        return f"fp8 trunk linears{detail} · bf16 trunk · {self.heads_words}"

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "description": self.description}


_FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)


def _cast_floats(obj, dtype: torch.dtype):
    from .fp8_format import QuantizedActivation

    if isinstance(obj, QuantizedActivation):
        return obj  # FP8-stored features stay as they are; the consumer dequantises them
    if isinstance(obj, torch.Tensor):
        cast = obj.is_floating_point() and obj.dtype != dtype and obj.dtype not in _FP8_DTYPES
        return obj.to(dtype) if cast else obj
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(_cast_floats(v, dtype) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cast_floats(v, dtype) for v in obj)
    if isinstance(obj, dict):
        return {k: _cast_floats(v, dtype) for k, v in obj.items()}
    return obj


def _cast_inputs_hook(dtype: torch.dtype):
    def hook(module, args, kwargs):
        return _cast_floats(args, dtype), _cast_floats(kwargs, dtype)

    return hook


def _model_parts(model: nn.Module) -> tuple[list[str], list[str]]:
    for attr in ("trunk_modules", "head_modules"):
        if not callable(getattr(model, attr, None)):
            raise TypeError(f"{type(model).__name__} has no {attr}() (see the model protocol)")
    return list(model.trunk_modules()), list(model.head_modules())


@torch.no_grad()
def apply_precision(
    model: nn.Module,
    precision: str,
    device,
    *,
    cast_trunk_inputs: bool = True,
    cast_head_inputs: bool = False,
    fp8_skip: tuple[str, ...] | None = None,
    fp8_fast_accum: bool | None = None,
    head_precision: str = "fp32",
) -> PrecisionReport:
    """Check ``precision`` on ``device``, then cast/convert ``model`` in place and move it there.

    The model must follow the protocol (``trunk_modules()``, ``head_modules()``). Modules that are
    neither trunk nor head keep float32. All parameters are frozen (inference). ``fp8_fast_accum``
    (fp8 only; None = ``FP8_FAST_ACCUM_DEFAULT``) selects the GEMMs' fast accumulation; it is
    recorded in the report and its description. Setting it for another precision raises.
    ``head_precision="bf16"`` casts the DPT heads to bfloat16 (module doc); refused with ``fp32``.
    """
    if head_precision not in HEAD_PRECISIONS:
        raise UnsupportedError(
            f"unknown head precision {head_precision!r}", f"choose one of {', '.join(HEAD_PRECISIONS)}"
        )
    if head_precision == "bf16" and precision == "fp32":
        raise UnsupportedError(
            "bf16 heads with an fp32 trunk: precision fp32 means everything in float32",
            "use precision bf16 or fp8 with bf16 heads",
        )
    if fp8_fast_accum is not None and precision != "fp8":
        raise ValueError(f"fp8_fast_accum applies to precision fp8 only, not {precision}")
    if fp8_fast_accum is None:
        fp8_fast_accum = FP8_FAST_ACCUM_DEFAULT
    if getattr(model, "_lite3r_precision", None) is not None:
        raise ValueError(
            f"apply_precision was already applied ({model._lite3r_precision}); build a fresh model"
        )
    check_precision(precision, device)
    d = _device(device)
    trunk, heads = _model_parts(model)
    model.requires_grad_(False)
    model.float()
    model.to(d)
    trunk_dtype = torch.float32 if precision == "fp32" else torch.bfloat16
    for name in trunk:
        model.get_submodule(name).to(trunk_dtype)
    fp8_report = None
    if precision == "fp8":
        from .fp8_inference import apply_fp8_inference
        from .selection import DEFAULT_SKIP

        skip = DEFAULT_SKIP if fp8_skip is None else tuple(fp8_skip)
        fp8_report = dataclasses.asdict(
            apply_fp8_inference(model, modules=trunk, skip=skip, mode="kernel", fast_accum=fp8_fast_accum)
        )
    bf16_heads = []
    if head_precision == "bf16":
        from lite3r.models.layers.dpt import DPTBase

        for name in heads:
            head = model.get_submodule(name)
            if isinstance(head, DPTBase):
                head.to(torch.bfloat16)
                bf16_heads.append(name)
        if not bf16_heads:
            raise UnsupportedError(
                f"head precision bf16: {type(model).__name__} has no DPT head among {heads}",
                "use head precision fp32",
            )
    hooks = precision != "fp32"
    if hooks and cast_trunk_inputs:
        for name in trunk:
            hook = _cast_inputs_hook(trunk_dtype)
            model.get_submodule(name).register_forward_pre_hook(hook, with_kwargs=True)
    if hooks and cast_head_inputs:
        for name in heads:
            hook = _cast_inputs_hook(torch.float32)
            model.get_submodule(name).register_forward_pre_hook(hook, with_kwargs=True)
    model._lite3r_precision = precision
    return PrecisionReport(
        precision=precision,
        device=str(d),
        trunk_dtype=str(trunk_dtype).replace("torch.", ""),
        head_dtype="bfloat16 (DPT) / float32 (camera)" if bf16_heads else "float32",
        trunk_modules=trunk,
        head_modules=heads,
        trunk_input_cast=hooks and cast_trunk_inputs,
        head_input_cast=hooks and cast_head_inputs,
        fp8=fp8_report,
        bf16_heads=bf16_heads,
    )
