"""Load the FP8 Triton kernels for tests: compiled on a CUDA machine, interpreted on CPU.

Triton decides at decoration time (module import) whether a ``@triton.jit`` kernel is compiled or
interpreted, from ``TRITON_INTERPRET`` — and that includes Triton's own ``tl.max``/``tl.sum``, which
are decorated when ``triton`` is first imported. So the variable must be set before anything imports
triton (``torch._inductor`` does): :func:`set_interpret_env` is called at the top of the test
modules (collection time, before any test runs). :func:`load_fp8_kernels` re-imports our kernel
modules if another test imported them first; the custom ops stay registered once
(``register_custom_op``) and find the re-imported kernels through their module globals. Same
approach as ``tests/sla_triton_env.py``.
"""

from __future__ import annotations

import importlib
import os

import torch

FP8_KERNEL_MODULES = (
    "lite3r.kernels.fp8_common",
    "lite3r.kernels.fp8_quantize",
    "lite3r.kernels.layernorm_fp8",
    "lite3r.kernels.gelu_fp8",
)


def interpreting() -> bool:
    return not torch.cuda.is_available()


def set_interpret_env() -> None:
    if interpreting():
        os.environ["TRITON_INTERPRET"] = "1"


def load_fp8_kernels() -> dict:
    """Import (or re-import in interpreter mode) the FP8 kernel modules; returns them by short name."""
    if interpreting():
        os.environ["TRITON_INTERPRET"] = "1"
        import triton.language as tl

        if type(tl.standard.max).__name__ != "InterpretedFunction":
            raise RuntimeError(
                "triton was imported before TRITON_INTERPRET=1 was set (e.g. by torch._inductor in an earlier "
                "test), so its standard library cannot run in the interpreter; run with TRITON_INTERPRET=1 "
                "in the environment (or set it in tests/conftest.py when CUDA is unavailable)"
            )
    mods = {}
    for name in FP8_KERNEL_MODULES:
        mod = importlib.import_module(name)
        if interpreting() and not getattr(mod, "__fp8_interpreted__", False):
            mod = importlib.reload(mod)
            mod.__fp8_interpreted__ = True
        mods[name.rsplit(".", 1)[1]] = mod
    return mods
