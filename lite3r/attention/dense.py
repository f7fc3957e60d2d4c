"""Dense multi-head attention with optional qk-norm and 2-D RoPE.

One class serves every attention site of VGGT and DA3 (DINO blocks, frame/global blocks, camera
trunks), so the state-dict keys are those of the official checkpoints (``attn.qkv``, ``attn.q_norm``,
``attn.k_norm``, ``attn.proj``). Sparse-linear attention subclasses it and overrides
:meth:`MultiHeadAttention.attend` (and, for its fused-qk inference path, ``forward``), keeping the
pretrained projections, norms and RoPE.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

SDPA_BACKENDS = ("auto", "cudnn", "flash", "efficient", "math")
# How q and k get their qk-norm and RoPE: PyTorch ops, or one Triton kernel per tensor that writes the
# attention dtype directly (``lite3r.kernels.qk_norm_rope``: no float32 intermediates; inference only).
QK_KERNELS = ("torch", "triton")

_BACKEND_PRIORITY = {
    # The chosen backend first; the rest are fallbacks PyTorch may use only when the first cannot run
    # the shapes/dtypes at all (e.g. fp32 inputs for cuDNN). The engine reports which one was asked for.
    "cudnn": [SDPBackend.CUDNN_ATTENTION],
    "flash": [SDPBackend.FLASH_ATTENTION],
    "efficient": [SDPBackend.EFFICIENT_ATTENTION],
    "math": [SDPBackend.MATH],
}


class MultiHeadAttention(nn.Module):
    """qkv → (qk-norm) → (RoPE) → attention → proj, on tokens ``x`` of shape [B, N, C].

    ``pos`` is what the model's RoPE module takes (integer (y, x) positions or precomputed tables);
    ``frame_len`` is the number of tokens per view in a cross-view sequence. Dense attention ignores
    it; sparse-linear attention uses it to find the special tokens of every frame.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        qk_norm: bool = False,
        qk_norm_eps: float = 1e-5,
        rope: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = nn.LayerNorm(self.head_dim, eps=qk_norm_eps) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim, eps=qk_norm_eps) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        # Shared by reference between blocks; it has no parameters, so it adds no state-dict keys.
        self.rope = rope
        self.sdpa_backend = "auto"
        self.qk_kernel = "torch"  # set at build time with set_qk_kernel()

    def project_qkv(self, x: torch.Tensor, pos=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return q, k, v as [B, H, N, D] in one dtype (v's), after qk-norm and RoPE."""
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if self.qk_kernel == "triton" and not self._needs_autograd(qkv):
            return (*self._fused_qk(q, k, pos, v.dtype), v)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.rope is not None and pos is not None:
            q = self.rope(q, pos)
            k = self.rope(k, pos)
        # Under autocast the qk LayerNorm and RoPE produce float32; fused attention kernels need all
        # three operands in one half-precision dtype.
        return q.to(v.dtype), k.to(v.dtype), v

    def _needs_autograd(self, qkv: torch.Tensor) -> bool:
        """The fused kernel has no backward: training (anything autograd records) runs the PyTorch ops."""
        if not torch.is_grad_enabled():
            return False
        norms = [p for m in (self.q_norm, self.k_norm) for p in m.parameters()]
        return qkv.requires_grad or any(p.requires_grad for p in norms)

    def _fused_qk(self, q, k, pos, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        from lite3r.kernels.qk_norm_rope import qk_norm_rope

        return qk_norm_rope(q, k, *self._qk_kernel_args(pos), dtype)

    def _qk_kernel_args(self, pos) -> tuple:
        """(q_norm, k_norm, rope tables) as the fused qk-norm/RoPE kernels take them."""
        from lite3r.models.layers.rope import RopeTables

        def norm(m):
            if isinstance(m, nn.Identity):
                return None
            return (m.weight, m.bias, m.eps)

        tables = None
        if self.rope is not None and pos is not None:
            t = pos if isinstance(pos, RopeTables) else self.rope.tables(pos, self.head_dim)
            tables = (t.cos, t.sin)
        return norm(self.q_norm), norm(self.k_norm), tables

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, frame_len: int | None = None
    ) -> torch.Tensor:
        """Dense softmax attention, scale 1/sqrt(head_dim), with the configured SDPA backend."""
        ctx = (
            contextlib.nullcontext()
            if self.sdpa_backend == "auto"
            else sdpa_kernel(_BACKEND_PRIORITY[self.sdpa_backend])
        )
        with ctx:
            return F.scaled_dot_product_attention(q, k, v)

    def forward(self, x: torch.Tensor, pos=None, frame_len: int | None = None) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.project_qkv(x, pos)
        o = self.attend(q, k, v, frame_len=frame_len)
        return self.proj(o.transpose(1, 2).reshape(B, N, C))


def fused_qk_supported(module: MultiHeadAttention) -> str | None:
    """None if the qk-norm + RoPE kernel can run ``module``, else why not."""
    for m in (module.q_norm, module.k_norm):
        if isinstance(m, nn.Identity):
            continue
        if not isinstance(m, nn.LayerNorm) or m.weight is None or m.bias is None:
            return f"qk-norm {type(m).__name__} is not an affine LayerNorm"
        if tuple(m.normalized_shape) != (module.head_dim,):
            return f"qk-norm over {tuple(m.normalized_shape)}, not head_dim {module.head_dim}"
    d = module.head_dim
    if d < 4 or d & (d - 1):
        return f"head_dim {d} is not a power of two"
    rope = module.rope
    if rope is not None and type(rope).__name__ != "RotaryPositionEmbedding2D":
        return f"RoPE {type(rope).__name__} is not the 2-D rotate-half layout the kernel implements"
    return None


def set_qk_kernel(model: nn.Module, kernel: str) -> int:
    """Choose how every dense/sparse attention in ``model`` applies qk-norm and RoPE ("torch" or
    "triton"); returns how many were set. Refuses (before changing anything) a module the kernel cannot
    run: no silent mix of paths."""
    if kernel not in QK_KERNELS:
        raise ValueError(f"unknown qk kernel {kernel!r}; choose one of {QK_KERNELS}")
    mods = [m for m in model.modules() if isinstance(m, MultiHeadAttention)]
    if kernel == "triton":
        for m in mods:
            why = fused_qk_supported(m)
            if why:
                from lite3r.errors import UnsupportedError

                raise UnsupportedError(
                    f"the fused qk-norm/RoPE kernel cannot run this model: {why}", "use 'torch'"
                )
    for m in mods:
        m.qk_kernel = kernel
    return len(mods)


def set_sdpa_backend(model: nn.Module, backend: str) -> int:
    """Select the SDPA backend of every dense attention in ``model``; returns how many were set.

    Chosen once at build time by the engine (never read from the environment in ``forward``).
    """
    if backend not in SDPA_BACKENDS:
        raise ValueError(f"unknown SDPA backend {backend!r}; choose one of {SDPA_BACKENDS}")
    n = 0
    for m in model.modules():
        if isinstance(m, MultiHeadAttention):
            m.sdpa_backend = backend
            n += 1
    return n
