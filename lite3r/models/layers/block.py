"""Pre-norm transformer block ("DINOv2 style") used by every trunk in VGGT and DA3.

x ← x + γ1 ⊙ Attn(LN1(x));  x ← x + γ2 ⊙ MLP(LN2(x)). Key names match the official checkpoints:
``norm1``, ``attn.*``, ``ls1.gamma``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``, ``ls2.gamma``.

Memory option (inference only, off by default): ``Block.mlp_chunk_tokens = N`` runs the MLP half
(norm2 → fc1 → act → fc2 → ls2 → residual add) on at most N tokens (of the flattened B·N) at a time,
adding into the residual in place, so the 4×-wide hidden activation never exists for the whole
sequence. Numerically identical per token; set it with :func:`set_mlp_chunk_tokens` (build time).
Under ``torch.compile`` the chunk loop is unrolled, so a compiled block specialises on the number
of chunks (one recompilation per distinct chunk count, shapes otherwise stay dynamic).
"""

from __future__ import annotations

import torch
from torch import nn

from lite3r.attention.dense import MultiHeadAttention


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_value: float = 1e-5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    """Linear → exact (erf) GELU → Linear."""

    def __init__(self, dim: int, hidden_dim: int, bias: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim, bias=bias)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        ffn_bias: bool = True,
        norm_eps: float = 1e-6,
        qk_norm: bool = False,
        qk_norm_eps: float = 1e-5,
        layer_scale_init: float | None = 1e-5,
        rope: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = MultiHeadAttention(
            dim,
            num_heads,
            qkv_bias=qkv_bias,
            proj_bias=proj_bias,
            qk_norm=qk_norm,
            qk_norm_eps=qk_norm_eps,
            rope=rope,
        )
        self.ls1 = LayerScale(dim, layer_scale_init) if layer_scale_init is not None else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), bias=ffn_bias)
        self.ls2 = LayerScale(dim, layer_scale_init) if layer_scale_init is not None else nn.Identity()

        self.mlp_chunk_tokens: int | None = None  # inference memory option, see the module doc

    def forward(self, x: torch.Tensor, pos=None, frame_len: int | None = None) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), pos=pos, frame_len=frame_len))
        chunk = self.mlp_chunk_tokens
        if chunk is not None and not self.training and not torch.is_grad_enabled():
            return self._mlp_residual_chunked(x, chunk)
        return x + self.ls2(self.mlp(self.norm2(x)))

    def _mlp_residual_chunked(self, x: torch.Tensor, chunk: int) -> torch.Tensor:
        """x + ls2(mlp(norm2(x))) chunk by chunk, in place on ``x`` (a fresh tensor made above; no
        autograd here). Tokens are independent in this half of the block, so the result is the same."""
        flat = x.view(-1, x.shape[-1])  # x = a + b above: contiguous
        n = (flat.shape[0] + chunk - 1) // chunk
        for i in range(n):
            rows = flat[i * chunk : (i + 1) * chunk]
            rows.add_(self.ls2(self.mlp(self.norm2(rows))))
        return x


def set_mlp_chunk_tokens(model: nn.Module, tokens: int | None) -> list[str]:
    """Set ``mlp_chunk_tokens`` on every :class:`Block` under ``model`` (None = off); returns their
    names. Call before compiling (a compiled block guards on the value)."""
    if tokens is not None and (isinstance(tokens, bool) or int(tokens) < 1):
        raise ValueError(f"mlp_chunk_tokens must be a positive integer or None, got {tokens!r}")
    names = []
    for name, m in model.named_modules():
        if isinstance(m, Block):
            m.mlp_chunk_tokens = None if tokens is None else int(tokens)
            names.append(name)
    return names
