"""Building blocks shared by the VGGT and DA3 implementations."""

from lite3r.models.layers.block import Block, LayerScale, Mlp
from lite3r.models.layers.rope import RopeTables, RotaryPositionEmbedding2D, patch_positions

__all__ = ["Block", "LayerScale", "Mlp", "RopeTables", "RotaryPositionEmbedding2D", "patch_positions"]
