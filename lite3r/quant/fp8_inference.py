"""``apply_fp8_inference``: swap a trunk's Linear layers for real FP8 ones, with fused producers.

For every standard trunk ``Block`` (lite3r.models.layers.block) it performs, in place::

    norm1 → LayerNormFP8   (feeds attn.qkv an FP8 activation; the bf16 LN output never exists)
    attn.qkv, attn.proj, mlp.fc1, mlp.fc2 → FP8Linear   (attn.proj quantises its own input)
    norm2 → LayerNormFP8   (feeds mlp.fc1)
    mlp.act → GeluFP8      (feeds mlp.fc2)

The model code is unchanged: the producers return a ``QuantizedActivation`` that has a ``.shape``, so
``MultiHeadAttention.project_qkv``'s ``B, N, _ = x.shape`` and ``Mlp.forward`` run as written. A
producer is fused only where the block's code is the known one (``Block.forward``,
``MultiHeadAttention.forward``/``project_qkv`` — a subclass overriding only ``attend``, like sparse-
linear attention, qualifies — and ``Mlp.forward``) and its consumer is converted; otherwise the
consumer quantises its own input with the standalone kernel. Every other ``nn.Linear`` under
``modules`` is converted too, except the ``skip`` list (default ``proj_lin``). A layer that FP8 GEMMs
cannot run (K or N not a multiple of 16) raises ``UnsupportedError`` before anything is changed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from lite3r.errors import UnsupportedError

from .fp8_modules import GEMM_ALIGN, FP8Linear, GeluFP8, LayerNormFP8
from .selection import DEFAULT_SKIP, resolve_roots, select_linears, set_submodule


@dataclass
class FP8InferenceReport:
    """What ``apply_fp8_inference`` did; ``weight_bytes_*`` cover the converted linears only."""

    mode: str
    fast_accum: bool = False  # cuBLAS/CUTLASS fast accumulation in the FP8 GEMMs
    linears: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    fused_layernorms: list[str] = field(default_factory=list)
    fused_gelus: list[str] = field(default_factory=list)
    standalone_quant: list[str] = field(default_factory=list)  # linears that quantise their own input
    weight_bytes_before: int = 0
    weight_bytes_after: int = 0

    def summary(self) -> str:
        mib = 2**20
        return (
            f"FP8 ({self.mode}): {len(self.linears)} linears ({len(self.skipped)} skipped), "
            f"{len(self.fused_layernorms)} LN→FP8, {len(self.fused_gelus)} GELU→FP8, "
            f"{len(self.standalone_quant)} standalone quantisers; weights "
            f"{self.weight_bytes_before / mib:.1f} MiB → {self.weight_bytes_after / mib:.1f} MiB"
            + (", fast accumulation" if self.fast_accum else "")
        )


def _standard_block_parts(block: nn.Module) -> tuple[bool, bool]:
    """(attention fusable, mlp fusable) for a block whose forward we know."""
    from lite3r.attention.dense import MultiHeadAttention
    from lite3r.models.layers.block import Block, Mlp

    if not isinstance(block, Block) or type(block).forward is not Block.forward:
        return False, False
    attn, mlp = block.attn, block.mlp
    attn_ok = (
        isinstance(attn, MultiHeadAttention)
        and type(attn).forward is MultiHeadAttention.forward
        and type(attn).project_qkv is MultiHeadAttention.project_qkv
        and type(block.norm1) is nn.LayerNorm
    )
    mlp_ok = isinstance(mlp, Mlp) and type(mlp).forward is Mlp.forward
    return attn_ok, mlp_ok


def _bytes(*tensors: torch.Tensor | None) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


@torch.no_grad()
def apply_fp8_inference(
    model: nn.Module,
    modules: Sequence[str] | None = None,
    skip: Iterable[str] = DEFAULT_SKIP,
    mode: str = "kernel",
    fuse: bool = True,
    fast_accum: bool = False,
) -> FP8InferenceReport:
    """Convert the ``nn.Linear`` layers under ``modules`` (e.g. ``model.trunk_modules()``) to FP8.

    ``mode="kernel"``: weights must already be on the CUDA device (they are quantised there);
    ``mode="reference"``: pure PyTorch, for CPU equivalence tests. ``fuse=False`` keeps LayerNorm and
    GELU as they are (every FP8Linear quantises its own input). ``fast_accum`` turns on the GEMMs'
    fast accumulation (the tensor cores' reduced-precision accumulator over the whole K loop, no
    periodic promotion to float32; faster, less exact: see ``lite3r.quant.precision``). Returns an
    ``FP8InferenceReport``.
    """
    skip = tuple(skip)
    selected, skipped = select_linears(model, modules, skip)
    report = FP8InferenceReport(mode=mode, fast_accum=bool(fast_accum), skipped=skipped)

    for name in selected:  # validate everything before changing anything
        lin = model.get_submodule(name)
        if not name:
            raise ValueError("apply_fp8_inference cannot replace the root module itself; pass its parent")
        if lin.in_features % GEMM_ALIGN or lin.out_features % GEMM_ALIGN:
            raise UnsupportedError(
                f"{name}: {lin.in_features}→{lin.out_features} cannot run as an FP8 GEMM "
                f"(features must be multiples of {GEMM_ALIGN})",
                hint=f"add {name!r} to the FP8 skip list so it stays in bf16",
            )
        if mode == "kernel" and not lin.weight.is_cuda:
            raise UnsupportedError(
                f"{name}: FP8 kernel mode quantises weights on the CUDA device, but they are on "
                f"{lin.weight.device}",
                hint="move the model to the GPU first",
            )

    selected_set = set(selected)
    fused_inputs: set[str] = set()
    if fuse:
        for root_name, root in resolve_roots(model, modules):
            for sub_name, block in root.named_modules():
                attn_ok, mlp_ok = _standard_block_parts(block)
                if not (attn_ok or mlp_ok):
                    continue
                bn = ".".join(p for p in (root_name, sub_name) if p)
                pre = f"{bn}." if bn else ""
                if attn_ok and f"{pre}attn.qkv" in selected_set:
                    block.norm1 = LayerNormFP8.from_layernorm(block.norm1, mode=mode)
                    report.fused_layernorms.append(f"{pre}norm1")
                    fused_inputs.add(f"{pre}attn.qkv")
                if mlp_ok and type(block.norm2) is nn.LayerNorm and f"{pre}mlp.fc1" in selected_set:
                    block.norm2 = LayerNormFP8.from_layernorm(block.norm2, mode=mode)
                    report.fused_layernorms.append(f"{pre}norm2")
                    fused_inputs.add(f"{pre}mlp.fc1")
                act = block.mlp.act if mlp_ok else None
                if type(act) is nn.GELU and act.approximate == "none" and f"{pre}mlp.fc2" in selected_set:
                    block.mlp.act = GeluFP8(mode=mode)
                    report.fused_gelus.append(f"{pre}mlp.act")
                    fused_inputs.add(f"{pre}mlp.fc2")

    for name in selected:
        lin = model.get_submodule(name)
        report.weight_bytes_before += _bytes(lin.weight, lin.bias)
        fp8 = FP8Linear.from_linear(lin, mode=mode)
        fp8.use_fast_accum = fast_accum
        report.weight_bytes_after += fp8.weight_bytes()
        set_submodule(model, name, fp8)
        report.linears.append(name)
        if name not in fused_inputs:
            report.standalone_quant.append(name)
    return report


def fp8_weight_bytes(model: nn.Module) -> int:
    """Bytes held by all ``FP8Linear`` modules of ``model`` (FP8 weights + scales + biases)."""
    return sum(m.weight_bytes() for m in model.modules() if isinstance(m, FP8Linear))
