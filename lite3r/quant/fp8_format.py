"""The FP8 format shared by QAT (fake quantisation) and deployment (real FP8 GEMMs) — the one definition.

Everything that quantises to FP8 in Lite3R follows these rules, so training simulates exactly what the
kernels compute (method.md §A4.1, Part C1):

- Format: E4M3 (``torch.float8_e4m3fn``, largest finite value ``FP8_MAX`` = 448). E5M2 is not used.
- Granularity: one scale per row of the last dimension. For activations [..., K] that is one scale per
  token; for weights [N, K] one scale per output row (channel). No per-tensor scales, no amax history.
- With ``amax`` = max |x| over the row, computed in float32 from the input as is (no rounding first)::

      a     = max(amax, AMAX_EPS)                 # float32; AMAX_EPS = 1e-8 (as in the reference)
      scale = a / 448                             # float32, IEEE division: the *dequantisation* scale,
                                                  # handed to torch._scaled_mm (scale_a [M,1], scale_b [1,N])
      inv   = 448 / a                             # float32, IEEE division (one per row)
      q     = cast_rne(clamp(x * inv, -448, 448))  # float32 multiply, then round-to-nearest-even to E4M3
      x̂     = float32(q) * scale                   # dequantised value

  Multiplying by ``inv`` (instead of dividing every element by ``scale``) keeps the Triton kernels cheap
  and bit-exact: one correctly rounded division per row, one IEEE multiply per element. It differs from
  "x / scale" by at most one float32 ulp before the FP8 rounding.
- All-zero rows: amax = 0 → a = AMAX_EPS, every q = 0, scale = AMAX_EPS / 448 (tiny but finite and
  non-zero), so x̂ = 0 exactly and no division by zero or NaN appears. Rows whose amax is below
  AMAX_EPS share that fixed scale: they are quantised on an absolute grid (finest step
  AMAX_EPS/448·2⁻⁹ ≈ 4e-14) and values below about 2e-14 become 0. Such values carry no information
  in bf16 models.
- The clamp only acts on rounding noise (x * inv can exceed 448 by one ulp); nothing is clipped,
  so the straight-through estimator needs no clipping mask.
- Non-finite inputs (inf/NaN) give non-finite outputs; they are not supported.

This module holds the pure-PyTorch implementation. It is the reference for the Triton kernels in
``lite3r.kernels`` (which match it bit for bit, except where a fused LayerNorm/GELU computes its
input with a different reduction order or erf), and it quantises the weights at load time.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0
AMAX_EPS = 1e-8


class QuantizedActivation(NamedTuple):
    """An activation quantised per token, on its way from a producer to an ``FP8Linear``.

    ``data`` is [M, K] float8_e4m3fn (row-major), ``scale`` [M, 1] float32 (the dequantisation scale),
    ``shape`` the logical shape [..., K] of the tensor it stands for (M = prod(shape[:-1])). It has a
    ``.shape`` like a tensor so model code such as ``B, N, _ = x.shape`` runs unchanged. It is a
    NamedTuple (not a Tensor subclass) because torch.compile traces those without graph breaks.
    """

    data: torch.Tensor
    scale: torch.Tensor
    shape: torch.Size


def rowwise_scales(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, inv) of shape [..., 1], float32, for per-row quantisation of ``x`` [..., K]."""
    amax = x.detach().float().abs().amax(dim=-1, keepdim=True).clamp_min(AMAX_EPS)
    # Tensor-by-tensor divisions on purpose: PyTorch computes ``448 / t`` as reciprocal(t) * 448 and
    # may turn ``t / 448`` into t * (1/448) on CUDA — two roundings each, not the IEEE division the
    # Triton kernels (div_rn) and this spec use.
    fp8_max = torch.full_like(amax, FP8_MAX)
    return amax / fp8_max, fp8_max / amax


def quantize_rowwise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantise ``x`` [..., K] per row: (q float8_e4m3fn [..., K], scale float32 [..., 1])."""
    scale, inv = rowwise_scales(x)
    q = (x.detach().float() * inv).clamp_(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q, scale


def dequantize_rowwise(
    q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """float32(q) * scale, then cast to ``dtype`` (the product is formed in float32)."""
    return (q.float() * scale).to(dtype)


def fake_quantize_rowwise(x: torch.Tensor) -> torch.Tensor:
    """dequantize(quantize(x)) in ``x.dtype``, without gradient handling (see fake_quant.py for the STE)."""
    q, scale = quantize_rowwise(x)
    return dequantize_rowwise(q, scale, x.dtype)


def quantize_activation(x: torch.Tensor) -> QuantizedActivation:
    """Reference (pure PyTorch) per-token quantisation of ``x`` [..., K] into a carrier."""
    K = x.shape[-1]
    q, scale = quantize_rowwise(x.reshape(-1, K))
    return QuantizedActivation(q, scale, x.shape)


def dequantize_activation(a: QuantizedActivation, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The tensor a carrier stands for, in ``dtype`` (float32(q) * scale, then cast)."""
    return dequantize_rowwise(a.data, a.scale, dtype).reshape(a.shape)


def fp8_bytes(a: QuantizedActivation) -> int:
    """Bytes held by a carrier (FP8 data + float32 scales)."""
    return a.data.numel() * a.data.element_size() + a.scale.numel() * a.scale.element_size()
