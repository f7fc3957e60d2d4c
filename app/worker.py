"""The app's inference worker: a persistent process that owns torch and the models.

Started lazily by the GUI (``python -m lite3r.app.worker``, or ``lite3r-app --worker inference`` when
frozen); requests arrive on stdin and events leave on stdout as JSON lines (see
:mod:`lite3r.app.protocol`). Results are written as ``.npz`` files with ``Reconstruction.save`` and
only their paths are sent. The process keeps the last model loaded, so a second run on other photos
skips the load. It exits on ``{"cmd": "quit"}`` or when stdin closes (the GUI is gone).

The backend that does the work is chosen by ``--backend module:attr`` (default: the Lite3R engine);
tests pass a fake backend, so the protocol is testable without torch.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import traceback
from pathlib import Path

DEFAULT_BACKEND = "lite3r.app.engine_backend:EngineBackend"
PARTIAL_INTERVAL_S = 1.5  # at most one partial result per interval (each is a file write)


class Emitter:
    """Writes protocol lines to the real stdout; everything else printed goes to stderr.

    Libraries (torch, triton) sometimes print to stdout; that must not corrupt the protocol, so fd 1 is
    pointed at stderr and the protocol keeps a private duplicate of the original stdout.
    """

    def __init__(self) -> None:
        fd = os.dup(1)
        os.dup2(2, 1)
        sys.stdout = sys.stderr
        self._out = os.fdopen(fd, "w", buffering=1, encoding="utf-8")

    def __call__(self, event: str, **fields) -> None:
        self._out.write(json.dumps({"event": event, **fields}, default=_json_default) + "\n")
        self._out.flush()


def _json_default(o):
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:
        pass
    if isinstance(o, Path):
        return str(o)
    return str(o)


def load_backend(spec: str, **kwargs):
    module, _, attr = spec.partition(":")
    obj = getattr(importlib.import_module(module), attr or "Backend")
    return obj(**kwargs)


def error_fields(exc: BaseException) -> dict:
    from lite3r.errors import Lite3RError

    if isinstance(exc, Lite3RError):
        return {
            "kind": type(exc).__name__,
            "message": exc.message,
            "hint": exc.hint,
            "traceback": traceback.format_exc(),
        }
    if isinstance(exc, MemoryError):
        return {
            "kind": "MemoryError",
            "message": "out of memory while reconstructing",
            "hint": "use fewer photos, a lower precision, or the Lite3R attention path",
            "traceback": traceback.format_exc(),
        }
    return {
        "kind": type(exc).__name__,
        "message": f"{type(exc).__name__}: {exc}",
        "hint": None,
        "traceback": traceback.format_exc(),
    }


class Server:
    def __init__(self, backend, emit: Emitter) -> None:
        self.backend = backend
        self.emit = emit

    def handle(self, req: dict) -> bool:
        """Serve one request; False means quit."""
        cmd = req.get("cmd")
        rid = req.get("id")
        if cmd == "quit":
            return False
        try:
            if cmd == "capabilities":
                self.emit("capabilities", id=rid, **self.backend.capabilities())
            elif cmd == "reconstruct":
                self.reconstruct(rid, req)
            elif cmd == "ping":
                self.emit("pong", id=rid)
            else:
                self.emit(
                    "error",
                    id=rid,
                    kind="ProtocolError",
                    message=f"unknown command {cmd!r}",
                    hint=None,
                    traceback="",
                )
        except Exception as exc:  # report, keep serving: the next request may well succeed
            self.emit("error", id=rid, **error_fields(exc))
        return True

    def reconstruct(self, rid, req: dict) -> None:
        out = Path(req["out"])
        out.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        last_partial = [0.0]
        count = [0]

        def progress(stage: str, fraction: float, message: str = "") -> None:
            self.emit(
                "progress",
                id=rid,
                stage=stage,
                fraction=float(fraction),
                message=message,
                elapsed_s=time.perf_counter() - started,
            )

        def partial(recon, stage: str = "") -> None:
            now = time.perf_counter()
            first = count[0] == 0  # the first (cameras) always goes out: it is the earliest picture
            if not first and now - last_partial[0] < PARTIAL_INTERVAL_S:
                return
            last_partial[0] = now
            count[0] += 1
            path = out / f"partial-{rid}-{count[0]}.npz"
            recon.save(path)
            self.emit("partial", id=rid, path=str(path), stage=stage)

        recon = self.backend.reconstruct(req["images"], req.get("settings", {}), progress, partial)
        path = out / f"result-{rid}.npz"
        recon.save(path)
        self.emit("result", id=rid, path=str(path), latency_s=time.perf_counter() - started)

    def serve(self, stdin) -> int:
        for raw in stdin:
            raw = raw.strip()
            if not raw:
                continue
            try:
                req = json.loads(raw)
            except ValueError:
                self.emit(
                    "error",
                    id=None,
                    kind="ProtocolError",
                    message=f"not JSON: {raw[:200]}",
                    hint=None,
                    traceback="",
                )
                continue
            if not self.handle(req):
                break
        return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lite3r-app --worker inference", description=__doc__.splitlines()[0])
    p.add_argument("--backend", default=DEFAULT_BACKEND, help="module:attr of the backend class")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0 = its default)")
    p.add_argument(
        "--dev-model",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="offer a reduced parity model from DIR under NAME (development and tests)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    emit = Emitter()
    kwargs = {"threads": args.threads}
    if args.dev_model:
        kwargs["dev_models"] = dict(item.split("=", 1) for item in args.dev_model)
    try:
        backend = load_backend(args.backend, **kwargs)
    except Exception as exc:
        emit("error", id=None, fatal=True, **error_fields(exc))
        return 1
    emit("ready", pid=os.getpid(), backend=args.backend, python=sys.version.split()[0])
    return Server(backend, emit).serve(sys.stdin)


if __name__ == "__main__":
    sys.exit(main())
