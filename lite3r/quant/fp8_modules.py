"""Deployment FP8 modules: ``FP8Linear`` (real FP8 GEMM) and the fused producers feeding it.

- ``FP8Linear`` stores its weight once as float8_e4m3fn [N, K] plus float32 per-row scales (the
  bf16/fp32 weight is freed) and runs ``torch._scaled_mm`` with row-wise scales (activation [M, 1],
  weight [1, N]), bf16 output and the bias fused in the GEMM. Its input is either a tensor (quantised
  per token by the standalone Triton kernel) or a ``QuantizedActivation`` made by a fused producer.
- ``LayerNormFP8`` replaces ``norm1``/``norm2`` (keys ``weight``/``bias`` as in ``nn.LayerNorm``) and
  returns a ``QuantizedActivation`` for the following ``qkv``/``fc1``.
- ``GeluFP8`` replaces ``mlp.act`` and returns a ``QuantizedActivation`` for ``fc2``.

``mode="kernel"`` needs a CUDA GPU with FP8 tensor cores and raises ``UnsupportedError`` elsewhere.
``mode="reference"`` is pure PyTorch (the format spec and a dequantised float32 matmul); it exists
only to prove on CPU that deployment computes what QAT simulates, bit for bit. Nothing falls back
from one mode to the other.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lite3r.errors import UnsupportedError

from .fp8_format import FP8_DTYPE, QuantizedActivation, quantize_activation, quantize_rowwise

MODES = ("kernel", "reference")
GEMM_ALIGN = 16  # torch._scaled_mm needs K and N to be multiples of 16


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown FP8 mode {mode!r}; choose one of {MODES}")


def load_kernels() -> None:
    """Import the Triton kernels, which registers the ``lite3r::*`` custom ops used in kernel mode."""
    from lite3r.kernels import fp8_quantize, gelu_fp8, layernorm_fp8  # noqa: F401


def _require_cuda(t: torch.Tensor, what: str) -> None:
    if not t.is_cuda:
        raise UnsupportedError(
            f"{what} in kernel mode needs a CUDA tensor (FP8 GEMMs do not exist on {t.device.type})",
            hint="run on an FP8-capable GPU, or use bf16/fp32 precision",
        )


class FP8Linear(nn.Module):
    """y = x Wᵀ + b with W in FP8 (per-output-row scales) and x quantised per token to FP8.

    Buffers: ``weight_fp8`` [N, K] float8_e4m3fn, ``weight_scale`` [1, N] float32, ``bias`` [N] in the
    output dtype (or None). Casting the module (``.to(dtype)``, ``.half()``, ``.float()``) moves it
    between devices but never changes these dtypes: the FP8 storage is the point of the module.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        mode: str = "kernel",
        out_dtype: torch.dtype | None = None,
        device=None,
    ) -> None:
        super().__init__()
        _check_mode(mode)
        out_dtype = out_dtype or (torch.bfloat16 if mode == "kernel" else torch.float32)
        if mode == "kernel" and out_dtype != torch.bfloat16:
            raise UnsupportedError(f"FP8Linear kernel mode outputs bfloat16 only, not {out_dtype}")
        if in_features % GEMM_ALIGN or out_features % GEMM_ALIGN:
            raise UnsupportedError(
                f"FP8 GEMMs need in/out features that are multiples of {GEMM_ALIGN}; got {in_features}→{out_features}",
                hint="add this layer to the FP8 skip list so it stays in bf16",
            )
        self.in_features = in_features
        self.out_features = out_features
        self.mode = mode
        self.out_dtype = out_dtype
        self.register_buffer(
            "weight_fp8", torch.zeros(out_features, in_features, dtype=FP8_DTYPE, device=device)
        )
        self.register_buffer("weight_scale", torch.ones(1, out_features, dtype=torch.float32, device=device))
        self.register_buffer(
            "bias", torch.zeros(out_features, dtype=out_dtype, device=device) if bias else None
        )
        # cuBLAS "fast accumulation" trades accumulator precision for speed; off unless asked for.
        self.use_fast_accum = False
        if mode == "kernel":
            load_kernels()

    @classmethod
    @torch.no_grad()
    def from_linear(
        cls, linear: nn.Linear, mode: str = "kernel", out_dtype: torch.dtype | None = None
    ) -> FP8Linear:
        """Quantise ``linear``'s weight once (per output row, the format spec); keep nothing else of it."""
        w = linear.weight
        if mode == "kernel":
            _require_cuda(w, "FP8Linear.from_linear")
        if out_dtype is None and mode == "reference":
            out_dtype = w.dtype  # the reference keeps the layer's own precision (float32 for exactness tests)
        new = cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            mode=mode,
            out_dtype=out_dtype,
            device="meta",
        )
        q, scale = quantize_rowwise(w)
        new.weight_fp8 = q
        new.weight_scale = scale.reshape(1, -1).contiguous()
        if linear.bias is not None:
            new.bias = linear.bias.detach().to(new.out_dtype).clone()
        return new

    def _apply(self, fn, recurse=True):
        # Device moves only: casting FP8 codes or their float32 scales would destroy the quantisation.
        probe = fn(torch.empty(0, device=self.weight_fp8.device))
        for name, t in self._buffers.items():
            if t is not None:
                self._buffers[name] = t.to(probe.device)
        return self

    def weight_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._buffers.values() if t is not None)

    def forward(self, x: torch.Tensor | QuantizedActivation) -> torch.Tensor:
        if isinstance(x, QuantizedActivation):
            q, scale, shape = x.data, x.scale, x.shape
        else:
            shape = x.shape
            if self.mode == "kernel":
                _require_cuda(x, "FP8Linear")
                q, scale = torch.ops.lite3r.fp8_quantize_rowwise(_rows(x))
            else:
                q, scale = quantize_rowwise(x.reshape(-1, x.shape[-1]))
        if shape[-1] != self.in_features:
            raise ValueError(f"FP8Linear expects {self.in_features} input features, got shape {tuple(shape)}")
        if self.mode == "kernel":
            out = torch._scaled_mm(
                q,
                self.weight_fp8.t(),
                scale_a=scale,
                scale_b=self.weight_scale,
                bias=self.bias,
                out_dtype=torch.bfloat16,
                use_fast_accum=self.use_fast_accum,
            )
        else:
            x_deq = q.float() * scale
            w_deq = self.weight_fp8.float() * self.weight_scale.t()
            bias = None if self.bias is None else self.bias.float()
            out = F.linear(x_deq, w_deq, bias).to(self.out_dtype)
        return out.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, mode={self.mode}, out_dtype={self.out_dtype}"
            + (", fast_accum" if self.use_fast_accum else "")
        )


def _rows(x: torch.Tensor) -> torch.Tensor:
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


class LayerNormFP8(nn.Module):
    """LayerNorm whose output goes straight to FP8 (per token) for the next ``FP8Linear``.

    Parameters ``weight``/``bias`` keep the ``nn.LayerNorm`` key names and are shared with the module
    it replaces. Returns a ``QuantizedActivation``; only an ``FP8Linear`` can consume it.
    """

    def __init__(self, normalized_shape: int, eps: float = 1e-5, *, mode: str = "kernel") -> None:
        super().__init__()
        _check_mode(mode)
        self.normalized_shape = (int(normalized_shape),)
        self.eps = float(eps)
        self.mode = mode
        self.register_parameter("weight", None)
        self.register_parameter("bias", None)
        if mode == "kernel":
            load_kernels()

    @classmethod
    def from_layernorm(cls, ln: nn.LayerNorm, mode: str = "kernel") -> LayerNormFP8:
        if len(ln.normalized_shape) != 1:
            raise UnsupportedError(
                f"LayerNormFP8 normalises the last dimension only, not {ln.normalized_shape}"
            )
        new = cls(ln.normalized_shape[0], ln.eps, mode=mode)
        new.weight = ln.weight
        new.bias = ln.bias
        return new

    def forward(self, x: torch.Tensor) -> QuantizedActivation:
        if x.shape[-1] != self.normalized_shape[0]:
            raise ValueError(
                f"LayerNormFP8 expects last dim {self.normalized_shape[0]}, got {tuple(x.shape)}"
            )
        if self.mode == "kernel":
            _require_cuda(x, "LayerNormFP8")
            q, scale = torch.ops.lite3r.layernorm_fp8(_rows(x), self.weight, self.bias, self.eps)
            return QuantizedActivation(q, scale, x.shape)
        K = x.shape[-1]
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        y = F.layer_norm(x.reshape(-1, K).float(), (K,), w, b, self.eps)
        q, scale = quantize_rowwise(y)
        return QuantizedActivation(q, scale, x.shape)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, mode={self.mode}, out=fp8 per token"


class GeluFP8(nn.Module):
    """Exact (erf) GELU whose output goes straight to FP8 (per token) for the next ``FP8Linear``."""

    def __init__(self, *, mode: str = "kernel") -> None:
        super().__init__()
        _check_mode(mode)
        self.mode = mode
        if mode == "kernel":
            load_kernels()

    def forward(self, h: torch.Tensor) -> QuantizedActivation:
        if self.mode == "kernel":
            _require_cuda(h, "GeluFP8")
            q, scale = torch.ops.lite3r.gelu_fp8(_rows(h), None)
            return QuantizedActivation(q, scale, h.shape)
        return quantize_activation(F.gelu(h.float()))

    def extra_repr(self) -> str:
        return f"mode={self.mode}, out=fp8 per token"
