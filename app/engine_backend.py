"""The inference worker's backend: the Lite3R engine behind the app's requests (imports torch).

Runs inside the worker process only (:mod:`lite3r.app.worker`), never in the GUI. Keeps the last
:class:`~lite3r.engine.Reconstructor` (model loaded, precision and attention applied) so repeated runs
with the same settings skip the load, and answers ``capabilities`` with what this device can run —
the reasons come from :func:`lite3r.quant.precision.precision_support`.

Development models: ``dev_models={"parity-vggt": "tests/data/parity"}`` makes a reduced-size VGGT from
a parity folder (``vggt_small_config.json`` + state dict) available under that name, for tests and
for development before the bundled lite3r-tiny weights exist.
"""

from __future__ import annotations

import logging
from pathlib import Path

from lite3r.errors import UnsupportedError

log = logging.getLogger(__name__)
REGISTRY_MODELS = ("lite3r-tiny", "vggt-1b", "da3-large")
DEV_INPUT_SIZE = 224  # width of the model input for dev (parity) models


class EngineBackend:
    def __init__(self, threads: int = 0, dev_models: dict[str, str] | None = None) -> None:
        import torch

        if threads:
            torch.set_num_threads(int(threads))
        self.dev_models = {k: Path(v) for k, v in (dev_models or {}).items()}
        self._key = None
        self._rc = None

    # ---- device ------------------------------------------------------------------------------------

    @staticmethod
    def resolve_device(requested: str = "auto") -> str:
        import torch

        if requested == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return requested

    @staticmethod
    def describe_device(device: str) -> str:
        import torch

        if device.startswith("cuda"):
            return f"{device} · {torch.cuda.get_device_name(torch.device(device))}"
        return f"cpu · {torch.get_num_threads()} threads"

    # ---- capabilities ------------------------------------------------------------------------------

    def capabilities(self) -> dict:
        device = self.resolve_device("auto")
        return {
            "device": self.describe_device(device),
            "device_type": device.split(":")[0],
            "precision": self.precision_support(device),
            "models": {**self.registry_status(), **self.dev_status()},
        }

    @staticmethod
    def precision_support(device: str) -> dict:
        from lite3r.quant.precision import precision_support

        return {
            p: {"ok": bool(ok), "reason": reason} for p, (ok, reason) in precision_support(device).items()
        }

    @staticmethod
    def registry_status() -> dict:
        from lite3r.models import registry

        out = {}
        for name in REGISTRY_MODELS:
            try:
                spec = registry.get_spec(name)
            except UnsupportedError as exc:
                out[name] = {
                    "weights_found": False,
                    "weights_path": None,
                    "available": False,
                    "hint": f"{name} is not available in this build ({exc.message})",
                }
                continue
            path, found = _weights_location(spec)
            hint = None
            if not found:
                if spec.bundled:
                    hint = (
                        "the bundled weights are not in this installation; set a weights file in Preferences"
                    )
                else:
                    hint = (
                        f"download {spec.hf_filename} from {spec.weights_url} to {path}, "
                        "or set its path in Preferences"
                    )
            out[name] = {
                "weights_found": found,
                "weights_path": str(path),
                "available": True,
                "hint": hint,
                "display_name": spec.display_name,
                "licence": spec.licence,
            }
        return out

    def dev_status(self) -> dict:
        out = {}
        for name, folder in self.dev_models.items():
            cfg = folder / "vggt_small_config.json"
            out[name] = {
                "weights_found": cfg.is_file(),
                "weights_path": str(folder),
                "available": True,
                "hint": None if cfg.is_file() else f"{cfg} is missing",
                "display_name": f"{name} (dev)",
                "dev": True,
            }
        return out

    # ---- reconstruction ----------------------------------------------------------------------------

    def reconstructor(self, settings: dict):
        """The engine for these settings (reused while the settings stay the same)."""
        backbone = settings.get("backbone", "lite3r-tiny")
        device = self.resolve_device(settings.get("device", "auto"))
        key = (
            backbone,
            settings.get("weights"),
            settings.get("adapter"),
            settings.get("attention", "dense"),
            float(settings.get("kept_fraction", 0.1)),
            settings.get("precision", "fp32"),
            settings.get("heads_precision", "fp32"),
            device,
        )
        if key == self._key and self._rc is not None:
            return self._rc
        self._rc = self._key = None  # free the previous model before loading the next one
        import gc

        gc.collect()
        from lite3r.engine.reconstructor import Reconstructor

        attention = settings.get("attention", "dense")
        sla = {"keep_ratio": float(settings.get("kept_fraction", 0.1))} if attention == "sla" else None
        adapter = settings.get("adapter")
        common = dict(
            precision=settings.get("precision", "fp32"),
            head_precision=settings.get("heads_precision", "fp32"),
            device=device,
        )
        model, name, kwargs = self._load_model(backbone, settings.get("weights"))
        if adapter:
            # the adapter carries its own conversion and is tied to the exact base weights (checked)
            from lite3r.adapters import base_hash_of, load_adapter

            model = load_adapter(model, adapter, base_hash_of(model))
            rc = Reconstructor(model, model_name=name, attention="dense", **common, **kwargs)
            desc = getattr(rc.model, "attention_description", None)
            rc.attention = f"{desc() if callable(desc) else desc} · adapter {Path(adapter).parent.name}/{Path(adapter).name}"
        else:
            rc = Reconstructor(model, model_name=name, attention=attention, sla=sla, **common, **kwargs)
        self._rc, self._key = rc, key
        return rc

    def _load_model(self, backbone: str, weights: str | None):
        """(model on the CPU, display name, Reconstructor keyword arguments) for a backbone."""
        if backbone in self.dev_models:
            import json

            from lite3r.models import reference

            folder = self.dev_models[backbone]
            config = json.loads((folder / "vggt_small_config.json").read_text())
            model, _report = reference.load(config, folder / "vggt_small_state_dict.safetensors")
            return model, f"{backbone} (dev)", {"preprocess_rule": "vggt_crop", "input_size": DEV_INPUT_SIZE}
        from lite3r.models import registry

        spec = registry.get_spec(backbone)
        model = registry.load_model(backbone, weights=weights, device="cpu")
        return model, backbone, {"preprocess_rule": spec.preprocessing, "input_size": spec.default_input_size}

    def reconstruct(self, images, settings, progress, partial):
        progress("loading the model", 0.0, "")
        rc = self.reconstructor(settings)
        return rc.reconstruct(images, progress=progress, on_partial=partial)


def _weights_location(spec) -> tuple[Path, bool]:
    """Where the registry would take the weights from, and whether they are there (no download)."""
    if spec.bundled:
        from lite3r.assets import asset_path

        path = Path(str(asset_path(spec.name))) / spec.hf_filename
        return path, path.is_file()
    path = spec.default_weights_path
    if path.is_file():
        return path, True
    if spec.hf_repo_id:
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(spec.hf_repo_id, spec.hf_filename)
            if isinstance(cached, str) and Path(cached).is_file():
                return Path(cached), True
        except Exception:  # no cache, offline, old hub version: treat as not found
            pass
    return path, False
