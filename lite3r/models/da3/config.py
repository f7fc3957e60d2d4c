"""DA3 configuration dataclasses: every size is a field; fixed behaviour (eps values, activations, the
pos-embed interpolation policy, the RoPE layout, the ray branch) is not. DA3-Large and the reduced
parity model are the same classes at different configs (architectures.md §2).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

REF_VIEW_STRATEGIES = ("first", "middle", "saddle_balanced", "saddle_sim_range")


@dataclass(frozen=True)
class BackboneConfig:
    """``backbone.pretrained``: DINOv2 ViT with per-view / cross-view alternation (DA3-Large: ViT-L/14).

    Blocks ``i < alt_start`` attend within each view; from ``alt_start`` on, even blocks attend within
    each view and odd blocks across all views of a sequence. Blocks ``i ≥ qknorm_start`` have qk-norm,
    blocks ``i ≥ rope_start`` 2-D RoPE. ``out_layers`` are the blocks whose outputs feed the heads.
    """

    img_size: int = 518  # the learned pos-embed grid is img_size/patch_size squared (37×37)
    patch_size: int = 14
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    layer_scale_init: float = 1.0
    qkv_bias: bool = True
    proj_bias: bool = True
    ffn_bias: bool = True
    out_layers: tuple[int, ...] = (11, 15, 19, 23)
    alt_start: int = 8
    qknorm_start: int = 8
    rope_start: int = 8
    rope_freq: float = 100.0


@dataclass(frozen=True)
class DualDPTConfig:
    """``head``: DPT with a depth branch (exp / 1 + exp) and an auxiliary ray branch (7 channels)."""

    dim_in: int = 2048
    patch_size: int = 14
    output_dim: int = 2
    features: int = 256
    out_channels: tuple[int, int, int, int] = (256, 512, 1024, 1024)


@dataclass(frozen=True)
class CameraDecConfig:
    """``cam_dec``: per-view MLP from the last out layer's camera token to the pose encoding."""

    dim_in: int = 2048


@dataclass(frozen=True)
class CameraEncConfig:
    """``cam_enc``: pose encoding of given cameras → tokens that replace the camera token."""

    dim_out: int = 1024
    trunk_depth: int = 4
    num_heads: int = 16
    mlp_ratio: float = 4.0
    layer_scale_init: float = 0.01


@dataclass(frozen=True)
class DA3Config:
    """A whole DA3 network (``DepthAnything3Net``: backbone, head, cam_dec, cam_enc).

    ``cam_enc=None`` does not build the camera encoder (no pose-conditioned mode; the loader then
    drops ``cam_enc.*`` and reports it). ``ref_view_strategy`` is the default reference-view selection
    (the DA3 API's default is ``saddle_balanced``; its benchmarks use ``first``); ``encode`` can
    override it per call.
    """

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    head: DualDPTConfig = field(default_factory=DualDPTConfig)
    cam_dec: CameraDecConfig = field(default_factory=CameraDecConfig)
    cam_enc: CameraEncConfig | None = field(default_factory=CameraEncConfig)
    ref_view_strategy: str = "saddle_balanced"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        bb = self.backbone
        if bb.img_size % bb.patch_size:
            raise ValueError(f"img_size {bb.img_size} is not a multiple of patch_size {bb.patch_size}")
        if bb.embed_dim % bb.num_heads or (bb.embed_dim // bb.num_heads) % 4:
            raise ValueError(
                f"backbone embed_dim {bb.embed_dim} / {bb.num_heads} heads must give a head_dim divisible by 4"
                " (2-D RoPE)"
            )
        if not 1 <= bb.alt_start < bb.depth:
            raise ValueError(f"alt_start {bb.alt_start} must lie in 1..{bb.depth - 1}")
        for name in ("qknorm_start", "rope_start"):
            if not 0 <= getattr(bb, name) < bb.depth:
                raise ValueError(f"{name} {getattr(bb, name)} must lie in 0..{bb.depth - 1}")
        if len(bb.out_layers) != 4:
            raise ValueError(f"the DualDPT head reads 4 out layers, got out_layers={list(bb.out_layers)}")
        bad = [i for i in bb.out_layers if not 0 <= i < bb.depth]
        if bad or list(bb.out_layers) != sorted(set(bb.out_layers)):
            raise ValueError(
                f"out_layers {list(bb.out_layers)} must be increasing block indices < {bb.depth}"
            )
        width = 2 * bb.embed_dim
        if self.head.dim_in != width:
            raise ValueError(f"head.dim_in {self.head.dim_in} != 2 × backbone embed_dim = {width}")
        if self.head.patch_size != bb.patch_size:
            raise ValueError(f"head.patch_size {self.head.patch_size} != {bb.patch_size}")
        if len(self.head.out_channels) != 4 or self.head.features % 4:
            raise ValueError("head needs 4 out_channels and features divisible by 4")
        if self.cam_dec.dim_in != width:
            raise ValueError(f"cam_dec.dim_in {self.cam_dec.dim_in} != 2 × backbone embed_dim = {width}")
        if self.cam_enc is not None:
            ce = self.cam_enc
            if ce.dim_out != bb.embed_dim:
                raise ValueError(f"cam_enc.dim_out {ce.dim_out} != backbone embed_dim {bb.embed_dim}")
            if ce.dim_out % ce.num_heads or ce.dim_out % 2 or ce.trunk_depth < 1:
                raise ValueError("cam_enc needs dim_out divisible by num_heads and by 2, trunk_depth ≥ 1")
        if self.ref_view_strategy not in REF_VIEW_STRATEGIES:
            raise ValueError(
                f"unknown ref_view_strategy {self.ref_view_strategy!r}; choose one of {REF_VIEW_STRATEGIES}"
            )

    # ----------------------------------------------------------------------------------- presets
    @classmethod
    def da3_large(cls) -> DA3Config:
        """``configs/da3-large.yaml`` (depth-anything/DA3-LARGE-1.1)."""
        return cls()

    # ------------------------------------------------------------------------------ (de)serialise
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DA3Config:
        """Inverse of :meth:`to_dict`; unknown fields are an error (no silent ignoring)."""
        d = dict(d)
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown DA3Config fields: {sorted(unknown)}")
        kwargs: dict[str, Any] = {}
        for name, kind in (
            ("backbone", BackboneConfig),
            ("head", DualDPTConfig),
            ("cam_dec", CameraDecConfig),
            ("cam_enc", CameraEncConfig),
        ):
            if name in d:
                kwargs[name] = None if d[name] is None else _make(kind, d[name])
        if "ref_view_strategy" in d:
            kwargs["ref_view_strategy"] = d["ref_view_strategy"]
        return cls(**kwargs)


def _make(kind, values: Mapping[str, Any]):
    if isinstance(values, kind):
        return values
    names = {f.name for f in dataclasses.fields(kind)}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"unknown {kind.__name__} fields: {sorted(unknown)}")
    return kind(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


# --------------------------------------------------------------------------- reference configs
def is_reference_config(ref: Mapping[str, Any]) -> bool:
    """A reference constructor dump of ``DepthAnything3Net`` (the parity folder's da3 config)."""
    return "backbone" in ref and "cam_dec" in ref and "head" in ref


def from_reference_config(ref: Mapping[str, Any]) -> DA3Config:
    """Map a reference constructor dump (``da3_small_config.json``: kwargs of the Depth-Anything-3
    classes) to a :class:`DA3Config`.

    Fixed behaviour is checked, not configured: a dump asking for something this implementation does
    not do (antialiased or size-based pos-embed interpolation, registers, SwiGLU, other activations,
    another aux neck, …) raises.
    """
    bk = ref["backbone"]["kwargs"]
    _expect(
        bk,
        {
            "num_register_tokens": 0,
            "ffn_layer": "mlp",
            "cat_token": True,
            "interpolate_antialias": False,
            "interpolate_offset": 0.1,
        },
        "backbone",
    )
    out_layers = tuple(ref["backbone"]["out_layers"])
    backbone = BackboneConfig(
        img_size=bk["img_size"],
        patch_size=bk["patch_size"],
        embed_dim=bk["embed_dim"],
        depth=bk["depth"],
        num_heads=bk["num_heads"],
        mlp_ratio=float(bk["mlp_ratio"]),
        layer_scale_init=float(bk["init_values"]),
        qkv_bias=bk.get("qkv_bias", True),
        proj_bias=bk.get("proj_bias", True),
        ffn_bias=bk.get("ffn_bias", True),
        out_layers=out_layers,
        alt_start=bk["alt_start"],
        qknorm_start=bk["qknorm_start"],
        rope_start=bk["rope_start"],
        rope_freq=float(bk.get("rope_freq", 100)),
    )
    hk = ref["head"]["kwargs"]
    _expect(
        hk,
        {
            "activation": "exp",
            "conf_activation": "expp1",
            "pos_embed": True,
            "down_ratio": 1,
            "aux_pyramid_levels": 4,
            "aux_out1_conv_num": 5,
            "head_names": ["depth", "ray"],
        },
        "head",
    )
    head = DualDPTConfig(
        dim_in=hk["dim_in"],
        patch_size=hk["patch_size"],
        output_dim=hk["output_dim"],
        features=hk["features"],
        out_channels=tuple(hk["out_channels"]),
    )
    cam_dec = CameraDecConfig(dim_in=ref["cam_dec"]["kwargs"]["dim_in"])
    cam_enc = None
    if ref.get("cam_enc"):
        ck = ref["cam_enc"]["kwargs"]
        _expect(ck, {"dim_in": 9, "target_dim": 9}, "cam_enc")
        cam_enc = CameraEncConfig(
            dim_out=ck["dim_out"],
            trunk_depth=ck["trunk_depth"],
            num_heads=ck["num_heads"],
            mlp_ratio=float(ck["mlp_ratio"]),
            layer_scale_init=float(ck["init_values"]),
        )
    return DA3Config(backbone=backbone, head=head, cam_dec=cam_dec, cam_enc=cam_enc)


def _expect(kwargs: Mapping[str, Any], fixed: Mapping[str, Any], where: str) -> None:
    for key, value in fixed.items():
        if key in kwargs and kwargs[key] != value:
            raise ValueError(
                f"{where}.{key}={kwargs[key]!r} is not supported (this implementation: {value!r})"
            )
