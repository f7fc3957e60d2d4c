"""What a Lite3R adapter file says about itself, read without torch (for the GUI's model list).

An adapter is a ``.safetensors`` file whose JSON header carries ``__metadata__`` (written by
:func:`lite3r.adapters.save_adapter`): the base model, the conversion (sites, kept fraction), the
training step. :mod:`lite3r.adapters` reads the same fields but imports torch, which the GUI must not.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from lite3r.errors import CheckpointError

ADAPTER_FORMAT = "lite3r-adapter"


@dataclass(frozen=True)
class AdapterInfo:
    path: Path
    base_model: str
    conversion: dict
    step: int

    @property
    def keep_ratio(self) -> float | None:
        v = self.conversion.get("keep_ratio")
        return None if v is None else float(v)

    @property
    def name(self) -> str:
        parent = self.path.parent.name
        return f"{parent}/{self.path.stem}" if self.path.stem == "adapter" and parent else self.path.stem


def read_adapter_info(path: str | os.PathLike) -> AdapterInfo:
    """Header-only read; a CheckpointError naming the file when it is not a Lite3R adapter."""
    path = Path(path)
    fix = "choose the adapter.safetensors written by a Lite3R training run"
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError("file too short")
            n = int.from_bytes(head, "little")
            if n <= 0 or n > 100_000_000:
                raise ValueError("not a safetensors header")
            meta = json.loads(f.read(n)).get("__metadata__") or {}
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path}: no such adapter file", fix) from exc
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable adapter ({exc})", fix) from exc
    if meta.get("format") != ADAPTER_FORMAT:
        raise CheckpointError(f"{path}: not a Lite3R adapter (format {meta.get('format')!r})", fix)
    try:
        return AdapterInfo(
            path, meta["base_model"], json.loads(meta.get("conversion", "{}")), int(meta.get("step", 0))
        )
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{path}: adapter metadata is incomplete ({exc})", fix) from exc
