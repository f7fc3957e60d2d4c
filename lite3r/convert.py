"""Lite3R conversion: swap dense attention for sparse-linear attention at named sites.

The sites come from the model itself (``model.attention_sites()``: VGGT ``dino``/``frame``/``global``/
``camera``, DA3 ``per_view``/``cross_view``/``camera_encoder``), never from class-name matching. By
default only the cross-view trunk sites are converted (VGGT ``global``, DA3 ``cross_view``), where the
attention cost grows with the square of the number of views. The pretrained qkv / qk-norm / proj
weights and RoPE are reused as they are; each converted module gains one ``proj_lin``.

The ``compat`` mode converts every site to the published Lite3R token top-k attention so the authors'
checkpoints load (their extra keys ``*.attn.proj_lin.weight`` and ``*.attn.lam``) and run as trained.

:class:`Lite3RConfig` is flat (its SLA fields mirror :class:`lite3r.attention.sla.SLAConfig`) so it
reads and writes as one YAML/JSON mapping in training configs and adapters.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from lite3r.attention.dense import MultiHeadAttention
from lite3r.attention.sla import SLAConfig, SparseLinearAttention, tma_capable
from lite3r.errors import UnsupportedError

_DEFAULT_KEEP = {"block": 0.1, "token_topk": 0.3}
_log = logging.getLogger(__name__)

# Fields of Lite3RConfig that choose how the same maths runs (speed / memory of Triton inference), not
# what was trained: they are not saved with adapters, and an adapter that recorded one (saved before
# this rule) does not pin it (lite3r.adapters.load_adapter).
RUNTIME_FIELDS = ("complement_states", "key_loads")


@dataclass(frozen=True)
class Lite3RConfig:
    """What to convert and how. ``None`` fields take the documented defaults."""

    # Site names from model.attention_sites(); None → the cross-view trunk sites (every site in compat).
    sites: tuple[str, ...] | None = None
    compat: bool = False  # published token top-k formulation (method.md A2.4) instead of block SLA
    keep_ratio: float | None = None  # None → 0.1 (block) / 0.3 (compat); or give top_k_blocks
    top_k_blocks: int | None = None
    block_q: int = 128
    block_k: int = 64
    feature_map: str = "elu"
    linear: str = "complement"
    proj_init: str = "normal"
    proj_init_std: float = 1e-3
    keep_special_tokens: bool = True
    eps: float = 1e-6
    # Triton inference of the complement branch: "summed" / "stored" / "recomputed" (see SLAConfig).
    # Same maths, a runtime choice (RUNTIME_FIELDS): not saved with adapters.
    complement_states: str = "summed"
    # Triton inference key loads: "gather" / "tma" (see SLAConfig); None → chosen at conversion: "tma"
    # on a Hopper-class GPU when the complement states are summed (the TMA kernel's only complement
    # path), else "gather" (the engine asks for "gather" when a memory option is on:
    # lite3r.engine.policy.apply_attention). A runtime choice (RUNTIME_FIELDS).
    key_loads: str | None = None
    # "triton" | "torch"; None → chosen once at conversion from the model's device (CUDA → triton)
    # and recorded in every module's SLAConfig and in the conversion report.
    backend: str | None = None

    def __post_init__(self) -> None:
        if self.sites is not None:
            if isinstance(self.sites, str):
                raise ValueError("Lite3RConfig.sites is a list of site names, not a string")
            object.__setattr__(self, "sites", tuple(self.sites))
        if self.compat:
            fixed = (
                "top_k_blocks",
                "block_q",
                "block_k",
                "feature_map",
                "linear",
                "keep_special_tokens",
                "eps",
                "complement_states",
                "key_loads",
            )
            defaults = {f.name: f.default for f in dataclasses.fields(self)}
            changed = [n for n in fixed if getattr(self, n) != defaults[n]]
            if self.backend not in (None, "torch"):
                changed.append("backend")
            if changed:
                raise UnsupportedError(
                    f"the compat (token top-k) mode fixes {', '.join(changed)}",
                    "leave them at their defaults, or set compat=False",
                )
        self.sla_config("torch")  # validate the SLA fields now, not at conversion

    def sla_config(self, backend: str, key_loads: str | None = None) -> SLAConfig:
        """The per-module :class:`SLAConfig` for ``backend`` (``key_loads``: the resolved choice when
        ``self.key_loads`` is None; "gather" if neither is given)."""
        if self.compat:
            return SLAConfig.token_topk(self.keep_ratio if self.keep_ratio is not None else 0.3)
        keep = self.keep_ratio
        if keep is None and self.top_k_blocks is None:
            keep = _DEFAULT_KEEP["block"]
        return SLAConfig(
            mode="block",
            keep_ratio=keep,
            top_k_blocks=self.top_k_blocks,
            block_q=self.block_q,
            block_k=self.block_k,
            feature_map=self.feature_map,
            linear=self.linear,
            proj_init=self.proj_init,
            proj_init_std=self.proj_init_std,
            keep_special_tokens=self.keep_special_tokens,
            eps=self.eps,
            backend=backend,
            complement_states=self.complement_states,
            key_loads=self.key_loads or key_loads or "gather",
        )

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if d["sites"] is not None:
            d["sites"] = list(d["sites"])
        return d

    def runtime_path(self) -> str:
        """Which complement-state path Triton inference runs, for logs and reports."""
        if self.compat or self.linear != "complement":
            return "no complement states"
        return f"complement states {self.complement_states}"


@dataclass(frozen=True)
class SiteConversion:
    site: str
    modules: int  # converted attention modules at this site
    total_modules: int
    trainable_params: int  # proj_lin parameters added
    special_tokens_per_frame: int
    config: str  # SLAConfig.describe() of the site's modules


@dataclass(frozen=True)
class ConversionReport:
    """What :func:`convert` changed; derived from the model, so it is always current."""

    sites: list[SiteConversion] = field(default_factory=list)

    @property
    def converted(self) -> int:
        return sum(s.modules for s in self.sites)

    @property
    def trainable_params(self) -> int:
        return sum(s.trainable_params for s in self.sites)

    def description(self) -> str:
        """One line for the app / CLI summary, e.g. 'SLA triton · 10% kept · … — global ×24'."""
        if not self.converted:
            return "dense (no SLA site converted)"
        configs = sorted({s.config for s in self.sites if s.modules})
        where = ", ".join(f"{s.site} ×{s.modules}" for s in self.sites if s.modules)
        return f"{' / '.join(configs)} — {where} (dense below 2 key blocks)"

    def table(self) -> str:
        lines = [
            "| site | converted | special tokens/frame | proj_lin params | attention |",
            "|---|---|---|---|---|",
        ]
        for s in self.sites:
            lines.append(
                f"| {s.site} | {s.modules}/{s.total_modules} | {s.special_tokens_per_frame} | "
                f"{s.trainable_params:,} | {s.config} |"
            )
        return "\n".join(lines)


def _sites(model: nn.Module) -> dict:
    if not hasattr(model, "attention_sites"):
        raise UnsupportedError(
            f"{type(model).__name__} does not declare attention sites",
            "only Lite3R models (VGGT, DA3) can be converted",
        )
    return model.attention_sites()


def _chosen_sites(model: nn.Module, config: Lite3RConfig) -> list:
    sites = _sites(model)
    if config.sites is None:
        names = list(sites) if config.compat else [n for n, s in sites.items() if s.cross_view and s.trunk]
    else:
        names = list(config.sites)
        unknown = [n for n in names if n not in sites]
        if unknown:
            raise UnsupportedError(
                f"unknown attention site(s) {', '.join(unknown)} for {type(model).__name__}",
                f"choose from {', '.join(sites)}",
            )
    return [sites[n] for n in names]


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def default_key_loads(config: Lite3RConfig, backend: str, run_on: torch.device) -> str:
    """TMA key loads where they run (Triton on a Hopper-class GPU) and the config allows them."""
    if config.compat or backend != "triton" or not tma_capable(run_on):
        return "gather"
    if config.linear == "complement" and config.complement_states != "summed":
        return "gather"
    return "tma"


def convert(
    model: nn.Module, config: Lite3RConfig | None = None, *, device: str | torch.device | None = None
) -> nn.Module:
    """Swap the attention at the configured sites for SLA (in place); returns ``model``.

    ``config.backend`` None is resolved once, here, from ``device`` (where the model will run; pass it
    when converting before moving the model) or else the model's current device: CUDA → "triton",
    anything else → "torch". Sets ``model.attention_description`` (the one-line path the engine shows)
    and returns the same model object; :func:`describe_conversion` gives the per-site report.
    """
    config = config or Lite3RConfig()
    run_on = torch.device(device) if device is not None else _model_device(model)
    backend = config.backend or ("triton" if run_on.type == "cuda" else "torch")
    sla = config.sla_config(backend, default_key_loads(config, backend, run_on))
    if backend == "triton":
        _log.info(
            "SLA conversion: Triton inference with %s (key loads: %s)", config.runtime_path(), sla.key_loads
        )
    for site in _chosen_sites(model, config):
        for name in site.modules:
            attn = model.get_submodule(name)
            if isinstance(attn, SparseLinearAttention):
                raise UnsupportedError(f"{name} is already sparse-linear attention", "convert a dense model")
            if not isinstance(attn, MultiHeadAttention):
                raise UnsupportedError(f"{name} is a {type(attn).__name__}, not a MultiHeadAttention")
            new = SparseLinearAttention.from_dense(attn, sla, site.special_tokens_per_frame)
            parent_name, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, leaf, new)
    model.attention_description = describe_conversion(model).description()
    return model


def describe_conversion(model: nn.Module) -> ConversionReport:
    """Per site: how many modules are SLA, their trainable proj_lin parameters, their config."""
    rows = []
    for name, site in _sites(model).items():
        mods = [model.get_submodule(m) for m in site.modules]
        sla = [m for m in mods if isinstance(m, SparseLinearAttention)]
        params = sum(
            p.numel()
            for m in sla
            if m.proj_lin is not None
            for p in m.proj_lin.parameters()
            if p.requires_grad
        )
        configs = sorted({m.config.describe() for m in sla})
        rows.append(
            SiteConversion(
                site=name,
                modules=len(sla),
                total_modules=len(mods),
                trainable_params=params,
                special_tokens_per_frame=site.special_tokens_per_frame,
                config=" / ".join(configs) if configs else "dense",
            )
        )
    return ConversionReport(rows)


__all__ = [
    "RUNTIME_FIELDS",
    "ConversionReport",
    "Lite3RConfig",
    "SiteConversion",
    "convert",
    "default_key_loads",
    "describe_conversion",
]
