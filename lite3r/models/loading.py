"""Checked checkpoint loading, shared by every model (architectures.md §3, "Loader rules").

- Formats: ``.safetensors`` (read tensor by tensor with ``safe_open``) and pickled ``.pt`` / ``.pth`` /
  ``.bin`` (``torch.load(weights_only=True, mmap=True)``). Training-format dicts such as the Lite3R
  authors' ``last.pt`` = {"model": state_dict, "optim", "step", "extra"} are unwrapped.
- Key rules (:class:`CheckpointRules`): prefixes stripped when every key has them (DA3 hub ``model.``),
  optional legacy renames, keys dropped on purpose (VGGT ``track_head.*``, ``mask_token``; reported),
  dead keys ignored (the authors' ``*.attn.lam``, ``smooth`` buffers), adapter keys set aside (the
  authors' ``*.attn.proj_lin.weight``, for the conversion layer), checkpoints of the other model
  recognised and refused.
- Strict by default: missing / unexpected keys and shape mismatches raise :class:`CheckpointError`
  listing them; ``strict=False`` loads what matches, keeps the rest initialised, and reports.
- Memory: the model is built on the ``meta`` device, checked against the file's key/shape index,
  materialised on the target device and filled tensor by tensor, so the weights are never held twice.
- Hub: Hugging Face repo ids are downloaded with ``huggingface_hub`` when online; offline (or on any hub
  failure) a :class:`WeightsNotFoundError` says which file to download (URL), where to put it, and that
  ``--weights PATH`` passes it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from lite3r.errors import CheckpointError, InputError, WeightsNotFoundError

log = logging.getLogger(__name__)

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
_WRAPPER_KEYS = ("model", "state_dict", "model_state_dict", "module")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# --------------------------------------------------------------------------------------------- rules
@dataclass(frozen=True)
class CheckpointRules:
    """How a model's checkpoints map onto its state dict."""

    model_name: str  # for messages, e.g. "VGGT"
    strip_prefixes: tuple[str, ...] = ()  # stripped when *every* key carries the prefix
    rename: Callable[[str], str] | None = None  # legacy names → current names (after stripping)
    drop_prefixes: tuple[str, ...] = ()  # present in official files, not built here (reported)
    ignore_patterns: tuple[str, ...] = ()  # regexes of known dead keys (reported, never loaded)
    adapter_patterns: tuple[str, ...] = ()  # regexes of adapter keys, set aside in the report
    # (other model's name, key prefixes that identify its checkpoints)
    foreign: tuple[tuple[str, tuple[str, ...]], ...] = ()


@dataclass
class LoadReport:
    """What a load did; ``summary()`` is one readable paragraph."""

    source: str
    format: str = ""
    unwrapped: str | None = None  # "model" for training-format dicts
    stripped_prefix: str | None = None
    renamed: int = 0
    loaded: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    adapter: dict[str, torch.Tensor] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def problems(self, limit: int = 12) -> str:
        parts = []
        for title, items in (
            ("missing", self.missing),
            ("unexpected", self.unexpected),
            ("wrong shape", [f"{k} (file {list(a)}, model {list(b)})" for k, a, b in self.mismatched]),
        ):
            if items:
                shown = ", ".join(items[:limit]) + (
                    f", … (+{len(items) - limit} more)" if len(items) > limit else ""
                )
                parts.append(f"{len(items)} {title}: {shown}")
        return "; ".join(parts)

    def summary(self) -> str:
        s = f"{self.source}: loaded {len(self.loaded)} tensors"
        if self.unwrapped:
            s += f" (unwrapped '{self.unwrapped}')"
        if self.stripped_prefix:
            s += f", stripped prefix '{self.stripped_prefix}'"
        if self.renamed:
            s += f", renamed {self.renamed} legacy keys"
        if self.dropped:
            s += f", dropped {len(self.dropped)} unused keys ({_prefix_counts(self.dropped)})"
        if self.ignored:
            s += f", ignored {len(self.ignored)} dead keys"
        if self.adapter:
            s += f", set aside {len(self.adapter)} adapter tensors"
        if not self.ok:
            s += f"; {self.problems()}"
        return s


def _prefix_counts(keys: Sequence[str]) -> str:
    counts: dict[str, int] = {}
    for k in keys:
        head = k.split(".")[0] if not k.startswith("aggregator.") else k
        counts[head] = counts.get(head, 0) + 1
    return ", ".join(f"{k}: {n}" if n > 1 else k for k, n in counts.items())


# ------------------------------------------------------------------------------------------ sources
class TensorSource:
    """A lazily read checkpoint: key → shape index, tensors fetched one at a time."""

    def __init__(self, path: Path, fmt: str, shapes: dict[str, tuple[int, ...]], get, unwrapped=None):
        self.path = path
        self.format = fmt
        self.shapes = shapes
        self._get = get
        self.unwrapped = unwrapped

    def get(self, key: str) -> torch.Tensor:
        try:
            return self._get(key)
        except Exception as e:  # a truncated file may only fail here
            raise _corrupt(self.path, e) from e


def _corrupt(path: Path, e: Exception) -> CheckpointError:
    return CheckpointError(
        f"cannot read checkpoint {path}: {type(e).__name__}: {e}",
        hint="the file is truncated or corrupt; download it again",
    )


def open_checkpoint(path: str | os.PathLike) -> TensorSource:
    """Open a ``.safetensors`` or pickled checkpoint without reading every tensor into memory."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsNotFoundError(
            f"checkpoint file not found: {path}", hint="check the path given with --weights"
        )
    if path.suffix in SAFETENSORS_SUFFIXES:
        return _open_safetensors(path)
    if path.suffix in PICKLE_SUFFIXES:
        return _open_pickle(path)
    raise CheckpointError(
        f"unknown checkpoint format: {path}",
        hint=f"use a {' or '.join(SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES)} file",
    )


def _open_safetensors(path: Path) -> TensorSource:
    from safetensors import safe_open

    try:
        f = safe_open(str(path), framework="pt", device="cpu")
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except Exception as e:
        raise _corrupt(path, e) from e
    return TensorSource(path, "safetensors", shapes, f.get_tensor)


def _open_pickle(path: Path) -> TensorSource:
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            # Files in the legacy (pre-zip) torch format cannot be memory-mapped; read them whole.
            log.info("%s: legacy torch format, loading without mmap", path)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise _corrupt(path, e) from e
    state, unwrapped = _unwrap(obj, path)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    return TensorSource(path, "torch", shapes, state.__getitem__, unwrapped)


def _is_state_dict(obj) -> bool:
    return (
        isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())
    )


def _unwrap(obj, path: Path) -> tuple[Mapping[str, torch.Tensor], str | None]:
    if _is_state_dict(obj):
        return obj, None
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            if key in obj and _is_state_dict(obj[key]):
                return obj[key], key
        # A state dict with a few non-tensor entries (e.g. "_metadata", step counters) → tensors only.
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if len(tensors) > len(obj) / 2:
            return tensors, None
        raise CheckpointError(
            f"{path} is not a model state dict (top-level entries: {', '.join(map(str, list(obj)[:8]))})",
            hint="pass a checkpoint holding the model weights (a state dict or {'model': state_dict, ...})",
        )
    raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a model state dict")


# ------------------------------------------------------------------------------------------ checking
def map_keys(source: TensorSource, rules: CheckpointRules, report: LoadReport) -> dict[str, str]:
    """File keys → model keys (prefix stripped, renamed); returns {model_key: file_key}."""
    keys = list(source.shapes)
    for prefix in rules.strip_prefixes:
        if keys and all(k.startswith(prefix) for k in keys):
            report.stripped_prefix = prefix
            break
    mapping: dict[str, str] = {}
    for k in keys:
        new = k[len(report.stripped_prefix) :] if report.stripped_prefix else k
        if rules.rename is not None:
            renamed = rules.rename(new)
            report.renamed += renamed != new
            new = renamed
        if new in mapping:
            raise CheckpointError(f"{source.path}: keys {mapping[new]!r} and {k!r} both map to {new!r}")
        mapping[new] = k
    return mapping


def check_checkpoint(
    expected: Mapping[str, tuple[int, ...]], source: TensorSource, rules: CheckpointRules
) -> tuple[dict[str, str], LoadReport]:
    """Compare a checkpoint's keys/shapes with a model's; returns ({model_key: file_key} to load,
    report). Raises for a checkpoint of another model or one that shares no key with this model."""
    report = LoadReport(source=str(source.path), format=source.format, unwrapped=source.unwrapped)
    mapping = map_keys(source, rules, report)
    _refuse_foreign(mapping, source.path, rules)
    ignore = [re.compile(p) for p in rules.ignore_patterns]
    adapter = [re.compile(p) for p in rules.adapter_patterns]
    to_load: dict[str, str] = {}
    for key, file_key in mapping.items():
        if key in expected:
            got, want = source.shapes[file_key], tuple(expected[key])
            if got == want:
                to_load[key] = file_key
            else:
                report.mismatched.append((key, got, want))
        elif any(key.startswith(p) for p in rules.drop_prefixes):
            report.dropped.append(key)
        elif any(p.search(key) for p in ignore):
            report.ignored.append(key)
        elif any(p.search(key) for p in adapter):
            report.adapter[key] = source.get(file_key)
        else:
            report.unexpected.append(key)
    report.missing = [k for k in expected if k not in mapping]
    if expected and not to_load and not report.mismatched:
        raise CheckpointError(
            f"{source.path} is not a {rules.model_name} checkpoint: none of its {len(mapping)} keys match "
            f"(first keys: {', '.join(list(mapping)[:4])})",
            hint=f"pass a {rules.model_name} checkpoint",
        )
    return to_load, report


def _refuse_foreign(mapping: Mapping[str, str], path: Path, rules: CheckpointRules) -> None:
    for other, prefixes in rules.foreign:
        hits = [k for k in mapping if k.startswith(prefixes)]
        if hits:
            raise CheckpointError(
                f"{path} is a {other} checkpoint (keys such as {hits[0]!r}), not a {rules.model_name} one",
                hint=f"load it with the {other} model, or pass a {rules.model_name} checkpoint",
            )


# ------------------------------------------------------------------------------------------- loading
def reset_constants(model: nn.Module) -> None:
    """Refill non-persistent buffers after ``to_empty`` (modules that own them define
    ``reset_constants()``); a non-persistent buffer without one is a programming error."""
    for name, m in model.named_modules():
        if getattr(m, "_non_persistent_buffers_set", None):
            if not hasattr(m, "reset_constants"):
                raise TypeError(
                    f"{name or type(m).__name__} has non-persistent buffers but no reset_constants()"
                )
            m.reset_constants()


@torch.no_grad()
def copy_into(model: nn.Module, source: TensorSource, to_load: Mapping[str, str]) -> None:
    """Copy tensors one at a time into the model's parameters/buffers (casting dtype, moving device)."""
    targets = model.state_dict(keep_vars=True)
    for key, file_key in to_load.items():
        targets[key].copy_(source.get(file_key))


def build_and_load(
    build: Callable[[], nn.Module],
    checkpoint: str | os.PathLike | TensorSource,
    rules: CheckpointRules,
    strict: bool = True,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, LoadReport]:
    """Build a model (first on ``meta``), check the checkpoint against it, then materialise it on
    ``device`` and fill it tensor by tensor. Strict: raises :class:`CheckpointError` listing every
    missing / unexpected / mis-shaped key. Non-strict: loads the matching keys into a normally
    initialised model and logs a warning. Returns (model in eval mode, report)."""
    source = checkpoint if isinstance(checkpoint, TensorSource) else open_checkpoint(checkpoint)
    with torch.device("meta"):
        model = build()
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    to_load, report = check_checkpoint(expected, source, rules)
    if not report.ok:
        if strict:
            raise CheckpointError(
                f"{source.path} does not match {rules.model_name}: {report.problems()}",
                hint="pass the right checkpoint (and config), or strict=False to load what matches",
            )
        log.warning("non-strict load of %s: %s", source.path, report.problems())
    if report.missing:
        with torch.device(device):
            model = build()  # the tensors missing from the file keep their initialisation
    else:
        model = model.to_empty(device=device)
        reset_constants(model)
    copy_into(model, source, to_load)
    report.loaded = list(to_load)
    log.info("%s", report.summary())
    return model.eval(), report


# ---------------------------------------------------------------------------------------------- hub
def hub_url(repo_id: str, filename: str) -> str:
    return f"https://huggingface.co/{repo_id}/resolve/main/{filename}"


def resolve_weights(
    path_or_repo_id: str | os.PathLike,
    filename: str = "model.safetensors",
    default_path: Path | None = None,
    model_name: str = "",
) -> Path:
    """A local file, a folder holding ``filename``, or a Hugging Face repo id (downloaded when online)
    → a local checkpoint path. Raises :class:`WeightsNotFoundError` with the URL, the default path and
    the ``--weights`` hint when the file is neither on disk nor downloadable."""
    p = Path(path_or_repo_id).expanduser()
    if p.is_file():
        return p
    if p.is_dir():
        for name in (filename, "model.safetensors", "model.pt"):
            if (p / name).is_file():
                return p / name
        raise WeightsNotFoundError(
            f"no {filename} in folder {p}", hint="pass the checkpoint file with --weights PATH"
        )
    text = str(path_or_repo_id)
    if not _REPO_ID.match(text) or p.suffix in SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES:
        raise WeightsNotFoundError(
            f"checkpoint file not found: {p}", hint="check the path given with --weights"
        )
    return download(text, filename, default_path=default_path, model_name=model_name)


def download(repo_id: str, filename: str, default_path: Path | None = None, model_name: str = "") -> Path:
    """``hf_hub_download`` (uses the local hub cache first); any failure → WeightsNotFoundError."""
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import (
            GatedRepoError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
        )
        from huggingface_hub.utils import logging as hf_logging

        hf_logging.set_verbosity_error()  # our one-line error replaces the hub's retry warnings
        return Path(hf_hub_download(repo_id=repo_id, filename=filename))
    except Exception as e:  # offline, DNS, 404, gated repo, … — all end the same way for the user
        if isinstance(e, LocalEntryNotFoundError):
            reason = "offline: no network connection and no copy in the Hugging Face cache"
        elif isinstance(e, GatedRepoError):
            reason = "the repository is gated: accept its licence on huggingface.co and log in"
        elif isinstance(e, RepositoryNotFoundError):
            reason = "repository not found"
        else:
            reason = f"{type(e).__name__}: {e}"
        raise weights_not_found(repo_id, filename, default_path, model_name, reason=reason) from e


def weights_not_found(
    repo_id: str | None, filename: str, default_path: Path | None, model_name: str = "", reason: str = ""
) -> WeightsNotFoundError:
    what = f"{model_name} weights" if model_name else "weights"
    msg = f"{what} not found"
    if repo_id:
        msg += f" and could not be downloaded from Hugging Face ({repo_id}/{filename})"
    if reason:
        msg += f" ({reason.splitlines()[0][:200]})"
    hint = []
    if repo_id:
        hint.append(f"download {hub_url(repo_id, filename)}")
    if default_path is not None:
        hint.append(f"put it at {default_path}")
    hint.append("or pass the file with --weights PATH")
    return WeightsNotFoundError(msg, hint=", ".join(hint))


# ----------------------------------------------------------------------------------------- families
VGGT_RULES = CheckpointRules(
    model_name="VGGT",
    strip_prefixes=("module.",),
    drop_prefixes=("track_head.", "aggregator.patch_embed.mask_token"),
    ignore_patterns=(r"\.attn\.lam$", r"(^|\.)smooth$"),
    adapter_patterns=(r"\.attn\.proj_lin\.weight$",),
    foreign=(
        (
            "Depth-Anything-3 (da3-large)",
            (
                "backbone.pretrained.",
                "model.backbone.",
                "cam_dec.",
                "cam_enc.",
                "head.scratch.",
                "model.head.",
            ),
        ),
    ),
)


def load_vggt(
    path_or_repo_id: str | os.PathLike,
    config=None,
    strict: bool = True,
    device: str | torch.device = "cpu",
    default_path: Path | None = None,
):
    """:meth:`VGGT.from_pretrained`. A folder (or a file with a ``config.json`` beside it) written by
    ``save_pretrained`` brings its config; otherwise ``config`` or VGGT-1B's. When no config is given
    and the file has no ``point_head.*`` (the authors' Lite3R checkpoints), the point head is not
    built (logged)."""
    from lite3r.models.vggt.model import CONFIG_FILE, VGGT

    path = resolve_weights(path_or_repo_id, "model.safetensors", default_path=default_path, model_name="VGGT")
    source = open_checkpoint(path)
    if config is None:
        config = read_vggt_config(path.parent / CONFIG_FILE)
    if config is None:
        config = default_vggt_config()
        keys = map_keys(source, VGGT_RULES, LoadReport(str(path)))
        if not any(k.startswith("point_head.") for k in keys) and any(
            k.startswith("depth_head.") for k in keys
        ):
            log.info("%s has no point_head.* weights: building VGGT without the point head", path)
            config = dataclasses.replace(config, point_head=None)
    model, report = build_and_load(lambda: VGGT(config), source, VGGT_RULES, strict=strict, device=device)
    model.load_report = report
    model.pose_readout = read_pose_readout(path.parent / CONFIG_FILE)
    return model


def read_config_json(path: Path) -> dict | None:
    """A weights folder's ``config.json`` as a dict; None when absent or not a JSON object. A file that
    cannot be read or parsed raises CheckpointError naming it."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from e
    return data if isinstance(data, dict) else None


def read_pose_readout(path: Path):
    """The ``pose_readout`` of our ``config.json`` as a MatchPoseConfig, or None (absent file or key)."""
    from lite3r.models.vggt.match_pose import MatchPoseConfig

    data = read_config_json(path)
    spec = data.get("pose_readout") if data is not None else None
    if spec is None:
        return None
    try:
        return MatchPoseConfig.from_dict(spec)
    except (TypeError, InputError) as e:
        raise CheckpointError(f"{path}: invalid pose_readout {spec}: {e}") from e


def default_vggt_config():
    """The config assumed for a bare VGGT weights file: VGGT-1B."""
    from lite3r.models.vggt.config import VGGTConfig

    return VGGTConfig.vggt_1b()


def read_vggt_config(path: Path):
    """Our ``config.json`` ({"family": "vggt", "config": {...}}), the official hub one
    ({"img_size": 518, "patch_size": 14, "embed_dim": 1024} → VGGT-1B), or None when absent or
    not a VGGT config."""
    from lite3r.models.vggt.config import VGGTConfig

    data = read_config_json(path)
    if data is None:
        return None
    if "family" in data:
        if data["family"] != "vggt":
            raise CheckpointError(f"{path} describes a {data['family']} model, not VGGT")
        return VGGTConfig.from_dict(data["config"])
    official = {"img_size": 518, "patch_size": 14, "embed_dim": 1024}
    flags = {f"enable_{h}" for h in ("camera", "depth", "point", "track")}
    if data and set(data) <= set(official) | flags:
        if any(data.get(k, v) != v for k, v in official.items()):
            raise CheckpointError(f"{path}: VGGT config {data} differs from VGGT-1B, the only official size")
        off = {f"{h}_head": None for h in ("camera", "depth", "point") if data.get(f"enable_{h}") is False}
        return dataclasses.replace(VGGTConfig(), **off)
    return None
