"""Load the SLA Triton kernels for tests: compiled on a CUDA machine, interpreted on CPU.

Triton decides at decoration time (module import) whether a ``@triton.jit`` kernel is compiled or
interpreted, from ``TRITON_INTERPRET``. Tests call :func:`load_sla_kernels` before touching the kernel
modules: without a GPU it sets ``TRITON_INTERPRET=1`` and (re)imports them so they are interpreted even
if another test imported them first.

It also works around a Triton 3.6 interpreter incompatibility with NumPy ≥ 2.3: program ids and scalar
arguments are 1-element arrays, and ``int()`` of those now raises, so any ``for i in range(lo, hi)`` with
runtime bounds fails. The patch converts through ``.reshape(-1)[0]``. Test-only; library code never
touches the interpreter.
"""

from __future__ import annotations

import dataclasses
import importlib
import os

import torch

SLA_KERNEL_MODULES = (
    "lite3r.kernels.sla_triton_common",
    "lite3r.kernels.qk_norm_rope",
    "lite3r.kernels.sla_sum_rows",
    "lite3r.kernels.sla_select_scores",
    "lite3r.kernels.sla_prepare",
    "lite3r.kernels.sla_topk_rows",
    "lite3r.kernels.sla_complement_map",
    "lite3r.kernels.sla_block_select",
    "lite3r.kernels.sla_forward",
    "lite3r.kernels.sla_forward_tma",
    "lite3r.kernels.sla_backward_dq",
    "lite3r.kernels.sla_backward_dkdv",
)
# Registers torch custom ops (which cannot be registered twice) and calls the kernels through their
# modules, so it is imported once and never reloaded.
SLA_OPS_MODULE = "lite3r.kernels.sla_ops"


def _patch_interpreter_for_numpy2() -> None:
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor
    if getattr(original, "_lite3r_numpy2", False):
        return

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patched._lite3r_numpy2 = True
    interpreter._patch_lang_tensor = patched
    # Integer-overflow checks re-run every integer add/mul in int64 and triple the interpreter's time;
    # the kernels do their address arithmetic in int64 anyway.
    builder = interpreter.interpreter_builder
    builder.options = dataclasses.replace(builder.options, sanitize_overflow=False)


def interpreting() -> bool:
    return not torch.cuda.is_available()


def set_interpret_env() -> None:
    """Call at the top of a test module (collection time), before anything imports triton: Triton's
    own ``tl.max``/``tl.sum`` are decorated when ``triton`` is first imported."""
    if interpreting():
        os.environ["TRITON_INTERPRET"] = "1"


def load_sla_kernels() -> dict:
    """Import (or re-import in interpreter mode) the SLA kernel modules; returns them by short name."""
    if interpreting():
        os.environ["TRITON_INTERPRET"] = "1"
        import triton.language as tl

        if type(tl.standard.max).__name__ != "InterpretedFunction":
            raise RuntimeError(
                "triton was imported before TRITON_INTERPRET=1 was set, so its standard library cannot run "
                "in the interpreter; run with TRITON_INTERPRET=1 in the environment"
            )
        _patch_interpreter_for_numpy2()
    mods = {}
    for name in SLA_KERNEL_MODULES:
        mod = importlib.import_module(name)
        if interpreting() and not getattr(mod, "__sla_interpreted__", False):
            mod = importlib.reload(mod)
            mod.__sla_interpreted__ = True
        mods[name.rsplit(".", 1)[1]] = mod
    mods["sla_ops"] = importlib.import_module(SLA_OPS_MODULE)
    return mods
