"""FP8 quantisation shared by training and deployment, precision modes, and trunk compilation.

- ``fp8_format``: the one definition of the FP8 format (E4M3, per-token / per-row scales, RNE).
- ``fake_quant``: ``FP8FakeQuantLinear`` + ``apply_fp8_qat`` (QAT with straight-through gradients).
- ``fp8_modules``: ``FP8Linear`` (real FP8 GEMM), ``LayerNormFP8``, ``GeluFP8`` (fused producers).
- ``fp8_inference``: ``apply_fp8_inference`` (swaps a trunk's layers; report with weight bytes).
- ``fp8_features``: optional FP8 storage of the features kept for the heads.
- ``precision``: ``precision_support``, ``check_precision``, ``apply_precision`` (fp32 | bf16 | fp8).
- ``compile``: ``compile_trunk`` (per-block torch.compile).

Triton is imported only when a kernel-mode module is built (``lite3r.kernels``).
"""

from .compile import COMPILE_MODES, CompileReport, compile_trunk, mark_step
from .fake_quant import FP8FakeQuantLinear, apply_fp8_qat, fake_quantize_ste, remove_fp8_qat
from .fp8_features import dequantize_features, dequantize_frames, feature_bytes, quantize_features
from .fp8_format import (
    AMAX_EPS,
    FP8_DTYPE,
    FP8_MAX,
    QuantizedActivation,
    dequantize_activation,
    dequantize_rowwise,
    fake_quantize_rowwise,
    quantize_activation,
    quantize_rowwise,
)
from .fp8_inference import FP8InferenceReport, apply_fp8_inference, fp8_weight_bytes
from .fp8_modules import FP8Linear, GeluFP8, LayerNormFP8
from .precision import (
    FP8_FAST_ACCUM_DEFAULT,
    PRECISIONS,
    PrecisionReport,
    apply_precision,
    check_precision,
    precision_support,
)
from .selection import DEFAULT_SKIP, select_linears

__all__ = [
    "AMAX_EPS",
    "COMPILE_MODES",
    "DEFAULT_SKIP",
    "FP8_DTYPE",
    "FP8_FAST_ACCUM_DEFAULT",
    "FP8_MAX",
    "PRECISIONS",
    "CompileReport",
    "FP8FakeQuantLinear",
    "FP8InferenceReport",
    "FP8Linear",
    "GeluFP8",
    "LayerNormFP8",
    "PrecisionReport",
    "QuantizedActivation",
    "apply_fp8_inference",
    "apply_fp8_qat",
    "apply_precision",
    "check_precision",
    "compile_trunk",
    "dequantize_activation",
    "dequantize_features",
    "dequantize_frames",
    "dequantize_rowwise",
    "fake_quantize_rowwise",
    "fake_quantize_ste",
    "feature_bytes",
    "fp8_weight_bytes",
    "mark_step",
    "precision_support",
    "quantize_activation",
    "quantize_features",
    "quantize_rowwise",
    "remove_fp8_qat",
    "select_linears",
]
