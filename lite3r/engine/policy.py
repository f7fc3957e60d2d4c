"""How the engine sets a model up: device, precision and attention path, decided once, in one place.

Precision:
- ``fp32``: everything float32; TF32 is switched off while the engine runs (parity-grade numbers).
- ``bf16``: the trunk's weights are cast to bfloat16 (no autocast, so nothing is re-cast per call and
  attention sees bf16 q/k/v), the heads stay float32 (they cast their inputs).
- ``fp8``: as bf16, with real FP8 GEMMs in the trunk's linears.

All three are applied by :mod:`lite3r.quant.precision` (``apply_precision``: support check with the
reason, casts, input-cast hooks at the trunk/head boundaries, FP8 conversion) — one precision policy for
the project; a precision the device cannot run raises :class:`UnsupportedError` with the reason.

Attention:
- ``dense``: the model's own attention with an explicit SDPA backend: cuDNN for bf16/fp8 on CUDA (the
  fastest dense kernel on Hopper), memory-efficient for fp32 on CUDA (cuDNN has no fp32 kernel), and
  PyTorch's default choice on CPU. The chosen backend is the only one allowed, so a kernel that cannot
  run raises instead of silently falling back.
- ``sla``: :func:`lite3r.convert.convert` (or :func:`lite3r.adapters.load_adapter` for a trained
  adapter), converting on the run device so the Triton kernels are chosen on CUDA.

Compile: each trunk block is compiled on its own (:func:`lite3r.quant.compile.compile_trunk`), so
Inductor fuses the norms, residuals and activations around the GEMMs / attention kernels without
unrolling 72 blocks into one graph.

Memory options (both off by default; :func:`apply_memory_options`, after precision, before compile):
- ``feature_storage="fp8"``: the trunk stores the layer outputs its heads read as FP8 (per token) as
  they are produced; the heads dequantise them frame chunk by frame chunk
  (:mod:`lite3r.quant.fp8_features`). Refused where the device cannot quantise to FP8.
- ``mlp_chunk_tokens=N``: every trunk block runs its MLP on at most N tokens at a time
  (:mod:`lite3r.models.layers.block`), so the 4×-wide hidden never exists for the whole sequence.
Either option also embeds the images ``PATCH_EMBED_CHUNK_FRAMES`` frames at a time where the trunk
can (VGGT's aggregator: normalisation + DINO per frame chunk), so the normalised images never exist
for every frame at once.

Each step returns the words the app and CLI show (``"dense · cuDNN SDPA"``), naming what actually runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lite3r.errors import UnsupportedError
from lite3r.quant.compile import COMPILE_MODES

PRECISIONS = ("fp32", "bf16", "fp8")
ATTENTIONS = ("dense", "sla")

_SDPA_LABEL = {
    "cudnn": "cuDNN SDPA",
    "flash": "FlashAttention SDPA",
    "efficient": "memory-efficient SDPA",
    "math": "math SDPA",
    "auto": "PyTorch SDPA (auto)",
}


def resolve_device(device: str | torch.device) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UnsupportedError("a CUDA GPU was requested but none is available", "use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UnsupportedError(
                f"GPU {dev.index} does not exist ({torch.cuda.device_count()} found)", "use cuda:0"
            )
    elif dev.type != "cpu":
        raise UnsupportedError(f"device {device!r} is not supported", "use cuda or cpu")
    return dev


def preflight(
    precision: str, device: str | torch.device, attention: str = "dense", *, feature_storage: str = "native"
) -> torch.device:
    """Everything about a set-up that can be refused *before* a multi-GB model is loaded."""
    dev = resolve_device(device)
    if precision not in PRECISIONS:
        raise UnsupportedError(f"unknown precision {precision!r}", f"choose one of {', '.join(PRECISIONS)}")
    from lite3r.quant.precision import check_precision

    check_precision(precision, dev)
    if attention not in ATTENTIONS:
        raise UnsupportedError(f"unknown attention {attention!r}", f"choose one of {', '.join(ATTENTIONS)}")
    from lite3r.quant.fp8_features import feature_quantizer

    feature_quantizer(feature_storage, dev)
    return dev


# ---- precision -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrecisionSetup:
    precision: str
    trunk_dtype: torch.dtype
    description: str  # e.g. "bf16 trunk · fp32 heads"
    tf32: bool  # whether TF32 may be used while the engine runs
    report: Any = None  # lite3r.quant.precision.PrecisionReport when that module set the model up


def apply_precision(
    model: nn.Module,
    precision: str,
    device: torch.device,
    fp8_fast_accum: bool | None = None,
    head_precision: str = "fp32",
) -> PrecisionSetup:
    """Move ``model`` to ``device`` and set its precision. The one place the engine decides dtypes.
    ``head_precision`` "bf16" runs the DPT heads in bfloat16 (``lite3r.quant.precision``)."""
    from lite3r.quant.precision import apply_precision as quant_apply_precision

    if precision not in PRECISIONS:
        raise UnsupportedError(f"unknown precision {precision!r}", f"choose one of {', '.join(PRECISIONS)}")
    # Checks support (raises with the reason), casts, FP8 conversion of the trunk linears.
    report: Any = quant_apply_precision(
        model, precision, device, fp8_fast_accum=fp8_fast_accum, head_precision=head_precision
    )
    trunk_dtype = _param_dtype(model, model.trunk_modules())
    tf32 = False if precision == "fp32" else _default_tf32()
    return PrecisionSetup(
        precision, trunk_dtype, describe_precision(precision, report), tf32=tf32, report=report
    )


def describe_precision(precision: str, report: Any = None) -> str:
    """Words for the path that runs, e.g. "fp8 GEMMs (96 trunk linears) · bf16 trunk · fp32 heads"."""
    if precision == "fp32":
        return "fp32"
    heads = getattr(report, "heads_words", "fp32 heads")
    if precision == "bf16":
        return f"bf16 trunk · {heads}"
    fp8 = getattr(report, "fp8", None) or {}
    n = len(fp8.get("linears", ())) if isinstance(fp8, dict) else 0
    mode = fp8.get("mode", "") if isinstance(fp8, dict) else ""
    what = f"fp8 GEMMs ({n} trunk linears{', ' + mode if mode else ''})" if n else "fp8"
    return f"{what} · bf16 trunk · {heads}"


def _param_dtype(model: nn.Module, names: list[str]) -> torch.dtype:
    for name in names:
        for p in model.get_submodule(name).parameters():
            if p.is_floating_point() and p.dtype in (torch.float32, torch.bfloat16, torch.float16):
                return p.dtype
    return torch.float32


def _default_tf32() -> bool:
    return bool(torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32)


@contextlib.contextmanager
def tf32_state(enabled: bool | None):
    """Set TF32 (matmul + cuDNN) for the duration of a run and restore it; ``None`` leaves it alone."""
    if enabled is None:
        yield
        return
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# ---- memory options --------------------------------------------------------------------------------

PATCH_EMBED_CHUNK_FRAMES = 8  # frames normalised and DINO-embedded at a time under a memory option


@dataclass(frozen=True)
class MemorySetup:
    """Which memory options run; recorded with every result and bench row."""

    feature_storage: str = "native"  # "native" (trunk dtype) | "fp8"
    feature_quantizer: str | None = None  # "kernel" | "reference" when feature_storage is fp8
    mlp_chunk_tokens: int | None = None
    description: str = "features native · MLP unchunked"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def apply_memory_options(
    model: nn.Module, feature_storage: str, mlp_chunk_tokens: int | None, device: torch.device
) -> MemorySetup:
    """Set the trunk's memory options (raises ``UnsupportedError`` where one cannot run)."""
    from lite3r.models.layers.block import set_mlp_chunk_tokens
    from lite3r.quant.fp8_features import feature_quantizer, set_feature_storage

    if mlp_chunk_tokens is not None and (isinstance(mlp_chunk_tokens, bool) or int(mlp_chunk_tokens) < 1):
        raise UnsupportedError(
            f"mlp_chunk_tokens must be a positive number of tokens, got {mlp_chunk_tokens!r}",
            "use e.g. 16384, or None for no chunking",
        )
    quantizer = feature_quantizer(feature_storage, device)
    trunk = list(model.trunk_modules())
    set_feature_storage(model, quantizer, trunk)
    blocks = 0
    for name in trunk:
        blocks += len(set_mlp_chunk_tokens(model.get_submodule(name), mlp_chunk_tokens))
    if mlp_chunk_tokens is not None and blocks == 0:
        raise UnsupportedError(
            f"{type(model).__name__}'s trunk has no transformer blocks whose MLP can be chunked",
            "leave mlp_chunk_tokens unset for this model",
        )
    lean = quantizer is not None or mlp_chunk_tokens is not None
    embed = [n for n in trunk if hasattr(model.get_submodule(n), "patch_embed_chunk_frames")]
    for n in embed:
        model.get_submodule(n).patch_embed_chunk_frames = PATCH_EMBED_CHUNK_FRAMES if lean else None
    feat = "features native" if quantizer is None else f"features fp8 ({quantizer} quantiser)"
    mlp = "MLP unchunked" if mlp_chunk_tokens is None else f"MLP in chunks of {int(mlp_chunk_tokens)} tokens"
    if lean and embed:
        mlp += f" · images embedded {PATCH_EMBED_CHUNK_FRAMES} frames at a time"
    return MemorySetup(
        feature_storage,
        quantizer,
        None if mlp_chunk_tokens is None else int(mlp_chunk_tokens),
        f"{feat} · {mlp}",
    )


# ---- attention -------------------------------------------------------------------------------------


def default_sdpa_backend(precision: str, device: torch.device) -> str:
    if device.type != "cuda":
        return "auto"
    return "efficient" if precision == "fp32" else "cudnn"


def resolve_qk_kernel(qk_kernel: str | None, device: torch.device) -> str:
    """How the trunk applies qk-norm and RoPE: the fused Triton kernel on CUDA unless asked otherwise;
    PyTorch ops on CPU (the kernel is compiled for GPUs; asking for it on CPU is refused)."""
    from lite3r.attention.dense import QK_KERNELS

    if qk_kernel is None:
        return "triton" if device.type == "cuda" else "torch"
    if qk_kernel not in QK_KERNELS:
        raise UnsupportedError(f"unknown qk kernel {qk_kernel!r}", f"choose one of {', '.join(QK_KERNELS)}")
    if qk_kernel == "triton" and device.type != "cuda":
        raise UnsupportedError(
            "the fused qk-norm/RoPE kernel needs a CUDA GPU", "use qk_kernel='torch' on CPU"
        )
    return qk_kernel


def memory_options_on(feature_storage: str, mlp_chunk_tokens: int | None) -> bool:
    """Whether a memory option is on (FP8 head features or a chunked trunk MLP)."""
    return feature_storage != "native" or mlp_chunk_tokens is not None


def lean_key_loads(key_loads: str | None, memory_lean: bool) -> str | None:
    """SLA key loads to ask for: the requested ones, else "gather" when a memory option is on (TMA key
    loads hold one more K- and V-sized buffer per global layer, where the lean trunk's memory peaks),
    else None (the conversion's choice for the device)."""
    return key_loads or ("gather" if memory_lean else None)


def apply_attention(
    model: nn.Module,
    attention: str,
    sla: Any,
    precision: str,
    device: torch.device,
    sdpa_backend: str | None = None,
    adapter: str | os.PathLike | None = None,
    qk_kernel: str | None = None,
    memory_lean: bool = False,
) -> str:
    """Set the attention path; returns its description (what the app and the CLI summary show).

    ``sla`` is a ``lite3r.convert.Lite3RConfig``, a dict of its fields, a keep ratio, or None (the
    defaults); ``adapter`` is a trained adapter file (attention must be "sla"), whose own conversion
    config is used. ``memory_lean`` (a memory option is on): SLA reads its key blocks by gathers unless
    the config names its key loads, since TMA key loads hold one more K- and V-sized buffer per global
    layer, where the lean trunk's memory peaks (benchmarks/results/memory).
    """
    from lite3r.attention.dense import SDPA_BACKENDS, set_sdpa_backend

    if attention not in ATTENTIONS:
        raise UnsupportedError(f"unknown attention {attention!r}", f"choose one of {', '.join(ATTENTIONS)}")
    backend = sdpa_backend or default_sdpa_backend(precision, device)
    if backend not in SDPA_BACKENDS:
        raise UnsupportedError(
            f"unknown SDPA backend {backend!r}", f"choose one of {', '.join(SDPA_BACKENDS)}"
        )
    if device.type == "cpu" and backend in ("cudnn", "efficient"):
        raise UnsupportedError(
            f"the {backend} SDPA backend needs a CUDA GPU", "use the default backend on CPU"
        )
    if backend == "cudnn" and precision == "fp32":
        raise UnsupportedError(
            "cuDNN SDPA has no fp32 kernel", "use bf16, or the 'efficient' backend for fp32"
        )
    set_sdpa_backend(model, backend)
    # qk-norm + RoPE of the trunk's attentions: one Triton kernel each on CUDA by default (inference
    # only; it writes the attention dtype with no float32 intermediates, lite3r.kernels.qk_norm_rope).
    from lite3r.attention.dense import set_qk_kernel

    qk = resolve_qk_kernel(qk_kernel, device)
    for name in model.trunk_modules():
        set_qk_kernel(model.get_submodule(name), qk)
    # The heads run in fp32 (camera trunk attention over S tokens); cuDNN has no fp32 kernel, so they
    # use the memory-efficient backend on the GPU whatever the trunk uses.
    head_backend = "efficient" if device.type == "cuda" else "auto"
    for name in model.head_modules():
        head = getattr(model, name, None)
        if head is not None:
            set_sdpa_backend(head, head_backend)
    dense_label = "PyTorch SDPA (CPU)" if device.type == "cpu" and backend == "auto" else _SDPA_LABEL[backend]
    if device.type == "cpu" and backend != "auto":
        dense_label += " (CPU)"
    if attention == "dense":
        if adapter is not None or sla is not None:
            raise UnsupportedError(
                "an SLA configuration or adapter was given with dense attention", "use attention='sla'"
            )
        return f"dense · {dense_label}"
    import lite3r.convert as convert_mod

    if adapter is not None:
        # The adapter carries its own conversion config (the one it was trained with) and the hash of
        # the base weights it was fitted to; load_adapter converts and refuses a foreign base.
        if sla is not None:
            raise UnsupportedError(
                "an adapter brings its own SLA configuration (keep ratio, blocks, sites)",
                "drop --keep when using --adapter",
            )
        from lite3r.adapters import load_adapter

        load_adapter(model, adapter, device=device, key_loads=lean_key_loads(None, memory_lean))
        result = model
    else:
        config = sla
        if config is None:
            config = convert_mod.Lite3RConfig()
        elif isinstance(config, float | int):
            config = convert_mod.Lite3RConfig(keep_ratio=float(config))
        elif isinstance(config, dict):
            config = convert_mod.Lite3RConfig(**config)
        key_loads = lean_key_loads(config.key_loads, memory_lean)
        if key_loads != config.key_loads:
            config = dataclasses.replace(config, key_loads=key_loads)
        result = convert_mod.convert(model, config, device=device)
    desc = getattr(result, "description", None)
    if callable(desc):
        desc = desc()
    if not desc:
        desc = getattr(model, "attention_description", None)
        desc = desc() if callable(desc) else desc
    if not desc:
        raise UnsupportedError(
            "the SLA conversion did not report which kernel runs",
            "update lite3r.convert so convert() returns a description of the path",
        )
    return f"{desc}{fused_qk_note(model)}"


def fused_qk_note(model: nn.Module) -> str:
    """What the description adds when SLA modules run the fused-qk inference path (TMA key loads and the
    qk-norm/RoPE kernel: ``SparseLinearAttention.attention_path`` ends in "fused-qk")."""
    from lite3r.attention.sla import SparseLinearAttention

    if any(isinstance(m, SparseLinearAttention) and m.fused_qk_configured() for m in model.modules()):
        return " · fused qk (pooled q, keys in block order)"
    return ""


# ---- compile ---------------------------------------------------------------------------------------


def compile_trunk(model: nn.Module, mode: str, backend: str = "inductor") -> str:
    """Compile each trunk block in place (``mode``; reduce-overhead = CUDA graphs), and the DPT heads'
    main chain (Inductor default mode: the heads run chunk by chunk and keep every chunk's output,
    which CUDA-graph replays would overwrite). ``backend`` other than inductor is for tests."""
    from lite3r.models.layers.dpt import DPTBase, compile_dpt_head
    from lite3r.quant.compile import compile_trunk as compile_blocks

    if mode not in COMPILE_MODES:
        raise UnsupportedError(f"unknown compile mode {mode!r}", f"choose one of {', '.join(COMPILE_MODES)}")
    if mode == "none":
        return "eager"
    report = compile_blocks(model, mode, model.trunk_modules(), dynamic=True, backend=backend)
    heads = [n for n in model.head_modules() if isinstance(model.get_submodule(n), DPTBase)]
    for name in heads:
        compile_dpt_head(model.get_submodule(name), backend=backend)
    return f"torch.compile ({mode}, {len(report.blocks)} blocks; {len(heads)} DPT heads)"
