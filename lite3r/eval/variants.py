"""Declarative model variants for ``lite3r eval`` and ``lite3r bench``, and how they are built.

A variant is written ``LABEL[:TOKEN…]``, e.g. ``dense:bf16`` or ``lite3r:fp8:sla0.1:compile``:

* ``fp32`` / ``bf16`` / ``fp8`` — precision (default bf16);
* ``dense`` / ``sla`` / ``sla<keep>`` (``sla0.1``) / ``keep=<f>`` — attention. Default: ``sla`` when the
  label starts with ``lite3r``, else ``dense`` (the resolved value is always recorded);
* ``adapter=<path>`` — a trained Lite3R adapter (implies sla);
* ``compile`` / ``compile=<mode>`` (none, default, max-autotune-no-cudagraphs, reduce-overhead) and ``cudagraphs``
  (= compile=reduce-overhead, torch.compile's CUDA-graph mode);
* ``sdpa=<backend>`` (auto, cudnn, flash, efficient, math) for the dense attention kernel;
* ``chunk=<n>`` — frames per head chunk (default 8);
* ``feat=native|fp8`` — storage of the trunk features kept for the heads (default native; fp8 stores
  them per-token FP8 and dequantises per head chunk);
* ``mlpchunk=<n>`` — run every trunk MLP on at most n tokens at a time (default: unchunked);
* ``heads=fp32|bf16`` — precision of the DPT heads (default fp32; the camera head stays fp32);
* ``qk=torch|triton`` — qk-norm + RoPE as PyTorch ops or the fused Triton kernel (default: the
  engine's, triton on CUDA);
* ``keys=tma|gather`` — how the SLA forward reads the selected key blocks (``SLAConfig.key_loads``;
  default: tma on Hopper-class GPUs, gather when a memory option (feat=fp8, mlpchunk) is on: gather
  saves one K- and V-sized buffer per global layer).

Every variant of one run uses the same base model and weights; the engine (``Reconstructor``) applies
precision (``lite3r.quant.precision``), attention (``lite3r.convert``) and compile settings.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

from lite3r.errors import InputError

PRECISIONS = ("fp32", "bf16", "fp8")
HEAD_PRECISIONS = ("fp32", "bf16")  # = lite3r.quant.precision.HEAD_PRECISIONS (test checks)
from lite3r.engine.policy import COMPILE_MODES  # noqa: E402  (one list for engine, CLI and bench)

SDPA_BACKENDS = ("auto", "cudnn", "flash", "efficient", "math")
FEATURE_STORAGES = ("native", "fp8")  # = lite3r.quant.fp8_features.FEATURE_STORAGES (test checks)
_SLA_RE = re.compile(r"^sla(\d*\.?\d+)?$")


@dataclass(frozen=True)
class VariantSpec:
    label: str
    precision: str = "bf16"
    attention: str = "dense"
    keep: float | None = None
    adapter: str | None = None
    compile: str = "none"
    sdpa_backend: str | None = None
    frames_chunk_size: int = 8
    text: str = ""
    feature_storage: str = "native"
    mlp_chunk_tokens: int | None = None
    head_precision: str = "fp32"
    qk_kernel: str | None = None
    key_loads: str | None = None

    def sla_config(self):
        """The ``lite3r.convert.Lite3RConfig`` for a bare conversion (None: dense, or an adapter, whose
        own conversion config is used)."""
        if self.attention != "sla" or self.adapter is not None:
            return None
        from lite3r.convert import Lite3RConfig

        return Lite3RConfig(keep_ratio=self.keep, key_loads=self.key_loads)

    def to_dict(self) -> dict:
        return asdict(self)


def parse_variant(text: str) -> VariantSpec:
    """Parse ``LABEL[:TOKEN…]`` (see module doc); unknown tokens raise InputError naming the token."""
    parts = [p.strip() for p in text.split(":")]
    label = parts[0]
    if not label:
        raise InputError(f"variant {text!r} has no label", "write e.g. dense:bf16 or lite3r:fp8:sla0.1")
    precision, attention, keep, adapter, compile_mode, sdpa, chunk = "bf16", None, None, None, "none", None, 8
    feature_storage, mlp_chunk, heads, qk, keys = "native", None, "fp32", None, None
    for tok in parts[1:]:
        key, _, val = tok.partition("=")
        if tok in PRECISIONS:
            precision = tok
        elif tok == "dense":
            attention = "dense"
        elif m := _SLA_RE.match(tok):
            attention = "sla"
            if m.group(1):
                keep = float(m.group(1))
        elif key == "keep" and val:
            attention, keep = "sla", float(val)
        elif key == "adapter" and val:
            attention, adapter = "sla", val
        elif tok == "compile":
            compile_mode = "default"
        elif key == "compile" and val in COMPILE_MODES:
            compile_mode = val
        elif tok == "cudagraphs":
            compile_mode = "reduce-overhead"
        elif key == "sdpa" and val in SDPA_BACKENDS:
            sdpa = val
        elif key == "chunk" and val.isdigit() and int(val) > 0:
            chunk = int(val)
        elif key == "feat" and val in FEATURE_STORAGES:
            feature_storage = val
        elif key == "mlpchunk" and val.isdigit() and int(val) > 0:
            mlp_chunk = int(val)
        elif key == "heads" and val in HEAD_PRECISIONS:
            heads = val
        elif key == "qk" and val in ("torch", "triton"):
            qk = val
        elif key == "keys" and val in ("tma", "gather"):
            keys = val
        else:
            raise InputError(
                f"unknown token {tok!r} in variant {text!r}",
                "tokens: fp32|bf16|fp8, dense|sla|sla<keep>|keep=F|adapter=PATH, compile[=MODE]|cudagraphs, "
                "sdpa=BACKEND, chunk=N, feat=native|fp8, mlpchunk=N, heads=fp32|bf16, qk=torch|triton, "
                "keys=tma|gather",
            )
    if attention is None:
        attention = "sla" if label.lower().startswith("lite3r") else "dense"
    if keep is not None and not 0 < keep <= 1:
        raise InputError(f"variant {text!r}: keep must be in (0, 1], got {keep}")
    if adapter is not None and not Path(adapter).is_file():
        raise InputError(f"variant {text!r}: adapter file {adapter} not found", "check the adapter= path")
    return VariantSpec(
        label,
        precision,
        attention,
        keep,
        adapter,
        compile_mode,
        sdpa,
        chunk,
        text,
        feature_storage,
        mlp_chunk,
        heads,
        qk,
        keys,
    )


def parse_variants(texts: list[str] | None, default: str = "dense:bf16") -> list[VariantSpec]:
    specs = [parse_variant(t) for t in (texts or [default])]
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise InputError(f"variant labels must differ: {labels}", "give each variant its own label")
    return specs


# ---- models -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSource:
    """Where the base model comes from: a registry name (``vggt-1b``…) or a reference config JSON (the
    parity format, e.g. ``tests/data/parity/vggt_small_config.json``), with weights or random ones."""

    name: str
    weights: str | None = None
    random_weights: bool = False
    seed: int = 0

    @property
    def is_reference_config(self) -> bool:
        return self.name.endswith(".json")

    def describe(self) -> dict:
        return {
            "model": self.name,
            "weights": self.weights or (f"random (seed {self.seed})" if self.random_weights else "default"),
        }


def build_model(source: ModelSource, device):
    """The dense base model on ``device`` (random weights are initialised on the device itself, so a
    billion-parameter model never needs an fp32 copy in host memory). Returns (model, spec_or_None)."""
    import json

    import torch

    if source.is_reference_config:
        from lite3r.models import reference

        path = Path(source.name)
        if not path.is_file():
            raise InputError(
                f"model config {path} not found", "pass a registry name or a reference config JSON"
            )
        cfg = json.loads(path.read_text())
        if source.weights and not source.random_weights:
            model, _ = reference.load(cfg, source.weights)
            return model.to(device), None
        torch.manual_seed(source.seed)
        with torch.device(device):
            model = reference.build(cfg)
        return model, None
    from lite3r.models import registry

    spec = registry.get_spec(source.name)
    if not source.random_weights:
        return registry.load_model(source.name, weights=source.weights, device=device), spec
    if spec.config is None:
        raise InputError(f"{source.name} has no built-in config for random weights", "pass --weights")
    torch.manual_seed(source.seed)
    with torch.device(device):
        model = _family_class(spec.family)(spec.config())
    return model.eval(), spec


def _family_class(family: str):
    if family == "vggt":
        from lite3r.models.vggt import VGGT

        return VGGT
    if family == "da3":
        from lite3r.models.da3.model import DA3

        return DA3
    from lite3r.errors import UnsupportedError

    raise UnsupportedError(f"random-weight construction of the {family} family is not available")


def build_reconstructor(source: ModelSource, variant: VariantSpec, device, input_size: int | None = None):
    """A ``lite3r.engine.Reconstructor`` for one variant (a fresh model: conversions mutate it)."""
    from lite3r.engine.reconstructor import Reconstructor

    model, spec = build_model(source, device)
    attention = variant.attention
    if variant.adapter is not None:
        # The adapter carries its own conversion config and is tied to these exact base weights.
        from lite3r.adapters import base_hash_of, load_adapter
        from lite3r.engine.policy import lean_key_loads, memory_options_on

        lean = memory_options_on(variant.feature_storage, variant.mlp_chunk_tokens)
        key_loads = lean_key_loads(variant.key_loads, lean)  # keys=… applies to adapters too
        model = load_adapter(model, variant.adapter, base_hash_of(model), key_loads=key_loads)
        attention = "dense"  # already converted: the engine only sets the SDPA backend and dtypes
    kwargs = {}
    if spec is not None:
        kwargs = {"preprocess_rule": spec.preprocessing, "input_size": input_size or spec.default_input_size}
    elif input_size is not None:
        kwargs = {"input_size": input_size}
    rc = Reconstructor(
        model,
        precision=variant.precision,
        device=device,
        attention=attention,
        sla=variant.sla_config(),
        compile=variant.compile,
        frames_chunk_size=variant.frames_chunk_size,
        model_name=Path(source.name).stem if source.is_reference_config else source.name,
        sdpa_backend=variant.sdpa_backend,
        feature_storage=variant.feature_storage,
        mlp_chunk_tokens=variant.mlp_chunk_tokens,
        head_precision=variant.head_precision,
        qk_kernel=variant.qk_kernel,
        **kwargs,
    )
    if variant.adapter is not None:  # name the path that runs (the engine saw a converted model)
        desc = getattr(rc.model, "attention_description", None)
        rc.attention = f"{desc() if callable(desc) else desc} · adapter {Path(variant.adapter).name}"
    return rc
