"""Triton helpers shared by the SLA kernels: virtual key order, feature maps and their derivatives.

The conventions (virtual key order, blocks, feature maps) are documented in ``sla_reference.py``.
Integer codes passed as ``tl.constexpr``: feature map 0 = ELU+1, 1 = softmax over the head dim;
linear branch 0 = none, 1 = all tokens, 2 = complement of the selected blocks.
"""

from __future__ import annotations

import triton
import triton.language as tl

FEATURE_CODES = {"elu": 0, "softmax": 1}
LINEAR_CODES = {"none": 0, "all": 1, "complement": 2}


@triton.jit
def virtual_to_physical(v, n_special, frame_len, n_special_total, HAS_SPECIAL: tl.constexpr):
    """Physical token index of virtual key positions ``v``: all frames' special tokens come first."""
    if HAS_SPECIAL:
        is_special = v < n_special_total
        vs = tl.where(is_special, v, 0)
        f_s = vs // n_special
        phys_s = f_s * frame_len + (vs - f_s * n_special)
        p = tl.where(is_special, 0, v - n_special_total)
        patches = frame_len - n_special
        f_p = p // patches
        phys_p = f_p * frame_len + n_special + (p - f_p * patches)
        return tl.where(is_special, phys_s, phys_p)
    else:
        return v


@triton.jit
def feature_map(x, FEATURE: tl.constexpr):
    """φ(x) in float32 for x [R, D]: ELU+1 (= x+1 for x>0, exp(x) otherwise) or softmax over D."""
    if FEATURE == 0:
        return tl.where(x > 0, x + 1.0, tl.exp(x))
    else:
        e = tl.exp(x - tl.max(x, axis=1)[:, None])
        return e / tl.sum(e, axis=1)[:, None]


@triton.jit
def feature_map_backward(x, phi, dphi, FEATURE: tl.constexpr):
    """dL/dx from dL/dφ, given x and φ(x)."""
    if FEATURE == 0:
        return tl.where(x > 0, dphi, dphi * phi)
    else:
        return phi * (dphi - tl.sum(dphi * phi, axis=1)[:, None])
