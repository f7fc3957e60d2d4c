"""Attention for Lite3R models: the dense multi-head attention every block uses, and the
sparse-linear attention (SLA) that replaces it at converted sites."""

from lite3r.attention.dense import SDPA_BACKENDS, MultiHeadAttention, set_sdpa_backend

__all__ = ["SDPA_BACKENDS", "MultiHeadAttention", "set_sdpa_backend"]
