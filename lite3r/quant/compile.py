"""``compile_trunk``: torch.compile the trunk one block at a time.

Per-block compilation lets Inductor fuse the memory-bound work around the GEMMs (LayerNorm, qk-norm,
RoPE, GELU, LayerScale, residual adds), which is about 60 % of a block's non-attention time in eager
mode (performance.md §3.5), while keeping compile time small: with inlined nn.Modules (the default
since torch 2.5) blocks of one shape share one graph. ``nn.Module.compile`` compiles in place, so
state-dict keys do not change (no ``_orig_mod.`` prefix). The FP8 Triton kernels are opaque
``torch.library.custom_op`` s (Inductor calls them as they are, it does not re-generate them) and
``QuantizedActivation`` is a NamedTuple, so FP8 blocks trace without graph breaks, with dynamic
shapes, and under CUDA graphs; so do the SLA kernels (custom ops too).

Modes: ``none`` | ``default`` | ``max-autotune-no-cudagraphs`` | ``reduce-overhead`` (CUDA graphs, for
fixed shapes; call :func:`mark_step` before every model forward so the graphs' output buffers can
be reused).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from lite3r.errors import UnsupportedError

from .selection import resolve_roots

COMPILE_MODES = ("none", "default", "max-autotune-no-cudagraphs", "reduce-overhead")


@dataclass
class CompileReport:
    mode: str
    blocks: list[str] = field(default_factory=list)
    backend: str = "inductor"
    fullgraph: bool = False
    dynamic: bool | None = None


def _default_block_types() -> tuple[type, ...]:
    from lite3r.models.layers.block import Block

    return (Block,)


def compile_trunk(
    model: nn.Module,
    mode: str,
    modules: Sequence[str] | None = None,
    *,
    block_types: tuple[type, ...] | None = None,
    fullgraph: bool = False,
    dynamic: bool | None = None,
    backend: str = "inductor",
) -> CompileReport:
    """Compile, in place, every block (``block_types``, default ``Block``) under ``modules``.

    ``modules``: qualified names (the model's ``trunk_modules()``); None = the whole model.
    ``fullgraph=True`` turns any graph break into an error. ``backend`` other than "inductor"
    (e.g. "aot_eager") is for tests; then ``mode`` only selects whether to compile at all.
    """
    if mode not in COMPILE_MODES:
        raise ValueError(f"unknown compile mode {mode!r}; choose one of {COMPILE_MODES}")
    report = CompileReport(mode=mode, backend=backend, fullgraph=fullgraph, dynamic=dynamic)
    if mode == "none":
        return report
    block_types = block_types or _default_block_types()
    blocks: list[tuple[str, nn.Module]] = []
    for root_name, root in resolve_roots(model, modules):
        for sub_name, m in root.named_modules():
            if isinstance(m, block_types):
                blocks.append((".".join(p for p in (root_name, sub_name) if p), m))
    if mode == "reduce-overhead":
        for name, block in blocks:
            devices = {p.device.type for p in block.parameters()} | {b.device.type for b in block.buffers()}
            if devices != {"cuda"}:
                raise UnsupportedError(
                    f"compile mode reduce-overhead (CUDA graphs) needs the trunk on a CUDA GPU; {name} is on "
                    f"{', '.join(sorted(devices)) or 'no device'}",
                    hint="use compile mode default or none",
                )
    inductor_mode = None if (mode == "default" or backend != "inductor") else mode
    raise_recompile_limit()
    for name, block in blocks:
        block.compile(backend=backend, mode=inductor_mode, fullgraph=fullgraph, dynamic=dynamic)
        report.blocks.append(name)
    return report


# Every trunk block shares one code object (``Block.forward``), so dynamo's per-code recompile limit
# (8 by default) is shared by all blocks of all models compiled in the process: frame counts that need
# new guards (the chunked MLP's chunk count, a new FP8 / SLA variant) quickly exceed it and dynamo then
# runs the blocks eagerly, with a warning only (measured on the H100: a 5-variant bench lost the
# compiled path after the third variant). Build-time setting, logged.
RECOMPILE_LIMIT = 64


def raise_recompile_limit(limit: int = RECOMPILE_LIMIT) -> None:
    import logging

    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    if getattr(config, name) < limit:
        logging.getLogger(__name__).info(
            "torch._dynamo.config.%s: %s -> %s", name, getattr(config, name), limit
        )
        setattr(config, name, limit)


def mark_step() -> None:
    """Start a new CUDA-graph step (reduce-overhead mode): call once before each model forward."""
    torch.compiler.cudagraph_mark_step_begin()
