"""``lite3r`` command line: reconstruct, info, eval, bench, train.

Each sub-command lives in its own module (listed in COMMANDS) exposing ``add_arguments(parser)`` and
``run(args) -> int``. User errors (:class:`lite3r.errors.Lite3RError`) print one line and exit non-zero.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from lite3r import __version__
from lite3r.errors import Lite3RError

COMMANDS: dict[str, tuple[str, str]] = {
    "reconstruct": ("lite3r.commands.reconstruct", "photos → point cloud (PLY), cameras (COLMAP)"),
    "info": ("lite3r.commands.info", "device, capabilities, models and where their weights go"),
    "eval": ("lite3r.eval.cli", "evaluate a model variant on a dataset or the synthetic test split"),
    "bench": ("lite3r.eval.bench", "latency / peak-memory sweep over frame counts, dense vs Lite3R"),
    "train": ("lite3r.training.cli", "distil a Lite3R adapter (runs the training worker in-process)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lite3r", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"lite3r {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        mod = importlib.import_module(module)
        p = sub.add_parser(name, help=help_text, description=(mod.__doc__ or help_text).strip())
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "_run", None):
        parser.print_help()
        return 1
    try:
        return int(args._run(args) or 0)
    except Lite3RError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"fix: {exc.hint}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("cancelled", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
