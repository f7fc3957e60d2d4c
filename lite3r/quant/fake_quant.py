"""FP8 fake quantisation for QAT: ``FP8FakeQuantLinear`` and ``apply_fp8_qat``.

Forward: the input activation (per token) and the weight (per output row) are quantised and
dequantised with exactly the rules of ``fp8_format`` — the same scales and rounding that
``FP8Linear`` and the Triton producers use at deployment — then an ordinary ``F.linear`` runs (in the
autocast dtype when autocast is on). Backward: straight-through (identity) gradients. Nothing is
clipped because the scale is the row amax, so the STE needs no mask (method.md §A4.1).

The STE is a custom autograd function returning dequantize(quantize(x)) itself. The common
``x + (x̂ - x).detach()`` form is avoided on purpose: it rounds twice, so its forward would not equal
the deployment's dequantised values bit for bit.

Where QAT and the kernels can still differ (by bf16 rounding only, far below the FP8 step): with
autocast, F.linear rounds the dequantised operands to bf16 whereas the FP8 GEMM multiplies the FP8
codes exactly and scales in float32; fc1's output is rounded to bf16 before GELU in QAT but not in the
fused GELU→FP8 kernel.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .fp8_format import fake_quantize_rowwise
from .selection import DEFAULT_SKIP, select_linears, set_submodule


class _FakeQuantSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return fake_quantize_rowwise(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


def fake_quantize_ste(x: torch.Tensor) -> torch.Tensor:
    """dequantize(quantize(x)) per row of the last dim, with identity gradient."""
    return _FakeQuantSTE.apply(x)


class FP8FakeQuantLinear(nn.Linear):
    """An ``nn.Linear`` whose input (per token) and weight (per output row) are FP8 fake-quantised.

    State-dict keys are those of ``nn.Linear`` (``weight``, ``bias``); ``from_linear`` shares the
    original Parameters (no copy), so optimisers and frozen flags carry over.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device=None,
        dtype=None,
        quantize_input: bool = True,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.quantize_input = quantize_input

    @classmethod
    def from_linear(cls, linear: nn.Linear, quantize_input: bool = True) -> FP8FakeQuantLinear:
        new = cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            device="meta",
            quantize_input=quantize_input,
        )
        new.weight = linear.weight
        new.bias = linear.bias
        new.train(linear.training)
        return new

    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` sharing this module's Parameters (undo the wrapping)."""
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        lin.weight = self.weight
        lin.bias = self.bias
        lin.train(self.training)
        return lin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_q = fake_quantize_ste(x) if self.quantize_input else x
        return F.linear(x_q, fake_quantize_ste(self.weight), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, fp8=e4m3 rowwise, quantize_input={self.quantize_input}"


def apply_fp8_qat(
    model: nn.Module,
    modules: Sequence[str] | None = None,
    skip: Iterable[str] = DEFAULT_SKIP,
    quantize_input: bool = True,
) -> list[str]:
    """Wrap every ``nn.Linear`` under ``modules`` (qualified names; None = whole model) in place.

    ``skip``: substrings of qualified names left untouched (default: ``proj_lin``, which stays in
    bf16/fp32 in QAT and deployment alike). Pass the same ``modules``/``skip`` as to
    ``apply_fp8_inference`` so training simulates exactly the deployed layers. Already wrapped layers
    are left as they are. Returns the qualified names of the fake-quantised layers. Forward hooks
    registered on the replaced ``nn.Linear`` objects do not carry over.
    """
    selected, _ = select_linears(model, modules, skip)
    wrapped = []
    for name in selected:
        lin = model.get_submodule(name)
        if isinstance(lin, FP8FakeQuantLinear):
            wrapped.append(name)
            continue
        if not name:
            raise ValueError("apply_fp8_qat cannot replace the root module itself; wrap its parent")
        set_submodule(model, name, FP8FakeQuantLinear.from_linear(lin, quantize_input=quantize_input))
        wrapped.append(name)
    return wrapped


def remove_fp8_qat(model: nn.Module) -> list[str]:
    """Replace every ``FP8FakeQuantLinear`` by a plain ``nn.Linear`` sharing its Parameters."""
    names = [n for n, m in model.named_modules() if isinstance(m, FP8FakeQuantLinear)]
    for name in names:
        set_submodule(model, name, model.get_submodule(name).to_linear())
    return names
