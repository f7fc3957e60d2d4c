"""Reference-view selection for DA3 (architectures.md §2.6; trap §4 item 11).

Before the first cross-view block DA3 picks one view per sequence as the reference (its camera token
slot 0, the world frame of the predicted cameras) and moves it to the front: [ref, 0..ref−1,
ref+1..S−1]. The outputs are returned in the original order. Selection runs only for S ≥
:data:`MIN_VIEWS` and never when cameras are given.

Strategies, per batch element, on the (unnormalised) cls tokens c_s after the blocks before
``alt_start − 1``:

- ``first``: 0; ``middle``: S // 2;
- ``saddle_balanced`` (DA3's default): with n_s = c_s / ‖c_s‖, three per-view metrics — the mean
  similarity ⟨n_s, n_t⟩ over the other views, ‖c_s‖, and the unbiased variance of n_s over channels —
  are min-max normalised over the views (denominator + 1e-8); the reference is the argmin of
  Σ |metric − 0.5| (ties → the lowest index);
- ``saddle_sim_range``: the argmax of (max − min) of the off-diagonal similarities.

The metrics are computed in float32 whatever the trunk's dtype.
"""

from __future__ import annotations

import torch

MIN_VIEWS = 3  # no selection for fewer views
STRATEGIES = ("first", "middle", "saddle_balanced", "saddle_sim_range")


def select_reference_view(cls_tokens: torch.Tensor, strategy: str) -> torch.Tensor:
    """cls_tokens [B, S, C] → the reference view of every sequence, int64 [B]."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown reference-view strategy {strategy!r}; choose one of {STRATEGIES}")
    B, S, _ = cls_tokens.shape
    dev = cls_tokens.device
    if S <= 1 or strategy == "first":
        return torch.zeros(B, dtype=torch.long, device=dev)
    if strategy == "middle":
        return torch.full((B,), S // 2, dtype=torch.long, device=dev)
    c = cls_tokens.float()
    norm = c.norm(dim=-1)  # [B, S]
    unit = c / norm.clamp_min(1e-8)[..., None]
    sim = unit @ unit.transpose(1, 2)  # [B, S, S]
    off_diag = sim - torch.eye(S, dtype=sim.dtype, device=dev)
    if strategy == "saddle_sim_range":
        return (off_diag.max(dim=-1).values - off_diag.min(dim=-1).values).argmax(dim=1)
    mean_sim = off_diag.sum(dim=-1) / (S - 1)
    var = unit.var(dim=-1)  # unbiased
    score = sum((_min_max(m) - 0.5).abs() for m in (mean_sim, norm, var))
    return score.argmin(dim=1)


def _min_max(metric: torch.Tensor) -> torch.Tensor:
    lo = metric.min(dim=1, keepdim=True).values
    hi = metric.max(dim=1, keepdim=True).values
    return (metric - lo) / (hi - lo + 1e-8)


def reference_order(ref: torch.Tensor, num_views: int) -> torch.Tensor:
    """[B] reference views → the view order [B, S] with the reference first: [ref, 0..ref−1, ref+1..]."""
    pos = torch.arange(num_views, device=ref.device).expand(ref.shape[0], -1)
    r = ref[:, None]
    order = torch.where((pos > 0) & (pos <= r), pos - 1, pos)
    order[:, 0] = ref
    return order


def inverse_order(order: torch.Tensor) -> torch.Tensor:
    """The permutation that undoes ``order`` (both [B, S]): x[order][inverse] == x."""
    inv = torch.empty_like(order)
    inv.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return inv


def gather_views(x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """x [B, S, ...] → x[b, order[b]] for every b."""
    batch = torch.arange(x.shape[0], device=x.device)[:, None]
    return x[batch, order]
