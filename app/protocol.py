"""The app's worker processes: how to start them and how their JSON lines look (Qt-free).

Two kinds of worker run beside the GUI, each in its own process so that torch is never imported by
the GUI and a crash or out-of-memory never takes the window down:

- ``inference``: a persistent server (``python -m lite3r.app.worker``), requests on stdin, events on
  stdout, one JSON object per line. Results travel as ``.npz`` files (``Reconstruction.save/load``).
- ``train``: one job per process (``python -m lite3r.training.worker --config F``), the worker protocol
  of HELPERS.md (started / step / eval / checkpoint / finished / cancelled / error).

In a frozen (PyInstaller) app ``sys.executable`` is the app itself, so both are started as
``lite3r-app --worker inference|train …`` (docs/app.md §4.1).

Inference requests (GUI → worker):
  ``{"cmd": "capabilities", "id": n}`` → ``{"event": "capabilities", "id": n, "device": …,
  "precision": {"fp32": {"ok": true, "reason": null}, …}, "models": {name: {"weights_found": …,
  "weights_path": …, "hint": …}}}``
  ``{"cmd": "reconstruct", "id": n, "images": [...], "settings": {RunSettings}, "out": dir}`` →
  ``progress`` {stage, fraction}, ``partial`` {path, stage}, then ``result`` {path} or ``error``.
  ``{"cmd": "quit"}``.
Events always carry ``event``; replies carry the request ``id``. ``error`` has ``kind`` (the
:mod:`lite3r.errors` class name or the exception type), ``message``, ``hint`` and ``traceback``.
Cancel = the GUI terminates the process (and starts a fresh one when needed).
"""

from __future__ import annotations

import json
import sys

WORKER_MODULES = {
    "inference": "lite3r.app.worker",
    "train": "lite3r.training.worker",
}


def is_frozen() -> bool:
    return bool(getattr(sys, "frozen", False))


def worker_command(kind: str, args: list[str] | None = None) -> tuple[str, list[str]]:
    """(program, arguments) that start a worker of ``kind`` from this process."""
    if kind not in WORKER_MODULES:
        raise ValueError(f"unknown worker kind {kind!r}; choose one of {sorted(WORKER_MODULES)}")
    args = list(args or [])
    if is_frozen():
        return sys.executable, ["--worker", kind, *args]
    return sys.executable, ["-u", "-m", WORKER_MODULES[kind], *args]


def encode(obj: dict) -> bytes:
    return (json.dumps(obj, separators=(",", ":")) + "\n").encode()


def decode(line: bytes | str) -> dict | None:
    """One stdout line → dict, or None when it is not a JSON object (stray prints go to the log)."""
    if isinstance(line, bytes):
        line = line.decode("utf-8", "replace")
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) and "event" in obj else None
