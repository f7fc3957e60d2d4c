"""Model registry: the backbones a user can pick, where their weights come from, how to load them.

``load_model(name, weights=None, strict=True, device="cpu")`` resolves the weights — an explicit file,
folder or HF repo id; else the default path; else a Hugging Face download — and builds the model
with the family's loader. A missing file gives a :class:`WeightsNotFoundError` with the URL, the
default path and the ``--weights`` hint.

Extension point: a family registers its loader in :data:`LOADERS` (``"da3": load_da3``) and its
:class:`ModelSpec` in :data:`MODELS` (``"da3-large"``) — see :func:`register`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lite3r.errors import UnsupportedError
from lite3r.models.loading import hub_url, load_vggt, resolve_weights, weights_not_found

WEIGHTS_HOME = Path.home() / ".cache" / "lite3r" / "weights"


@dataclass(frozen=True)
class ModelSpec:
    name: str  # registry key, e.g. "vggt-1b"
    family: str  # "vggt" | "da3"
    display_name: str
    hf_repo_id: str | None  # None: bundled weights only
    hf_filename: str
    default_input_size: int  # pixels (VGGT: width 518, DA3: longest side 504)
    preprocessing: str  # a rule name of lite3r.io.preprocess.RULES
    licence: str
    config: Callable[[], Any] | None = None  # → the family's config object; None: from the weights folder
    default_weights: Path | None = None  # where a downloaded/trained file is looked for first
    bundled: bool = False  # weights ship with Lite3R (assets/)

    @property
    def weights_url(self) -> str | None:
        return hub_url(self.hf_repo_id, self.hf_filename) if self.hf_repo_id else None

    @property
    def default_weights_path(self) -> Path:
        return self.default_weights or WEIGHTS_HOME / self.name / self.hf_filename


def _vggt_1b_config():
    from lite3r.models.vggt.config import VGGTConfig

    return VGGTConfig.vggt_1b()


def _tiny_folder() -> Path:
    from lite3r.assets import asset_path

    return Path(str(asset_path("lite3r-tiny")))


MODELS: dict[str, ModelSpec] = {}
# family → loader(path_or_repo_id, config, strict, device, default_path) → model
LOADERS: dict[str, Callable[..., torch.nn.Module]] = {"vggt": load_vggt}


def register(spec: ModelSpec, loader: Callable[..., torch.nn.Module] | None = None) -> None:
    """Add a model (and its family's loader the first time)."""
    if loader is not None:
        LOADERS[spec.family] = loader
    MODELS[spec.name] = spec


register(
    ModelSpec(
        name="vggt-1b",
        family="vggt",
        display_name="VGGT-1B",
        hf_repo_id="facebook/VGGT-1B",
        hf_filename="model.safetensors",
        default_input_size=518,
        preprocessing="vggt_crop",
        licence="VGGT licence (non-commercial); facebook/VGGT-1B-Commercial for commercial use",
        config=_vggt_1b_config,
    )
)
register(
    ModelSpec(
        name="lite3r-tiny",
        family="vggt",
        display_name="Lite3R-tiny (bundled)",
        hf_repo_id=None,
        hf_filename="model.safetensors",
        default_input_size=224,
        preprocessing="vggt_crop",
        licence="Apache-2.0",
        config=None,  # assets/lite3r-tiny/config.json, written with the weights by VGGT.save_pretrained
        bundled=True,
    )
)
# "da3-large" is registered by lite3r.models.da3 (family "da3", hf_repo_id "depth-anything/DA3-LARGE-1.1",
# preprocessing "da3_upper_bound_resize", input 504, CC BY-NC 4.0) together with its loader.


def get_spec(name: str) -> ModelSpec:
    import_optional_families()
    if name not in MODELS:
        raise UnsupportedError(f"unknown model {name!r}", hint=f"choose one of {', '.join(sorted(MODELS))}")
    return MODELS[name]


OPTIONAL_FAMILIES = ("lite3r.models.da3",)


def import_optional_families() -> None:
    """Families other than VGGT register themselves when their package is imported: the package's
    ``__init__`` calls :func:`register` (spec + loader) and ``lite3r.models.reference.register_family``.
    Called before every lookup, so users never need to import them."""
    import importlib
    import importlib.util

    for module in OPTIONAL_FAMILIES:
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module)


def load_model(
    name: str,
    weights: str | os.PathLike | None = None,
    strict: bool = True,
    device: str | torch.device = "cpu",
) -> torch.nn.Module:
    """Build registry model ``name`` with its weights on ``device`` (eval mode, ``.load_report``).

    ``weights``: a checkpoint file, a folder, or a HF repo id; default: the spec's default path if it
    exists, else its HF repo (downloaded when online), else :class:`WeightsNotFoundError`.
    """
    spec = get_spec(name)
    if spec.family not in LOADERS:
        raise UnsupportedError(f"no loader for the {spec.family} family ({name})")
    loader = LOADERS[spec.family]
    config = spec.config() if (spec.config is not None and weights is None) else None
    if weights is not None:
        source: str | os.PathLike = weights
    elif spec.bundled:
        folder = _tiny_folder() if name == "lite3r-tiny" else spec.default_weights_path.parent
        if not (folder / spec.hf_filename).is_file():
            raise weights_not_found(
                None,
                spec.hf_filename,
                folder / spec.hf_filename,
                spec.display_name,
                reason="the bundled weights are not in this installation (not trained/packaged yet)",
            )
        source = folder
    elif spec.default_weights_path.is_file():
        source = spec.default_weights_path
    elif spec.hf_repo_id:
        source = resolve_weights(
            spec.hf_repo_id,
            spec.hf_filename,
            default_path=spec.default_weights_path,
            model_name=spec.display_name,
        )
    else:
        raise weights_not_found(None, spec.hf_filename, spec.default_weights_path, spec.display_name)
    return loader(source, config=config, strict=strict, device=device, default_path=spec.default_weights_path)
