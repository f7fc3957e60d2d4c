"""Named attention sites: where in a backbone the Lite3R conversion may swap attention.

Each backbone declares its sites explicitly (no class-name matching): VGGT has ``dino``, ``frame``,
``global`` and ``camera``; DA3 has ``per_view``, ``cross_view`` and ``camera_encoder``. The default
conversion touches only the cross-view sites, where attention cost grows with the square of the view
count.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class AttentionSite:
    name: str
    modules: list[str] = field(default_factory=list)  # qualified names of MultiHeadAttention modules
    cross_view: bool = False  # attends across all views of a sequence (cost ∝ S²)
    special_tokens_per_frame: int = 0  # camera/register/cls tokens at the start of every frame
    trunk: bool = True  # part of the trunk (aggregator/backbone) rather than a head
