"""What this machine can run: device, precisions and attention paths (with reasons), the models and
where their weights are expected, and where the demo scene lives."""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        default=None,
        help="device to describe (default: cuda if present)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _available(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def collect(device: str | None = None) -> dict:
    """Everything ``lite3r info`` prints, as a dict (the app's About/Settings panel uses it too)."""
    import torch

    import lite3r

    cuda = torch.cuda.is_available()
    dev = device or ("cuda" if cuda else "cpu")
    out: dict = {
        "lite3r": lite3r.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda,
        "device": dev,
    }
    try:
        import triton

        out["triton"] = triton.__version__
    except ImportError:
        out["triton"] = None
    if dev == "cuda":
        if not cuda:
            out["gpu"] = None
            out["gpu_problem"] = "CUDA is not available (no GPU, no driver, or a CPU-only PyTorch)"
        else:
            cap = torch.cuda.get_device_capability()
            props = torch.cuda.get_device_properties(0)
            out["gpu"] = {
                "name": torch.cuda.get_device_name(0),
                "capability": f"{cap[0]}.{cap[1]}",
                "memory_gib": round(props.total_memory / 2**30, 1),
                "count": torch.cuda.device_count(),
                "cudnn": torch.backends.cudnn.version(),
            }
    out["precisions"] = _precisions(dev)
    out["attention"] = _attention(dev)
    out["models"] = _models()
    out["demo"] = _demo()
    return out


def _precisions(dev: str) -> dict:
    if _available("lite3r.quant.precision"):
        from lite3r.quant.precision import precision_support

        return {k: {"supported": ok, "reason": why} for k, (ok, why) in precision_support(dev).items()}
    return {
        "fp32": {"supported": True, "reason": "supported everywhere"},
        "bf16": {"supported": True, "reason": "trunk in bf16, heads in fp32"},
        "fp8": {"supported": False, "reason": "the FP8 precision module is not in this build"},
    }


def _attention(dev: str) -> dict:
    import torch

    gpu = dev == "cuda" and torch.cuda.is_available()
    dense = {
        "supported": True,
        "reason": (
            "cuDNN SDPA for bf16/fp8, memory-efficient SDPA for fp32"
            if gpu and torch.backends.cudnn.is_available()
            else "PyTorch SDPA (CPU)"
            if not gpu
            else "PyTorch SDPA (cuDNN unavailable)"
        ),
    }
    if not _available("lite3r.convert"):
        sla = {
            "supported": False,
            "reason": "the sparse-linear attention module (lite3r.convert) is not in this build",
        }
    elif gpu and not _available("triton"):
        sla = {"supported": False, "reason": "the sparse kernels need Triton, which is not installed"}
    elif gpu:
        sla = {"supported": True, "reason": "Triton block-sparse + linear-attention kernels"}
    else:
        sla = {
            "supported": True,
            "reason": "PyTorch reference implementation on CPU (slow; for checks, not speed)",
        }
    return {"dense": dense, "sla": sla}


def _models() -> list[dict]:
    from lite3r.assets import asset_path
    from lite3r.errors import Lite3RError
    from lite3r.models import registry

    rows = []
    for name in ("vggt-1b", "da3-large", "lite3r-tiny"):
        try:
            spec = registry.get_spec(name)
        except Lite3RError:
            rows.append({"name": name, "available": False, "problem": "not in this build"})
            continue
        if spec.bundled:
            weights = Path(str(asset_path(name))) / spec.hf_filename
        else:
            weights = spec.default_weights_path
        rows.append(
            {
                "name": name,
                "display_name": spec.display_name,
                "family": spec.family,
                "input": f"{spec.preprocessing} @ {spec.default_input_size}",
                "weights_path": str(weights),
                "weights_present": Path(weights).is_file(),
                "hf_repo": f"{spec.hf_repo_id}/{spec.hf_filename}" if spec.hf_repo_id else None,
                "licence": spec.licence,
                "available": True,
            }
        )
    return rows


def _demo() -> dict:
    from lite3r.commands.reconstruct import demo_folder

    folder = demo_folder()
    n = 0
    if folder.is_dir():
        from lite3r.io.images import is_image_file

        n = sum(1 for p in folder.iterdir() if is_image_file(p))
    return {"folder": str(folder), "images": n, "present": n > 0}


def run(args: argparse.Namespace) -> int:
    info = collect(args.device)
    if args.json:
        json.dump(info, sys.stdout, indent=1)
        print()
        return 0
    w = sys.stdout.write
    w(f"lite3r {info['lite3r']} · Python {info['python']} · torch {info['torch']}")
    w(f" · CUDA {info['cuda_runtime']}" if info["cuda_runtime"] else " · CPU-only torch")
    w(f" · triton {info['triton']}\n" if info["triton"] else " · no triton\n")
    if info["device"] == "cuda":
        gpu = info.get("gpu")
        if gpu:
            w(
                f"device: {gpu['name']} (compute capability {gpu['capability']}, {gpu['memory_gib']} GiB, cuDNN {gpu['cudnn']})\n"
            )
        else:
            w(f"device: cuda — {info.get('gpu_problem')}\n")
    else:
        w("device: cpu\n")
    w("precisions:\n")
    for k, v in info["precisions"].items():
        w(f"  {k:<5} {'yes' if v['supported'] else 'no ':<4} {v['reason']}\n")
    w("attention:\n")
    for k, v in info["attention"].items():
        w(f"  {k:<5} {'yes' if v['supported'] else 'no ':<4} {v['reason']}\n")
    w("models:\n")
    for m in info["models"]:
        if not m.get("available"):
            w(f"  {m['name']:<12} — {m.get('problem')}\n")
            continue
        state = "present" if m["weights_present"] else "missing"
        w(f"  {m['name']:<12} {m['display_name']} [{m['input']}] · weights {state}: {m['weights_path']}\n")
        if m["hf_repo"]:
            w(f"  {'':<12} hub: {m['hf_repo']} · licence: {m['licence']}\n")
        else:
            w(f"  {'':<12} bundled · licence: {m['licence']}\n")
    d = info["demo"]
    w(
        f"demo: {d['folder']} ({d['images']} images)\n"
        if d["present"]
        else f"demo: not installed (expected in {d['folder']})\n"
    )
    return 0
