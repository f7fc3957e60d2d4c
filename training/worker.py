"""Training worker process: ``python -m lite3r.training.worker --config run.yaml [--resume]``.

Runs one distillation and reports on stdout, one JSON object per line (flushed), as the app and the
CLI expect (HELPERS.md, "Worker protocol"):

    {"event": "started", ...}        {"event": "step", "step", "total", "loss", "terms", "lr", "steps_per_s", "eta_s", ...}
    {"event": "eval", "step", "metrics"}      {"event": "checkpoint", "step", "path"}
    {"event": "finished", "step", "adapter"}  (exit 0)
    {"event": "cancelled", "step", "checkpoint"}  (exit 3)
    {"event": "error", "message", "traceback"}    (exit 1)

Cancel: SIGTERM, or a line ``cancel`` on stdin (Windows has no SIGTERM for console processes). The
run stops at the next step boundary, saves a checkpoint, reports ``cancelled`` and exits with 3. All
files are written atomically, so even SIGKILL leaves the last complete checkpoint readable.
Diagnostics (logging, warnings) go to stderr, never to stdout. Under ``torchrun`` every rank trains;
only rank 0 reports and writes. The packaged app calls :func:`main` for ``--worker train``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import traceback
from pathlib import Path

EXIT_OK, EXIT_ERROR, EXIT_CANCELLED = 0, 1, 3


class StopFlag:
    """Set from a signal handler or the stdin reader; read by the training loop between steps."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason: str | None = None

    def set(self, reason: str) -> None:
        self.reason = self.reason or reason
        self._event.set()

    def __call__(self) -> bool:
        return self._event.is_set()


def _watch_stdin(flag: StopFlag, stream) -> None:
    try:
        for line in stream:
            if line.strip().lower() == "cancel":
                flag.set("stdin")
                return
    except (OSError, ValueError):  # stdin closed or not readable: nothing to watch
        return


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lite3r-train-worker", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="run config (YAML); see lite3r.training.config")
    p.add_argument(
        "--resume",
        nargs="?",
        const="",
        default=None,
        metavar="PATH",
        help="continue from a resume checkpoint (default: <output_dir>/resume.pt)",
    )
    p.add_argument("--output-dir", help="override output_dir from the config")
    p.add_argument("--steps", type=int, help="override steps from the config")
    p.add_argument("--no-stdin", action="store_true", help="do not watch stdin for a `cancel` line")
    return p


def main(argv: list[str] | None = None, components=None) -> int:
    """Worker entry point; returns the exit code (0 finished, 1 error, 3 cancelled).

    ``components`` replaces the real models/data (tests only); ``None`` uses the real ones.
    """
    args = build_parser().parse_args(argv)
    out = sys.stdout
    lock = threading.Lock()
    rank0 = int(os.environ.get("RANK", "0")) == 0  # torchrun's contract; read once at start-up

    def emit(event: dict) -> None:
        if not rank0:
            return
        with lock:
            out.write(json.dumps(event, default=float) + "\n")
            out.flush()

    flag = StopFlag()
    previous = signal.signal(signal.SIGTERM, lambda *_: flag.set("SIGTERM"))
    if not args.no_stdin and sys.stdin is not None and not sys.stdin.isatty():
        threading.Thread(target=_watch_stdin, args=(flag, sys.stdin), daemon=True).start()
    info = None
    try:
        from .config import DistillRunConfig
        from .ddp import init_distributed, shutdown
        from .distill import RESUME_FILE, run_distillation

        cfg = DistillRunConfig.load(args.config)
        if args.output_dir:
            cfg.output_dir = args.output_dir
        if args.steps is not None:
            cfg.steps = args.steps
        cfg.validate(args.config)
        if cfg.precision.deterministic:  # cuBLAS reads this when it initialises
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        resume = None
        if args.resume is not None:
            resume = Path(args.resume) if args.resume else Path(cfg.output_dir) / RESUME_FILE
        info = init_distributed(cfg.device)
        result = run_distillation(cfg, components, emit=emit, should_stop=flag, resume=resume, dist_info=info)
        return EXIT_CANCELLED if result.status == "cancelled" else EXIT_OK
    except Exception as exc:
        message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
        hint = getattr(exc, "hint", None)
        event = {"event": "error", "message": message, "traceback": traceback.format_exc()}
        if hint:
            event["hint"] = hint
        emit(event)
        return EXIT_ERROR
    finally:
        signal.signal(signal.SIGTERM, previous)
        if info is not None:
            shutdown(info)


if __name__ == "__main__":
    sys.exit(main())
