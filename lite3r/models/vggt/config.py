"""VGGT configuration dataclasses: every size is a field, fixed behaviour (eps values, activations,
interpolation policy, RoPE layout) is not. VGGT-1B, the reduced parity model and lite3r-tiny are the
same classes at different configs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

ACTS = ("linear", "relu", "exp")


@dataclass(frozen=True)
class DinoConfig:
    """``aggregator.patch_embed``: DINOv2 ViT with registers (VGGT-1B: ``dinov2_vitl14_reg``)."""

    img_size: int = 518  # the learned pos-embed grid is img_size/patch_size squared
    patch_size: int = 14
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_register_tokens: int = 4
    layer_scale_init: float = 1.0
    qkv_bias: bool = True
    proj_bias: bool = True
    ffn_bias: bool = True


@dataclass(frozen=True)
class AggregatorConfig:
    """Alternating frame/global attention (24 + 24 blocks in VGGT-1B)."""

    img_size: int = 518
    patch_size: int = 14
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_register_tokens: int = 4
    qkv_bias: bool = True
    proj_bias: bool = True
    ffn_bias: bool = True
    qk_norm: bool = True
    rope_freq: float = 100.0
    # 2-D RoPE in the global (cross-frame) blocks as well as the frame blocks, as VGGT. Every frame has
    # the same positions, so in the global blocks RoPE favours the same patch position in every frame;
    # False leaves cross-frame attention to content (a lite3r-tiny training option, issue #6).
    global_rope: bool = True
    layer_scale_init: float = 0.01
    # camera/register token init (normal std); the reference uses 1e-6. Irrelevant when loading weights.
    token_init_std: float = 1e-6
    patch_embed: DinoConfig = field(default_factory=DinoConfig)


@dataclass(frozen=True)
class CameraHeadConfig:
    """Camera head: trunk over the S camera tokens with iterative refinement of absT_quaR_FoV."""

    dim_in: int = 2048
    trunk_depth: int = 4
    num_heads: int = 16
    mlp_ratio: float = 4.0
    layer_scale_init: float = 0.01
    num_iterations: int = 4
    trans_act: str = "linear"
    quat_act: str = "linear"
    fl_act: str = "relu"


@dataclass(frozen=True)
class DPTHeadConfig:
    """Depth (output_dim 2, exp) or point (output_dim 4, inv_log) DPT head."""

    dim_in: int = 2048
    patch_size: int = 14
    output_dim: int = 2
    activation: str = "exp"
    conf_activation: str = "expp1"
    features: int = 256
    out_channels: tuple[int, int, int, int] = (256, 512, 1024, 1024)
    intermediate_layer_idx: tuple[int, int, int, int] = (4, 11, 17, 23)
    pos_embed: bool = True


def _point_head() -> DPTHeadConfig:
    return DPTHeadConfig(output_dim=4, activation="inv_log")


@dataclass(frozen=True)
class VGGTConfig:
    """A whole VGGT. A head set to ``None`` is not built (the authors' Lite3R checkpoints have no point
    head); the track head is never built."""

    aggregator: AggregatorConfig = field(default_factory=AggregatorConfig)
    camera_head: CameraHeadConfig | None = field(default_factory=CameraHeadConfig)
    depth_head: DPTHeadConfig | None = field(default_factory=DPTHeadConfig)
    point_head: DPTHeadConfig | None = field(default_factory=_point_head)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        agg = self.aggregator
        dino = agg.patch_embed
        if dino.embed_dim != agg.embed_dim:
            raise ValueError(f"DINO embed_dim {dino.embed_dim} != aggregator embed_dim {agg.embed_dim}")
        if dino.patch_size != agg.patch_size:
            raise ValueError(f"DINO patch_size {dino.patch_size} != aggregator patch_size {agg.patch_size}")
        if agg.embed_dim % agg.num_heads or (agg.embed_dim // agg.num_heads) % 4:
            raise ValueError(
                f"aggregator embed_dim {agg.embed_dim} / {agg.num_heads} heads must give a head_dim divisible "
                "by 4 (2-D RoPE)"
            )
        if agg.depth < 1:
            raise ValueError("aggregator depth must be ≥ 1")
        width = 2 * agg.embed_dim
        if self.camera_head is not None:
            cam = self.camera_head
            if cam.dim_in != width:
                raise ValueError(f"camera_head.dim_in {cam.dim_in} != 2 × aggregator embed_dim = {width}")
            if cam.trunk_depth < 1 or cam.num_iterations < 1:
                raise ValueError("camera head needs trunk_depth ≥ 1 and num_iterations ≥ 1")
            for name in ("trans_act", "quat_act", "fl_act"):
                if getattr(cam, name) not in ACTS:
                    raise ValueError(f"camera_head.{name} must be one of {ACTS}")
        for name in ("depth_head", "point_head"):
            head = getattr(self, name)
            if head is None:
                continue
            if head.dim_in != width:
                raise ValueError(f"{name}.dim_in {head.dim_in} != 2 × aggregator embed_dim = {width}")
            if head.patch_size != agg.patch_size:
                raise ValueError(f"{name}.patch_size {head.patch_size} != {agg.patch_size}")
            if len(head.intermediate_layer_idx) != 4 or len(head.out_channels) != 4:
                raise ValueError(f"{name} needs 4 intermediate layers and 4 out_channels")
            bad = [i for i in head.intermediate_layer_idx if not 0 <= i < agg.depth]
            if bad:
                raise ValueError(f"{name}.intermediate_layer_idx {bad} outside 0..{agg.depth - 1}")

    # ----------------------------------------------------------------------------------- presets
    @classmethod
    def vggt_1b(cls) -> VGGTConfig:
        """facebook/VGGT-1B (without the track head)."""
        return cls()

    @classmethod
    def scaled(
        cls,
        img_size: int = 224,
        embed_dim: int = 256,
        num_heads: int = 4,
        depth: int = 4,
        dino_depth: int = 4,
        camera_trunk_depth: int = 1,
        camera_num_heads: int | None = None,
        dpt_features: int = 64,
        dpt_out_channels: tuple[int, int, int, int] = (32, 64, 128, 128),
        intermediate_layer_idx: tuple[int, int, int, int] | None = None,
        num_register_tokens: int = 4,
        point_head: bool = True,
        layer_scale_init: float = 0.01,
        dino_layer_scale_init: float = 1.0,
        token_init_std: float = 1e-6,
        global_rope: bool = True,
    ) -> VGGTConfig:
        """A consistent smaller VGGT (e.g. lite3r-tiny): the DPT layers default to the same relative
        positions as VGGT-1B's (4, 11, 17, 23 of 24)."""
        if intermediate_layer_idx is None:
            intermediate_layer_idx = default_dpt_layers(depth)
        dino = DinoConfig(
            img_size=img_size,
            embed_dim=embed_dim,
            depth=dino_depth,
            num_heads=num_heads,
            num_register_tokens=num_register_tokens,
            layer_scale_init=dino_layer_scale_init,
        )
        agg = AggregatorConfig(
            img_size=img_size,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            num_register_tokens=num_register_tokens,
            layer_scale_init=layer_scale_init,
            token_init_std=token_init_std,
            global_rope=global_rope,
            patch_embed=dino,
        )
        cam = CameraHeadConfig(
            dim_in=2 * embed_dim,
            trunk_depth=camera_trunk_depth,
            num_heads=camera_num_heads or num_heads,
            layer_scale_init=layer_scale_init,
        )
        dpt = dict(
            dim_in=2 * embed_dim,
            features=dpt_features,
            out_channels=tuple(dpt_out_channels),
            intermediate_layer_idx=tuple(intermediate_layer_idx),
        )
        return cls(
            aggregator=agg,
            camera_head=cam,
            depth_head=DPTHeadConfig(**dpt),
            point_head=DPTHeadConfig(output_dim=4, activation="inv_log", **dpt) if point_head else None,
        )

    # ------------------------------------------------------------------------------ (de)serialise
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VGGTConfig:
        """Inverse of :meth:`to_dict`; unknown fields are an error (no silent ignoring)."""
        d = dict(d)
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown VGGTConfig fields: {sorted(unknown)}")
        agg = dict(d.get("aggregator") or {})
        if "patch_embed" in agg:
            agg["patch_embed"] = _make(DinoConfig, agg["patch_embed"])
        kwargs: dict[str, Any] = {"aggregator": _make(AggregatorConfig, agg)}
        for name, kind in (("camera_head", CameraHeadConfig), ("depth_head", DPTHeadConfig)):
            if name in d:
                kwargs[name] = None if d[name] is None else _make(kind, d[name])
        if "point_head" in d:
            kwargs["point_head"] = None if d["point_head"] is None else _make(DPTHeadConfig, d["point_head"])
        return cls(**kwargs)


def _make(kind, values: Mapping[str, Any]):
    if isinstance(values, kind):
        return values
    names = {f.name for f in dataclasses.fields(kind)}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"unknown {kind.__name__} fields: {sorted(unknown)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return kind(**values)


def default_dpt_layers(depth: int) -> tuple[int, int, int, int]:
    """The DPT input layers at VGGT-1B's relative depths: (4, 11, 17, 23) for 24 blocks, (0, 1, 2, 3)
    for 4, (1, 3, 5, 7) for 8."""
    return tuple(max(0, round(depth * f) - 1) for f in (5 / 24, 12 / 24, 18 / 24, 1.0))  # type: ignore[return-value]


# --------------------------------------------------------------------------- reference configs
def from_reference_config(ref: Mapping[str, Any]) -> VGGTConfig:
    """Map a reference constructor dump (the parity folder's ``vggt_small_config.json``: per-module
    kwargs of the facebookresearch/vggt classes) to a :class:`VGGTConfig`.

    Fixed behaviour is checked, not configured: a dump asking for something this implementation does
    not do (other interpolation policy, aa_order, pose encoding, …) raises.
    """
    pe = ref["patch_embed"]["kwargs"]
    ag = ref["aggregator"]["kwargs"]
    _expect(pe, {"interpolate_antialias": True, "interpolate_offset": 0.0, "ffn_layer": "mlp"}, "patch_embed")
    _expect(ag, {"aa_order": ["frame", "global"], "aa_block_size": 1}, "aggregator")
    dino = DinoConfig(
        img_size=pe["img_size"],
        patch_size=pe["patch_size"],
        embed_dim=pe["embed_dim"],
        depth=pe["depth"],
        num_heads=pe["num_heads"],
        mlp_ratio=float(pe["mlp_ratio"]),
        num_register_tokens=pe["num_register_tokens"],
        layer_scale_init=float(pe["init_values"]),
        qkv_bias=pe.get("qkv_bias", True),
        proj_bias=pe.get("proj_bias", True),
        ffn_bias=pe.get("ffn_bias", True),
    )
    agg = AggregatorConfig(
        img_size=ag["img_size"],
        patch_size=ag["patch_size"],
        embed_dim=ag["embed_dim"],
        depth=ag["depth"],
        num_heads=ag["num_heads"],
        mlp_ratio=float(ag["mlp_ratio"]),
        num_register_tokens=ag["num_register_tokens"],
        qkv_bias=ag["qkv_bias"],
        proj_bias=ag["proj_bias"],
        ffn_bias=ag["ffn_bias"],
        qk_norm=ag["qk_norm"],
        rope_freq=float(ag["rope_freq"]),
        layer_scale_init=float(ag["init_values"]),
        patch_embed=dino,
    )
    cam = None
    if ref.get("camera_head"):
        ck = ref["camera_head"]["kwargs"]
        _expect(ck, {"pose_encoding_type": "absT_quaR_FoV"}, "camera_head")
        cam = CameraHeadConfig(
            dim_in=ck["dim_in"],
            trunk_depth=ck["trunk_depth"],
            num_heads=ck["num_heads"],
            mlp_ratio=float(ck["mlp_ratio"]),
            layer_scale_init=float(ck["init_values"]),
            num_iterations=ref["camera_head"].get("num_iterations", 4),
            trans_act=ck["trans_act"],
            quat_act=ck["quat_act"],
            fl_act=ck["fl_act"],
        )

    def dpt(entry):
        if not entry:
            return None
        k = entry["kwargs"]
        return DPTHeadConfig(
            dim_in=k["dim_in"],
            patch_size=k["patch_size"],
            output_dim=k["output_dim"],
            activation=k["activation"],
            conf_activation=k["conf_activation"],
            features=k["features"],
            out_channels=tuple(k["out_channels"]),
            intermediate_layer_idx=tuple(k["intermediate_layer_idx"]),
            pos_embed=k["pos_embed"],
        )

    return VGGTConfig(
        aggregator=agg,
        camera_head=cam,
        depth_head=dpt(ref.get("depth_head")),
        point_head=dpt(ref.get("point_head")),
    )


def _expect(kwargs: Mapping[str, Any], fixed: Mapping[str, Any], where: str) -> None:
    for key, value in fixed.items():
        if key in kwargs and kwargs[key] != value:
            raise ValueError(
                f"{where}.{key}={kwargs[key]!r} is not supported (this implementation: {value!r})"
            )
