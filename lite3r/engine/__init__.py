"""Photos → Reconstruction: preprocessing, precision and attention set-up, memory-lean inference."""

from lite3r.engine.reconstruction import Reconstruction

__all__ = ["Reconstruction"]
