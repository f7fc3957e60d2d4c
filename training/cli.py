"""``lite3r train``: distil a Lite3R adapter from a dense backbone (runs the training worker in-process).

    lite3r train --config run.yaml            # new run; writes config.yaml, adapter.safetensors, resume.pt, log.jsonl
    lite3r train --config run.yaml --resume   # continue bit for bit from <output_dir>/resume.pt
    lite3r train --print-config > run.yaml    # a complete default config to edit

Ctrl-C (or SIGTERM) stops at the next step boundary after saving a checkpoint (exit code 3); a second
Ctrl-C aborts at once. ``--json`` prints the worker's JSON events instead of readable lines.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="run config (YAML)")
    parser.add_argument(
        "--resume",
        nargs="?",
        const="",
        default=None,
        metavar="PATH",
        help="continue from a resume checkpoint (default: <output_dir>/resume.pt)",
    )
    parser.add_argument("--output-dir", help="override output_dir from the config")
    parser.add_argument("--steps", type=int, help="override steps from the config")
    parser.add_argument("--json", action="store_true", help="print JSON events (the worker protocol)")
    parser.add_argument("--print-config", action="store_true", help="print the default config and exit")


def _readable(event: dict) -> str:
    kind = event["event"]
    if kind == "started":
        return (
            f"started {event['model']} on {event['device']} ×{event['world_size']}: "
            f"{event['trainable_parameters']:,} trainable of {event['total_parameters']:,} parameters; "
            f"converted {event['converted_sites']}, distilled {event['distilled_sites']}"
        )
    if kind == "step":
        terms = " ".join(f"{k}={v:.4g}" for k, v in event["terms"].items())
        return (
            f"step {event['step']}/{event['total']} loss={event['loss']:.4g} {terms} "
            f"lr={event['lr']:.3g} {event['steps_per_s']:.2f} it/s eta {event['eta_s']:.0f}s"
        )
    if kind == "eval":
        return f"eval @{event['step']}: " + " ".join(f"{k}={v:.4g}" for k, v in event["metrics"].items())
    if kind == "checkpoint":
        return f"checkpoint @{event['step']}: {event['path']}"
    if kind == "finished":
        return f"finished at step {event['step']}: adapter {event['adapter']}"
    if kind == "cancelled":
        return f"cancelled at step {event['step']}; resume with --resume ({event['checkpoint']})"
    return json.dumps(event)


def run(args: argparse.Namespace) -> int:
    from lite3r.errors import InputError

    from .config import DistillRunConfig
    from .ddp import init_distributed, shutdown
    from .distill import RESUME_FILE, run_distillation
    from .worker import StopFlag

    if args.print_config:
        sys.stdout.write(DistillRunConfig().to_yaml())
        return 0
    if not args.config:
        raise InputError("lite3r train needs --config FILE", hint="start from `lite3r train --print-config`")
    cfg = DistillRunConfig.load(args.config)
    if args.output_dir:
        cfg.output_dir = args.output_dir
    if args.steps is not None:
        cfg.steps = args.steps
    cfg.validate(args.config)
    resume = None
    if args.resume is not None:
        resume = args.resume or f"{cfg.output_dir}/{RESUME_FILE}"

    flag = StopFlag()

    def on_signal(signum, _frame):
        if flag():
            raise KeyboardInterrupt
        flag.set(signal.Signals(signum).name)
        print("stopping after this step (press Ctrl-C again to abort now)", file=sys.stderr)

    def emit(event: dict) -> None:
        print(json.dumps(event, default=float) if args.json else _readable(event), flush=True)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    info = init_distributed(cfg.device)
    try:
        result = run_distillation(cfg, emit=emit, should_stop=flag, resume=resume, dist_info=info)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        shutdown(info)
    return 3 if result.status == "cancelled" else 0
