"""Lite3R adapters: the few trained tensors of a conversion, tied to the exact base weights.

A distillation run changes only the SLA ``proj_lin`` matrices (≈0.1–0.4 M parameters), so the
checkpoint the engine needs is the base model's weights plus an *adapter*: a ``.safetensors`` file of
the trained tensors whose JSON metadata carries everything needed to rebuild the student — the
conversion config (sites, keep ratio, block size, …), the precision policy it was trained for, the
whole run config, and the SHA-256 of the base weights. :func:`load_adapter` converts a dense model
per that config and loads the tensors; it refuses an adapter made for different base weights.

Files are written atomically (temporary file in the same folder + ``os.replace``): a killed process
leaves either the previous file or the new one, never a torn one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lite3r.errors import CheckpointError

ADAPTER_FORMAT = "lite3r-adapter"
ADAPTER_VERSION = 1

_log = logging.getLogger(__name__)

_FILE_PREFIX = "sha256-file:"  # hash of the base weights file, byte for byte
_STATE_PREFIX = "sha256-state:"  # hash of the base state dict (random-weight bases)


# ---- atomic files ----------------------------------------------------------------------------------
def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    try:  # make the rename itself durable (not possible on every platform)
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---- base-model hashes -----------------------------------------------------------------------------
def hash_weights_file(path: str | os.PathLike, chunk_bytes: int = 1 << 24) -> str:
    """SHA-256 of a base weights file (what an adapter made from those weights records)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(chunk_bytes):
                h.update(block)
    except OSError as exc:
        raise CheckpointError(f"cannot read the base weights {path}: {exc.strerror}") from exc
    return _FILE_PREFIX + h.hexdigest()


def hash_state_dict(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over (name, dtype, shape, bytes) of every tensor, in sorted-name order.

    Used for bases without a weights file (random initialisation): the same seed and config give the
    same hash on any machine, since the bytes are those of the CPU tensors.
    """
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return _STATE_PREFIX + h.hexdigest()


_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def base_hash_of(model: nn.Module) -> str:
    """The base hash for a model as loaded: the hash of the weights file its loader read
    (``model.load_report.source``, cached by path/size/mtime), else of its state dict (random
    weights — compute it before any dtype cast or conversion)."""
    source = getattr(getattr(model, "load_report", None), "source", None)
    if source and os.path.isfile(source):
        st = os.stat(source)
        key = (os.path.realpath(source), st.st_size, st.st_mtime_ns)
        if key not in _FILE_HASHES:
            _FILE_HASHES[key] = hash_weights_file(source)
        return _FILE_HASHES[key]
    return hash_state_dict(model.state_dict())


# ---- the adapter file ------------------------------------------------------------------------------
@dataclass
class Adapter:
    tensors: dict[str, torch.Tensor]
    conversion: dict[str, Any]  # lite3r.convert.Lite3RConfig fields
    base_model: str  # registry name of the base (e.g. "lite3r-tiny")
    base_hash: str  # hash_weights_file(...) or hash_state_dict(...) of the base
    precision: dict[str, Any] = field(default_factory=dict)  # the precision policy it was trained for
    config: dict[str, Any] = field(default_factory=dict)  # the whole run config
    step: int = 0
    path: Path | None = None

    @property
    def num_parameters(self) -> int:
        return sum(t.numel() for t in self.tensors.values())


def save_adapter(
    path: str | os.PathLike,
    tensors: dict[str, torch.Tensor],
    *,
    conversion: dict[str, Any],
    base_model: str,
    base_hash: str,
    precision: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    step: int = 0,
) -> Path:
    """Write an adapter (.safetensors + JSON metadata) atomically; returns the path.

    The conversion's runtime-only fields (``lite3r.convert.RUNTIME_FIELDS``: how the same maths runs,
    e.g. ``complement_states``) are left out: an adapter records what was trained, and the inference
    path is chosen where it runs."""
    from safetensors.torch import save

    from lite3r.convert import RUNTIME_FIELDS

    conversion = {k: v for k, v in conversion.items() if k not in RUNTIME_FIELDS}

    if not tensors:
        raise ValueError("an adapter needs at least one tensor")
    if not base_hash.startswith((_FILE_PREFIX, _STATE_PREFIX)):
        raise ValueError(f"base_hash must come from hash_weights_file or hash_state_dict, got {base_hash!r}")
    metadata = {
        "format": ADAPTER_FORMAT,
        "format_version": str(ADAPTER_VERSION),
        "base_model": base_model,
        "base_hash": base_hash,
        "conversion": json.dumps(conversion, sort_keys=True),
        "precision": json.dumps(precision or {}, sort_keys=True),
        "config": json.dumps(config or {}, sort_keys=True),
        "step": str(int(step)),
    }
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in sorted(tensors.items())}
    return atomic_write_bytes(path, save(cpu, metadata=metadata))


def read_adapter(path: str | os.PathLike) -> Adapter:
    """Read and check an adapter file; any problem is a CheckpointError naming the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    fix = "pass the .safetensors adapter written by `lite3r train` (…/adapter.safetensors)"
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise CheckpointError(f"adapter {path} does not exist", hint=fix) from exc
    except OSError as exc:
        raise CheckpointError(f"cannot read the adapter {path}: {exc.strerror}", hint=fix) from exc
    try:
        tensors = load(data)
        metadata = _safetensors_metadata(data)
    except (SafetensorError, ValueError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc})", hint=fix) from exc
    if metadata.get("format") != ADAPTER_FORMAT:
        raise CheckpointError(f"{path} is a safetensors file but not a Lite3R adapter", hint=fix)
    version = int(metadata.get("format_version", "0"))
    if version > ADAPTER_VERSION:
        raise CheckpointError(
            f"{path} is adapter format v{version}; this Lite3R reads up to v{ADAPTER_VERSION}",
            hint="upgrade lite3r",
        )
    try:
        return Adapter(
            tensors=tensors,
            conversion=json.loads(metadata["conversion"]),
            base_model=metadata["base_model"],
            base_hash=metadata["base_hash"],
            precision=json.loads(metadata.get("precision", "{}")),
            config=json.loads(metadata.get("config", "{}")),
            step=int(metadata.get("step", "0")),
            path=path,
        )
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{path}: adapter metadata is incomplete ({exc})", hint=fix) from exc


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    # Header layout: 8-byte little-endian length, then the JSON header ("__metadata__" holds ours).
    if len(data) < 8:
        raise ValueError("file too short")
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    return header.get("__metadata__", {}) or {}


def load_adapter(
    model: nn.Module,
    path: str | os.PathLike,
    base_hash: str | None = None,
    device: str | torch.device | None = None,
    *,
    complement_states: str | None = None,
    key_loads: str | None = None,
) -> nn.Module:
    """Convert dense ``model`` per the adapter's conversion config and load the trained tensors.

    ``base_hash`` is the hash of the weights ``model`` was loaded from (:func:`hash_weights_file`, or
    :func:`hash_state_dict` for a random-weight base); None → :func:`base_hash_of` (``model``). An
    adapter made for other weights is refused: its tensors were fitted to those weights and would
    silently degrade these. ``device`` is where the model will run (passed to the conversion, which
    picks the SLA backend from it; default: the model's current device). ``complement_states``: the
    SLA inference path to run ("summed" / "stored" / "recomputed", same maths); None → the current
    default, whatever an older adapter recorded (it is a runtime choice, not part of what was trained).
    ``key_loads``: "tma" / "gather" for the SLA forward (None → the conversion's choice for the device).
    Logs the path that runs. Returns the converted model.
    """
    adapter = read_adapter(path)
    if base_hash is None:
        base_hash = base_hash_of(model)
    if adapter.base_hash != base_hash:
        raise CheckpointError(
            f"adapter {adapter.path} was trained on a different base model "
            f"({adapter.base_model}, {adapter.base_hash[:28]}…) than the weights loaded "
            f"({base_hash[:28]}…)",
            hint=f"load it with the exact {adapter.base_model} weights it was distilled from, "
            "or distil a new adapter for these weights",
        )
    from lite3r.convert import RUNTIME_FIELDS, Lite3RConfig, convert

    conversion = dict(adapter.conversion)
    recorded = {k: conversion.pop(k) for k in RUNTIME_FIELDS if k in conversion}
    if complement_states is not None:
        conversion["complement_states"] = complement_states
    if key_loads is not None:
        conversion["key_loads"] = key_loads
    config = Lite3RConfig(**conversion)
    if complement_states is not None:
        why = "asked for"
    elif recorded:
        saved = ", ".join(f"{k}={v!r}" for k, v in recorded.items())
        why = f"the default; the adapter's recorded {saved} is a runtime choice and is not applied"
    else:
        why = "the default"
    _log.info("adapter %s: SLA inference with %s (%s)", adapter.path, config.runtime_path(), why)
    converted = convert(model, config, device=device)
    model = converted if isinstance(converted, nn.Module) else model
    apply_adapter_tensors(model, adapter)
    return model


def apply_adapter_tensors(model: nn.Module, adapter: Adapter) -> None:
    """Copy the adapter's tensors into an already-converted model (names and shapes must match)."""
    state = model.state_dict()
    missing = sorted(k for k in adapter.tensors if k not in state)
    if missing:
        raise CheckpointError(
            f"adapter {adapter.path} has {len(missing)} tensor(s) the converted model lacks "
            f"(first: {missing[0]})",
            hint="the adapter was made for another model or conversion config",
        )
    for name, tensor in adapter.tensors.items():
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"adapter {adapter.path}: {name} has shape {tuple(tensor.shape)}, "
                f"the model expects {tuple(state[name].shape)}",
                hint="the adapter was made for another model size",
            )
    with torch.no_grad():
        for name, tensor in adapter.tensors.items():
            state[name].copy_(tensor)
