"""Lite3R: fast feed-forward 3D reconstruction (VGGT-1B, Depth-Anything-3-Large, lite3r-tiny).

The library is split by job: ``lite3r.models`` (backbones, checkpoint loading), ``lite3r.attention``
(dense and sparse-linear attention), ``lite3r.quant`` (FP8), ``lite3r.convert`` (dense → Lite3R),
``lite3r.engine`` (photos → Reconstruction), ``lite3r.io`` (images, PLY, COLMAP), ``lite3r.eval``
(metrics, datasets, eval and bench). The Triton kernels, training code and desktop app are installed
as ``lite3r.kernels``, ``lite3r.training`` and ``lite3r.app`` (see pyproject.toml).
"""

__version__ = "0.1.0"
