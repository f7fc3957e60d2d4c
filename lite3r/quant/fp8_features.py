"""Optional FP8 storage of the trunk features kept for the heads (memory option, off by default).

The engine keeps only the layer outputs the heads read (VGGT: 4 layers of [B, S, P, 2C]). In bf16
they cost 2 bytes per value; stored as FP8 with one float32 scale per token they cost ~1 byte, which
matters at hundreds of frames. Whether the heads tolerate it is measured by
``benchmarks/bench_fp8_features.py`` (depth/camera outputs with bf16 vs FP8 cached features) —
enable it only where that measurement says the accuracy allows.

``quantize_features`` walks lists, tuples, dicts and dataclasses and replaces every floating tensor
with ≥ 2 dims by a ``QuantizedActivation`` (per token = per row of the last dim); other values pass
through. ``dequantize_features`` undoes it; ``dequantize_frames`` undoes it for a range of frames
only (dim 1 of [B, S, ...] tensors), so per-frame heads can work chunk by chunk without ever holding
all features in bf16 or float32 at once.

Engine wiring (``Reconstructor(feature_storage="fp8")``): :func:`feature_quantizer` decides, once at
build time, which quantiser runs (the Triton kernel on an FP8-capable GPU; the pure-PyTorch reference
on the CPU, where it is the same format spec, bit for bit; refused on a GPU without FP8 support) and
:func:`set_feature_storage` tells the trunk (VGGT aggregator, DA3 backbone: attribute
``kept_features_fp8``) to store each kept layer output as FP8 *as it is produced* — the bf16 copies of
the kept layers never coexist, and :func:`quantize_concat` builds a [frame half ‖ global half] output
frame chunk by frame chunk, so even one whole layer never exists in bf16. The heads then read
:func:`dequantize_frames` per frame chunk and :func:`dequantize_tokens` (the special tokens only) for
the camera head.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import nn

from .fp8_format import FP8_DTYPE, QuantizedActivation, dequantize_activation, fp8_bytes, quantize_activation


def quantize_tensor(x: torch.Tensor, use_kernel: bool | None = None) -> QuantizedActivation:
    """Per-token FP8 of ``x`` [..., K]: the Triton kernel on CUDA, the reference elsewhere.

    ``use_kernel``: None = kernel exactly when ``x`` is on CUDA. Both give identical codes and scales.
    """
    use_kernel = x.is_cuda if use_kernel is None else use_kernel
    if not use_kernel:
        return quantize_activation(x)
    from lite3r.kernels.fp8_quantize import fp8_quantize

    q, scale = fp8_quantize(x)
    return QuantizedActivation(q, scale, x.shape)


def _map(obj, fn):
    if isinstance(obj, QuantizedActivation | torch.Tensor):
        return fn(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(
            obj, **{f.name: _map(getattr(obj, f.name), fn) for f in dataclasses.fields(obj) if f.init}
        )
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(_map(v, fn) for v in obj))
    if isinstance(obj, list | tuple):
        return type(obj)(_map(v, fn) for v in obj)
    if isinstance(obj, dict):
        return {k: _map(v, fn) for k, v in obj.items()}
    return obj


def quantize_features(features, use_kernel: bool | None = None):
    """The same structure with every floating tensor of ≥ 2 dims stored as FP8 (per token)."""

    def fn(t):
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dim() >= 2 and t.dtype != FP8_DTYPE:
            return quantize_tensor(t, use_kernel)
        return t

    return _map(features, fn)


def dequantize_features(features, dtype: torch.dtype = torch.bfloat16):
    """The same structure with every ``QuantizedActivation`` turned back into a ``dtype`` tensor."""
    return _map(
        features, lambda t: dequantize_activation(t, dtype) if isinstance(t, QuantizedActivation) else t
    )


def dequantize_frames(features, start: int, stop: int, dtype: torch.dtype = torch.bfloat16):
    """Frames ``start:stop`` (dim 1) of every tensor / FP8 carrier in ``features``, as ``dtype`` tensors.

    Plain tensors are sliced (views); carriers are dequantised for those frames only.
    """

    def fn(t):
        if isinstance(t, QuantizedActivation):
            shape = tuple(t.shape)
            if len(shape) < 3:
                raise ValueError(f"dequantize_frames needs [B, S, ..., C] carriers, got shape {shape}")
            q = t.data.view(*shape)[:, start:stop]
            scale = t.scale.view(*shape[:-1], 1)[:, start:stop]
            return (q.float() * scale).to(dtype)
        if isinstance(t, torch.Tensor) and t.dim() >= 2:
            return t[:, start:stop]
        return t

    return _map(features, fn)


FEATURE_STORAGES = ("native", "fp8")
CONCAT_FRAMES_CHUNK = 8  # frames quantised at a time by quantize_concat (bounds its bf16 transient)


def feature_quantizer(storage: str, device) -> str | None:
    """Which quantiser stores the kept features: None (``native``: the trunk dtype), ``"kernel"``
    (Triton, CUDA GPUs that pass the FP8 precision check) or ``"reference"`` (pure PyTorch, CPU).

    FP8 storage needs no FP8 GEMM, only the E4M3 format, which the CPU has; on a CUDA GPU it needs
    the same FP8 support as precision ``fp8`` (the Triton cast to float8e4nv), and is refused with
    that reason otherwise. Nothing falls back.
    """
    from lite3r.errors import UnsupportedError

    if storage not in FEATURE_STORAGES:
        raise UnsupportedError(
            f"unknown feature storage {storage!r}", hint=f"choose one of {', '.join(FEATURE_STORAGES)}"
        )
    if storage == "native":
        return None
    d = torch.device(device)
    if d.type == "cpu":
        return "reference"
    if d.type != "cuda":
        raise UnsupportedError(f"FP8 feature storage is not available on {d.type}", hint="use native")
    from .precision import precision_support

    ok, reason = precision_support(d)["fp8"]
    if not ok:
        raise UnsupportedError(
            f"FP8 feature storage is not supported on {d}: {reason}", hint="use feature storage native"
        )
    return "kernel"


def set_feature_storage(model: nn.Module, quantizer: str | None, modules: Sequence[str]) -> list[str]:
    """Make the trunk modules ``modules`` (e.g. ``model.trunk_modules()``) store their kept layer
    outputs as FP8 with ``quantizer`` ("kernel" | "reference"), or natively (None). Returns the names
    of the modules set; raises ``UnsupportedError`` if none of them can store FP8 features."""
    from lite3r.errors import UnsupportedError

    if quantizer not in (None, "kernel", "reference"):
        raise ValueError(f"unknown quantizer {quantizer!r}")
    names = [n for n in modules if hasattr(model.get_submodule(n), "kept_features_fp8")]
    if not names and quantizer is not None:
        raise UnsupportedError(
            f"{type(model).__name__}'s trunk ({', '.join(modules)}) cannot store its features as FP8",
            hint="use feature storage native for this model",
        )
    for n in names:
        model.get_submodule(n).kept_features_fp8 = quantizer
    return names


def quantize_concat(
    parts: Sequence[torch.Tensor], quantizer: str, frames_chunk: int = CONCAT_FRAMES_CHUNK
) -> QuantizedActivation:
    """Per-token FP8 of ``torch.cat(parts, -1)`` for tensors [B, S, ..., Cᵢ], computed ``frames_chunk``
    frames (dim 1) at a time, so the concatenation only ever exists for a few frames. Identical codes
    and scales to quantising the whole concatenation (scales are per token)."""
    first = parts[0]
    shape = (*first.shape[:-1], sum(p.shape[-1] for p in parts))
    if first.dim() < 3:
        raise ValueError(f"quantize_concat needs [B, S, ..., C] tensors, got shape {tuple(first.shape)}")
    data = torch.empty(shape, dtype=FP8_DTYPE, device=first.device)
    scale = torch.empty((*shape[:-1], 1), dtype=torch.float32, device=first.device)
    S = shape[1]
    for a in range(0, S, frames_chunk):
        b = min(S, a + frames_chunk)
        chunk = torch.cat([p[:, a:b] for p in parts], dim=-1)
        qa = quantize_tensor(chunk, use_kernel=quantizer == "kernel")
        data[:, a:b] = qa.data.view(chunk.shape)
        scale[:, a:b] = qa.scale.view(*chunk.shape[:-1], 1)
    return QuantizedActivation(data.view(-1, shape[-1]), scale.view(-1, 1), torch.Size(shape))


def has_quantized(features) -> bool:
    """Whether ``features`` holds any FP8 carrier."""
    found = False

    def fn(t):
        nonlocal found
        found = found or isinstance(t, QuantizedActivation)
        return t

    _map(features, fn)
    return found


def dequantize_tokens(features, start: int, stop: int, dtype: torch.dtype = torch.bfloat16):
    """Tokens ``start:stop`` (dim 2) of every FP8 carrier [B, S, P, C] in ``features``, as ``dtype``
    tensors [B, S, stop−start, C]; plain tensors pass unchanged. For a camera head that reads only the
    special tokens of each frame (VGGT: ``patch_start_idx`` of them), so nothing else is dequantised."""

    def fn(t):
        if isinstance(t, QuantizedActivation):
            shape = tuple(t.shape)
            if len(shape) != 4:
                raise ValueError(f"dequantize_tokens needs [B, S, P, C] carriers, got shape {shape}")
            q = t.data.view(*shape)[:, :, start:stop]
            scale = t.scale.view(*shape[:-1], 1)[:, :, start:stop]
            return (q.float() * scale).to(dtype)
        return t

    return _map(features, fn)


def feature_bytes(features) -> int:
    """Bytes held by the tensors and FP8 carriers in ``features`` (shared tensors counted once)."""
    seen: set[int] = set()
    total = 0

    def fn(t):
        nonlocal total
        tensors = (t.data, t.scale) if isinstance(t, QuantizedActivation) else (t,)
        for x in tensors:
            key = x.untyped_storage().data_ptr() if x.numel() else id(x)
            if key not in seen:
                seen.add(key)
                total += x.untyped_storage().nbytes() if x.numel() else 0
        return t

    _map(features, fn)
    return total


__all__ = [
    "CONCAT_FRAMES_CHUNK",
    "FEATURE_STORAGES",
    "dequantize_features",
    "dequantize_frames",
    "dequantize_tokens",
    "feature_bytes",
    "feature_quantizer",
    "fp8_bytes",
    "has_quantized",
    "quantize_concat",
    "quantize_features",
    "quantize_tensor",
    "set_feature_storage",
]
