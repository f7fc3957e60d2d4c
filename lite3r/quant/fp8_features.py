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
"""

from __future__ import annotations

import dataclasses

import torch

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
    "dequantize_features",
    "dequantize_frames",
    "feature_bytes",
    "fp8_bytes",
    "quantize_features",
    "quantize_tensor",
]
