"""Generic DPT trunk (architectures.md §0), shared by VGGT's ``DPTHead`` and DA3's ``DualDPT``.

Token maps of four layers → LayerNorm → per level a 1×1 projection, the UV position embedding and a
resampling conv (4×, 2×, 1×, ½×) → ``scratch.layer{k}_rn`` → top-down fusion (``scratch.refinenet{k}``)
→ ``scratch.output_conv1`` → bilinear upsampling to the image size → UV embedding → ``output_conv2``.
Module names equal the official checkpoints'. The two models differ in one detail that this module
takes as a flag: VGGT's residual conv units apply their first ReLU in place, so the skip connection adds
``relu(x)``; DA3's add ``x`` (``skip_relu``; architectures.md §4 item 6). DA3 computes the UV embedding
in float32, VGGT in float64 (``uv_compute_dtype``).

The DA3 head adds its auxiliary branch (``refinenet{k}_aux``, ``output_conv{1,2}_aux``) to
:class:`DPTScratch` and reuses :meth:`DPTBase.levels`, :meth:`DPTBase.fuse` and the helpers below.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = ("exp", "expp1", "inv_log", "relu", "linear")


def activate(x: torch.Tensor, name: str) -> torch.Tensor:
    """The heads' output activations: exp, expp1 = 1 + exp, inv_log = sign·expm1(|·|), relu, linear."""
    if name == "exp":
        return torch.exp(x)
    if name == "expp1":
        return 1 + torch.exp(x)
    if name == "inv_log":
        return torch.sign(x) * torch.expm1(torch.abs(x))
    if name == "relu":
        return F.relu(x)
    if name == "linear":
        return x
    raise ValueError(f"unknown activation {name!r}; choose one of {ACTIVATIONS}")


def activate_head(
    out: torch.Tensor, activation: str, conf_activation: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a [N, C, H, W] head output channels-last into predictions [N, H, W, C-1] and the confidence
    [N, H, W] (the last channel), each with its activation, in float32 (a bf16 head's exp would
    round depth to 3 significant digits)."""
    fmap = out.permute(0, 2, 3, 1).float()
    return activate(fmap[..., :-1], activation), activate(fmap[..., -1], conf_activation)


def _sincos(pos: torch.Tensor, dim: int, compute_dtype: torch.dtype) -> torch.Tensor:
    """[M] positions → [M, dim] = [sin(p·ω_k), cos(p·ω_k)], ω_k = 100^(−k/(dim/2)), k < dim/2; float32."""
    omega = torch.arange(dim // 2, dtype=compute_dtype, device=pos.device) / (dim / 2.0)
    omega = 1.0 / 100.0**omega
    ang = pos.to(compute_dtype)[:, None] * omega[None]
    return torch.cat([ang.sin(), ang.cos()], dim=1).float()


def uv_position_embedding(
    h: int,
    w: int,
    channels: int,
    image_hw: tuple[int, int],
    device: torch.device | None = None,
    compute_dtype: torch.dtype = torch.float64,
    ratio: float = 0.1,
) -> torch.Tensor:
    """The DPT's UV position embedding for a map of ``channels`` × h × w, already scaled by ``ratio``.

    Coordinates are normalised with the *image* aspect ratio a = W/H: x spans ±a/√(a²+1)·(w−1)/w, y
    spans ±1/√(a²+1)·(h−1)/h. The first half of the channels encodes x (per column), the second half y
    (per row). The sin/cos are evaluated per row/column only (h + w values, not h·w), so the full
    [channels, h, w] map is built by broadcasting. Returns float32 [channels, h, w].
    """
    if channels % 4:
        raise ValueError(f"the UV position embedding needs channels divisible by 4, got {channels}")
    H, W = image_hw
    aspect = W / H
    diag = (aspect**2 + 1.0) ** 0.5
    span_x, span_y = aspect / diag, 1.0 / diag
    xs = torch.linspace(-span_x * (w - 1) / w, span_x * (w - 1) / w, w, dtype=torch.float32, device=device)
    ys = torch.linspace(-span_y * (h - 1) / h, span_y * (h - 1) / h, h, dtype=torch.float32, device=device)
    half = channels // 2
    ex = _sincos(xs, half, compute_dtype) * ratio  # [w, half]
    ey = _sincos(ys, half, compute_dtype) * ratio  # [h, half]
    pe = torch.empty(channels, h, w, dtype=torch.float32, device=device)
    pe[:half] = ex.T[:, None, :]
    pe[half:] = ey.T[:, :, None]
    return pe


def add_uv_position_embedding(
    x: torch.Tensor, image_hw: tuple[int, int], compute_dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """x [N, C, h, w] + the UV embedding (ratio 0.1) of its own size, in x's dtype."""
    pe = uv_position_embedding(
        x.shape[-2], x.shape[-1], x.shape[1], image_hw, device=x.device, compute_dtype=compute_dtype
    )
    return x + pe.to(x.dtype)


def interpolate_bilinear(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resampling with align_corners=True, as every DPT resize in both references."""
    return F.interpolate(x, size=tuple(int(s) for s in size), mode="bilinear", align_corners=True)


class ResidualConvUnit(nn.Module):
    """ReLU → 3×3 conv → ReLU → 3×3 conv, plus a skip connection (``resConfUnit{1,2}``).

    ``skip_relu=True`` reproduces VGGT, whose first ReLU is in place and so turns the skip into
    relu(x); ``False`` is the plain x + f(x) of DA3. The input tensor itself is never modified.
    """

    def __init__(self, features: int, skip_relu: bool) -> None:
        super().__init__()
        self.skip_relu = skip_relu
        self.conv1 = nn.Conv2d(features, features, kernel_size=3, stride=1, padding=1, bias=True)
        self.conv2 = nn.Conv2d(features, features, kernel_size=3, stride=1, padding=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(x)
        out = self.conv2(F.relu(self.conv1(a)))
        return out + (a if self.skip_relu else x)


class FusionBlock(nn.Module):
    """[x + RCU1(lateral)] → RCU2 → bilinear resize → 1×1 ``out_conv`` (``refinenet{k}``).

    ``has_lateral=False`` (``refinenet4``) has no ``resConfUnit1``. Without an explicit ``size`` the
    map is doubled to the integer size (2h, 2w).
    """

    def __init__(self, features: int, skip_relu: bool, has_lateral: bool = True) -> None:
        super().__init__()
        self.has_lateral = has_lateral
        if has_lateral:
            self.resConfUnit1 = ResidualConvUnit(features, skip_relu)
        self.resConfUnit2 = ResidualConvUnit(features, skip_relu)
        self.out_conv = nn.Conv2d(features, features, kernel_size=1, stride=1, padding=0, bias=True)

    def forward(
        self, x: torch.Tensor, lateral: torch.Tensor | None = None, size: Sequence[int] | None = None
    ) -> torch.Tensor:
        if self.has_lateral:
            if lateral is None:
                raise ValueError("this fusion block needs a lateral input")
            x = x + self.resConfUnit1(lateral)
        elif lateral is not None:
            raise ValueError("this fusion block (refinenet4) takes no lateral input")
        x = self.resConfUnit2(x)
        if size is None:
            size = (2 * x.shape[-2], 2 * x.shape[-1])
        return self.out_conv(interpolate_bilinear(x, size))


def output_conv2(in_channels: int, out_channels: int, hidden: int = 32) -> nn.Sequential:
    """3×3 conv → ReLU → 1×1 conv (keys ``.0`` and ``.2``)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, hidden, kernel_size=3, stride=1, padding=1),
        nn.ReLU(),
        nn.Conv2d(hidden, out_channels, kernel_size=1, stride=1, padding=0),
    )


class DPTScratch(nn.Module):
    """``scratch``: ``layer{k}_rn`` (3×3, no bias, c_k → features), ``refinenet{1-4}``,
    ``output_conv1`` (3×3, features → features/2) and ``output_conv2`` (→ ``output_dim`` channels)."""

    def __init__(
        self,
        out_channels: Sequence[int],
        features: int,
        output_dim: int | None,
        skip_relu: bool,
        hidden: int = 32,
    ) -> None:
        super().__init__()
        for k, c in enumerate(out_channels, start=1):
            setattr(
                self, f"layer{k}_rn", nn.Conv2d(c, features, kernel_size=3, stride=1, padding=1, bias=False)
            )
        for k in range(1, 5):
            setattr(self, f"refinenet{k}", FusionBlock(features, skip_relu, has_lateral=k != 4))
        self.output_conv1 = nn.Conv2d(features, features // 2, kernel_size=3, stride=1, padding=1)
        if output_dim is not None:
            self.output_conv2 = output_conv2(features // 2, output_dim, hidden)


class DPTBase(nn.Module):
    """Norm, ``projects``, ``resize_layers`` and ``scratch`` of a DPT head, with the shared steps.

    Subclasses (VGGT ``DPTHead``, DA3 ``DualDPT``) choose the input tokens and the output branches.
    """

    def __init__(
        self,
        dim_in: int,
        features: int = 256,
        out_channels: Sequence[int] = (256, 512, 1024, 1024),
        output_dim: int | None = 1,
        patch_size: int = 14,
        pos_embed: bool = True,
        skip_relu: bool = True,
        uv_compute_dtype: torch.dtype = torch.float64,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if len(out_channels) != 4:
            raise ValueError(f"a DPT has 4 levels, got out_channels={list(out_channels)}")
        if features % 2:
            raise ValueError(f"DPT features must be even, got {features}")
        self.patch_size = patch_size
        self.pos_embed = pos_embed
        self.uv_compute_dtype = uv_compute_dtype
        self.norm = nn.LayerNorm(dim_in, eps=norm_eps)
        self.projects = nn.ModuleList(
            [nn.Conv2d(dim_in, c, kernel_size=1, stride=1, padding=0) for c in out_channels]
        )
        c = list(out_channels)
        self.resize_layers = nn.ModuleList(
            [
                nn.ConvTranspose2d(c[0], c[0], kernel_size=4, stride=4, padding=0),
                nn.ConvTranspose2d(c[1], c[1], kernel_size=2, stride=2, padding=0),
                nn.Identity(),
                nn.Conv2d(c[3], c[3], kernel_size=3, stride=2, padding=1),
            ]
        )
        self.scratch = DPTScratch(out_channels, features, output_dim, skip_relu)

    @property
    def param_dtype(self) -> torch.dtype:
        return self.norm.weight.dtype

    def _pos(self, x: torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
        return add_uv_position_embedding(x, image_hw, self.uv_compute_dtype) if self.pos_embed else x

    def levels(
        self, tokens: Sequence[torch.Tensor], patch_hw: tuple[int, int], image_hw: tuple[int, int]
    ) -> list[torch.Tensor]:
        """Four patch-token maps [N, h·w, dim_in] → the four resampled levels [N, c_k, ·, ·].

        The tokens are cast to the head's parameter dtype, so a bf16 trunk can feed an fp32 head.
        """
        if len(tokens) != 4:
            raise ValueError(f"a DPT takes 4 token maps, got {len(tokens)}")
        h, w = patch_hw
        out = []
        for k, t in enumerate(tokens):
            n, hw, c = t.shape
            if hw != h * w:
                raise ValueError(f"token map {k} has {hw} tokens, expected {h}×{w}")
            x = self.norm(t.to(self.param_dtype))
            x = x.permute(0, 2, 1).reshape(n, c, h, w)
            x = self._pos(self.projects[k](x), image_hw)
            out.append(self.resize_layers[k](x))
        return out

    def scratch_levels(self, levels: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``layer{k}_rn`` of each level (shared by DA3's main and auxiliary fusion chains)."""
        return [getattr(self.scratch, f"layer{k}_rn")(x) for k, x in enumerate(levels, start=1)]

    def fuse(self, rn: Sequence[torch.Tensor], suffix: str = "") -> list[torch.Tensor]:
        """Top-down fusion through ``refinenet{4..1}{suffix}``; returns the outputs [r4, r3, r2, r1]
        (r1 is the finest, at twice the level-1 size)."""
        s = self.scratch
        r4 = getattr(s, f"refinenet4{suffix}")(rn[3], size=rn[2].shape[-2:])
        r3 = getattr(s, f"refinenet3{suffix}")(r4, rn[2], size=rn[1].shape[-2:])
        r2 = getattr(s, f"refinenet2{suffix}")(r3, rn[1], size=rn[0].shape[-2:])
        r1 = getattr(s, f"refinenet1{suffix}")(r2, rn[0])
        return [r4, r3, r2, r1]

    def main_map(
        self, tokens: Sequence[torch.Tensor], patch_hw: tuple[int, int], image_hw: tuple[int, int]
    ) -> torch.Tensor:
        """Four token maps → the main branch's output map [N, C, H, W] (before activation).

        One method, so that :func:`compile_dpt_head` can compile the whole memory-bound chain
        (resamplings, UV embeddings, ReLUs, residual adds around the cuDNN convolutions) as one graph
        per chunk shape; the frame slicing stays outside it, so chunks at other offsets reuse it."""
        return self.output_map(
            self.fuse(self.scratch_levels(self.levels(tokens, patch_hw, image_hw)))[-1], image_hw
        )

    def output_map(self, fused: torch.Tensor, image_hw: tuple[int, int], down_ratio: int = 1) -> torch.Tensor:
        """``output_conv1`` → bilinear to (H/down, W/down) → UV embedding → ``output_conv2``."""
        x = self.scratch.output_conv1(fused)
        H, W = image_hw
        x = interpolate_bilinear(x, (H // down_ratio, W // down_ratio))
        x = self._pos(x, image_hw)
        return self.scratch.output_conv2(x)


def compile_dpt_head(head: DPTBase, backend: str = "inductor") -> None:
    """torch.compile ``head.main_map`` in place (Inductor, static shapes, no CUDA graphs: the heads run
    chunk after chunk and keep each chunk's output, which CUDA-graph replays would overwrite).

    Measured on the H100 (VGGT-1B depth head, 32 frames × 518², chunks of 8, bf16): 61 ms eager →
    36.7 ms compiled (``benchmarks/results/profile/dpt_head_probe_f32``); the bilinear upsampling to
    full resolution and the elementwise kernels around it were 36 of the 61 ms.
    """
    head.main_map = torch.compile(head.main_map, backend=backend, dynamic=False)
