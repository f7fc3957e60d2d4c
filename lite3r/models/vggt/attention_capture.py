"""q, k of chosen VGGT global attention blocks, recomputed by forward hooks (the model is untouched).

Two users read the cross-view attention logits q·k/√d of the global blocks: the correspondence loss of
lite3r-tiny training (``lite3r.training.correspondence``, which needs them with gradients) and the
geometric pose read-out from the learned matches (:mod:`lite3r.models.vggt.match_pose`, at inference).
The hooks recompute q, k from the module's own input with its own ``project_qkv`` (qk-norm and RoPE as
in the forward), so the model's output does not change and no attention kernel has to expose its
probabilities.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["GlobalQKCapture", "resolve_layers"]


def resolve_layers(layers: tuple[int, ...] | None, depth: int) -> tuple[int, ...]:
    """Global-block indices: None or () → the middle block (``depth // 2``); negatives count from the
    end; sorted, duplicates dropped."""
    if layers is None or len(layers) == 0:
        return (depth // 2,)
    out = []
    for i in layers:
        j = i + depth if i < 0 else i
        if not 0 <= j < depth:
            raise ValueError(f"correspondence layer {i} is out of range for {depth} global blocks")
        out.append(j)
    return tuple(sorted(set(out)))


class GlobalQKCapture:
    """Keeps (q, k, frame_len) of the last forward of chosen global attention modules.

    Forward hooks on ``model.aggregator.global_blocks[l].attn`` recompute q, k [B, H, S·P, D] from the
    module's input. ``grad_only=True`` (training) keeps nothing while autograd is off (validation runs
    stay free); ``grad_only=False`` (the pose read-out) always keeps them, detached. Use as a context
    manager or call ``remove()`` to detach the hooks."""

    def __init__(self, model: nn.Module, layers: tuple[int, ...] | None, grad_only: bool = True) -> None:
        blocks = model.aggregator.global_blocks
        self.layers = resolve_layers(layers, len(blocks))
        self.grad_only = grad_only
        self.captured: dict[int, tuple[Tensor, Tensor, int]] = {}
        self.handles = [
            blocks[i].attn.register_forward_hook(self._hook(i), with_kwargs=True) for i in self.layers
        ]

    def _hook(self, i: int):
        def hook(module, args, kwargs, output):
            grad = torch.is_grad_enabled()
            if self.grad_only and not grad:
                return None
            x = args[0] if args else kwargs["x"]
            q, k, _ = module.project_qkv(x, kwargs.get("pos"))
            if not self.grad_only:
                q, k = q.detach(), k.detach()
            self.captured[i] = (q, k, kwargs.get("frame_len"))
            return None

        return hook

    def pop(self) -> dict[int, tuple[Tensor, Tensor, int]]:
        out, self.captured = self.captured, {}
        return out

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []
        self.captured = {}

    def __enter__(self) -> GlobalQKCapture:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
