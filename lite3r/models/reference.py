"""Reference-format parity cases (the format of ``shared/parity``) run through the Lite3R models.

A parity folder holds, per model, ``<name>_config.json`` (the reference constructor arguments and the
cases), ``<name>_state_dict.safetensors`` and ``<name>_io.safetensors`` with tensors named
``<case>.<group>.<name>`` (groups ``input``, ``output``, ``derived``, ``inter``).

- :func:`build` (config → model), :func:`outputs` (model, case entry, inputs → {saved name without the
  case prefix: tensor}) dispatch on the config's family through :data:`FAMILIES`; a family is added
  with :func:`register_family` (DA3: ``register_family(Family("da3", detect, build, outputs, rules))``).
- :func:`check_cases` runs every case of a folder and compares every saved output / derived /
  intermediate tensor with the acceptance rule |got − exp| ≤ 1e-4·|exp| + 1e-4·max|exp| (integers and
  shapes exact).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lite3r.models.loading import VGGT_RULES, CheckpointRules, LoadReport, build_and_load

RTOL = 1e-4  # × |exp|
STOL = 1e-4  # × max|exp| (the tensor's scale)


@dataclass(frozen=True)
class Family:
    name: str
    detect: Callable[[Mapping], bool]  # does a reference config describe this family?
    build: Callable[[Mapping], nn.Module]
    outputs: Callable[[nn.Module, Mapping, Mapping[str, torch.Tensor]], dict[str, torch.Tensor]]
    rules: CheckpointRules  # how its state-dict files load


FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> None:
    FAMILIES[family.name] = family


def family_of(config: Mapping) -> Family:
    from lite3r.models.registry import import_optional_families

    import_optional_families()
    for fam in FAMILIES.values():
        if fam.detect(config):
            return fam
    raise ValueError(f"no model family recognises this reference config (keys: {sorted(config)})")


def build(config: Mapping) -> nn.Module:
    """A Lite3R model with the reference config's sizes (randomly initialised, eval mode)."""
    return family_of(config).build(config).eval()


def outputs(model: nn.Module, case: Mapping, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Run one case: ``case`` is the config's case entry, ``inputs`` its ``input.*`` tensors without
    the case prefix (e.g. ``input.images``). Returns saved names without the case prefix
    (``output.depth``, ``derived.extrinsic``, ``inter.aggregated.0``, …)."""
    from lite3r.models.registry import import_optional_families

    import_optional_families()
    for fam in FAMILIES.values():
        if getattr(model, "family", None) == fam.name:
            with torch.no_grad():
                return fam.outputs(model, case, inputs)
    raise ValueError(f"no reference family for model {type(model).__name__}")


def load(config: Mapping, state_dict_path: str | Path, strict: bool = True) -> tuple[nn.Module, LoadReport]:
    """Build from a reference config and load its state-dict file with the family's checked loader."""
    fam = family_of(config)
    return build_and_load(lambda: fam.build(config), state_dict_path, fam.rules, strict=strict)


# ------------------------------------------------------------------------------------------ VGGT
def _is_vggt(config: Mapping) -> bool:
    return "aggregator" in config and "patch_embed" in config


def _build_vggt(config: Mapping) -> nn.Module:
    from lite3r.models.vggt import VGGT, from_reference_config

    return VGGT(from_reference_config(config))


def _vggt_outputs(model, case: Mapping, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from lite3r.geometry import pose_encoding_to_extri_intri, unproject_depth

    images = inputs["input.images"]
    captured = {}
    hook = model.aggregator.patch_embed.register_forward_hook(lambda m, i, o: captured.__setitem__("p", o))
    try:
        feats = model.encode(images, layers="all")
    finally:
        hook.remove()
    pred = model.predict(feats, images)
    out = {"inter.patch_tokens": captured["p"]}
    out.update({f"inter.aggregated.{i}": t for i, t in sorted(feats.layers.items())})
    for key in ("pose_enc", "depth", "depth_conf", "world_points", "world_points_conf"):
        if key in pred:
            out[f"output.{key}"] = pred[key]
    if "pose_enc_list" in pred:
        out["output.pose_enc_list"] = torch.stack(pred["pose_enc_list"])
    if "pose_enc" in pred:
        ext, intr = pose_encoding_to_extri_intri(pred["pose_enc"], tuple(images.shape[-2:]))
        out["derived.extrinsic"], out["derived.intrinsic"] = ext, intr
        if "depth" in pred:
            out["derived.points_from_depth"] = unproject_depth(pred["depth"], ext, intr)
    return out


register_family(Family("vggt", _is_vggt, _build_vggt, _vggt_outputs, VGGT_RULES))


# ------------------------------------------------------------------------------------- comparison
@dataclass(frozen=True)
class TensorCheck:
    case: str
    name: str  # saved name without the case prefix
    ok: bool
    detail: str  # shape mismatch / not produced / dtype
    max_abs: float = 0.0  # max |got − exp|
    scale: float = 0.0  # max |exp|
    worst_ratio: float = 0.0  # max over elements of |got − exp| / (1e-4·|exp| + 1e-4·max|exp|); ≤ 1 passes

    @property
    def rel_to_scale(self) -> float:
        return self.max_abs / self.scale if self.scale else self.max_abs


def compare(got: torch.Tensor, exp: torch.Tensor) -> tuple[bool, str, float, float, float]:
    """The acceptance rule for one tensor → (ok, detail, max_abs, scale, worst_ratio)."""
    if tuple(got.shape) != tuple(exp.shape):
        return False, f"shape {tuple(got.shape)} != expected {tuple(exp.shape)}", 0.0, 0.0, float("inf")
    if not exp.is_floating_point():
        equal = torch.equal(got.to(exp.dtype), exp)
        return equal, "" if equal else "integer values differ", 0.0, 0.0, 0.0 if equal else float("inf")
    g, e = got.detach().double().cpu(), exp.double()
    diff = (g - e).abs()
    scale = e.abs().max().item() if e.numel() else 0.0
    bound = RTOL * e.abs() + STOL * scale
    ratio = (diff / bound.clamp_min(1e-300)).max().item() if e.numel() else 0.0
    finite = bool(torch.isfinite(g).all())
    ok = finite and bool((diff <= bound).all())
    return ok, "" if finite else "non-finite values", diff.max().item() if e.numel() else 0.0, scale, ratio


def check_cases(
    config_path: str | Path, state_dict_path: str | Path, io_path: str | Path
) -> tuple[list[TensorCheck], LoadReport]:
    """Load the reference model strictly, run every case and compare every saved non-input tensor."""
    from safetensors import safe_open

    config = json.loads(Path(config_path).read_text())
    model, report = load(config, state_dict_path, strict=True)
    results: list[TensorCheck] = []
    with safe_open(str(io_path), framework="pt") as f:
        saved = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    for case_name, case in config["cases"].items():
        prefix = f"{case_name}."
        mine = {k[len(prefix) :]: v for k, v in saved.items() if k.startswith(prefix)}
        inputs = {k: v for k, v in mine.items() if k.startswith("input.")}
        got = outputs(model, case, inputs)
        for name, exp in sorted(mine.items()):
            if name.startswith("input."):
                continue
            if name not in got:
                results.append(TensorCheck(case_name, name, False, "not produced by the model"))
                continue
            ok, detail, max_abs, scale, ratio = compare(got[name], exp)
            results.append(TensorCheck(case_name, name, ok, detail, max_abs, scale, ratio))
    return results, report


def format_results(results: list[TensorCheck]) -> str:
    lines = [f"{'case':8} {'tensor':32} {'ok':3} {'max|Δ|/max|exp|':>16} {'worst/tol':>10}"]
    for r in results:
        lines.append(
            f"{r.case:8} {r.name:32} {'yes' if r.ok else 'NO':3} {r.rel_to_scale:16.3e} {r.worst_ratio:10.3g} {r.detail}"
        )
    return "\n".join(lines)
