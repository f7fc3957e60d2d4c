"""Device helpers shared by the FP8 producer kernels: per-row scales, the E4M3 cast, op registration.

They implement the format of ``lite3r.quant.fp8_format`` on a [BLOCK_M, BLOCK_K] float32 tile held in
registers: amax over the row, one IEEE (``div_rn``) division per row for ``scale`` and ``inv``, one
multiply per element, clamp to ±448, round-to-nearest-even cast to float8e4nv. On GPUs the cast is
the hardware ``cvt.rn.satfinite.e4m3x2.f32``, which *is* the clamp (finite values beyond ±448 become
±448) and the rounding, so the compiled kernels spend no instruction on an explicit clamp.

The Triton 3.6 *interpreter* rounds float32 → fp8 incorrectly (it rounds half up, ignores sticky
bits, and drops the carry when rounding crosses a power of two: 125.4 becomes 64). Under the
interpreter (``EMULATE_RNE=True``, chosen by the Python wrappers) we clamp and round onto the E4M3
grid in float32 with exact arithmetic, after which the interpreter's cast is exact. The GPU path
never pays for the emulation.

Registration: the kernels are launched from ``torch.library.custom_op`` s (opaque to torch.compile:
Dynamo and Inductor see one op with a fake implementation and leave the Triton launch alone, exactly
as in eager mode; the elementwise work around them is still fused by Inductor). ``triton_op`` +
``wrap_triton`` would let Inductor re-generate the kernel launch, which failed to compile for these
kernels on the H100 (torch 2.11: fp64 scalars, ``make_llir`` pass failures) while the eager launch
of the same kernels worked.
"""

from __future__ import annotations

import triton
import triton.language as tl

from lite3r.quant.fp8_format import AMAX_EPS as _AMAX_EPS
from lite3r.quant.fp8_format import FP8_MAX as _FP8_MAX

AMAX_EPS = tl.constexpr(_AMAX_EPS)
FP8_MAX = tl.constexpr(_FP8_MAX)

# Largest row the single-pass kernels keep in registers (elements); larger rows are refused.
MAX_ROW = 16384


def running_in_interpreter(kernel) -> bool:
    """True when ``kernel`` was decorated while TRITON_INTERPRET=1 (decided at import time)."""
    return type(kernel).__name__ == "InterpretedFunction"


def row_tiling(K: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_K, num_warps) for row-wise kernels: a power-of-two tile of about 8k elements.

    8k elements over 8 warps is 32 per thread (four 16-byte loads of bf16): enough bytes in flight
    per program, and few enough registers for 3-4 resident programs per SM.
    """
    block_k = triton.next_power_of_2(K)
    block_m = max(1, min(64, 8192 // block_k))
    tile = block_m * block_k
    num_warps = 4 if tile <= 4096 else (8 if tile <= 8192 else 16)
    return block_m, block_k, num_warps


@triton.jit
def round_to_e4m3_grid(y):
    """Round float32 ``y`` (|y| ≤ 448) to the nearest E4M3 value, ties to even, staying in float32.

    Exact: scaling by powers of two is exact and (t + 2^23) - 2^23 rounds t ∈ [0, 2^22) to an
    integer with ties to even. The E4M3 spacing is 2^(e-3) for exponent e ≥ -6 and 2^-9 below.
    """
    bits = y.to(tl.int32, bitcast=True)
    sign = bits & -2147483648
    mag_bits = bits & 2147483647
    a = mag_bits.to(tl.float32, bitcast=True)
    e = tl.maximum((mag_bits >> 23) - 127, -6)
    k = e - 3
    step = ((k + 127) << 23).to(tl.float32, bitcast=True)
    inv_step = ((127 - k) << 23).to(tl.float32, bitcast=True)
    r = ((a * inv_step) + 8388608.0) - 8388608.0
    q = r * step
    return (q.to(tl.int32, bitcast=True) | sign).to(tl.float32, bitcast=True)


@triton.jit
def quantize_tile_rows(y, EMULATE_RNE: tl.constexpr):
    """Quantise a float32 tile [BLOCK_M, BLOCK_K] per row; masked-out elements must be 0.

    Returns (q float8e4nv [BLOCK_M, BLOCK_K], scale float32 [BLOCK_M]).
    """
    amax = tl.maximum(tl.max(tl.abs(y), axis=1), AMAX_EPS).to(tl.float32)
    fp8_max = tl.full(amax.shape, FP8_MAX, tl.float32)
    inv = tl.math.div_rn(fp8_max, amax)
    scale = tl.math.div_rn(amax, fp8_max)
    v = y * inv[:, None]
    if EMULATE_RNE:
        v = round_to_e4m3_grid(tl.minimum(tl.maximum(v, -FP8_MAX), FP8_MAX))
    return v.to(tl.float8e4nv), scale


def register_custom_op(qualname: str, impl, fake):
    """``torch.library.custom_op(qualname)(impl)`` with the fake (shape) function ``fake``, once.

    Test helpers re-import the kernel modules in interpreter mode (Triton chooses compiled vs
    interpreted when a kernel is decorated). ``importlib.reload`` re-executes a module in the same
    namespace, so the op registered first keeps working: ``impl`` looks its kernel up in the module
    globals at call time. Returns the op (``torch.ops.<ns>.<name>``).
    """
    import torch

    ns, name = qualname.split("::")
    if hasattr(getattr(torch.ops, ns), name):
        return getattr(getattr(torch.ops, ns), name)
    op = torch.library.custom_op(qualname, mutates_args=())(impl)
    op.register_fake(fake)
    return getattr(getattr(torch.ops, ns), name)


def device_guard(t):
    """A context that makes ``t``'s CUDA device current (Triton launches on the current device)."""
    import contextlib

    import torch

    if t.is_cuda and t.device.index != torch.cuda.current_device():
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()
