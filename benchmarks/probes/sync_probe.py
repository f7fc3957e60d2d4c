"""Where the host synchronisations of one end-to-end forward come from, by Python call site.

    python benchmarks/probes/sync_probe.py --variant lite3r:fp8:sla0.1 --frames 8 [--out DIR]

Why: the 8-frame profile of the compiled Lite3R FP8 forward (H100, d2c3835) counted 339 ``aten::item``
calls per forward, each of which stalls the host until the GPU catches up, so kernel launches stop
overlapping GPU work. The profiler does not say who calls them. This probe runs the forward eagerly
under a ``TorchDispatchMode`` that records the Python stack (frames inside this repository) of every
op that forces a device-to-host read (``_local_scalar_dense``/``item``, ``nonzero``, ``is_nonzero``,
``equal``), and, for a compiled variant, the same forward under ``torch.profiler(with_stack=True)``
grouped by stack. Writes sync_probe_<label>_f<frames>.json + .md via provenance.
"""

from __future__ import annotations

import argparse
import collections
import sys
import traceback
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from probe_setup import add_model_arguments, build, forward_fn, output_dir
from provenance import markdown_table, write_result

_REPO = str(Path(__file__).resolve().parents[2])
_SYNC_OPS = {"_local_scalar_dense", "item", "nonzero", "is_nonzero", "equal", "allclose"}


def _site() -> str:
    frames = [f for f in traceback.extract_stack()[:-2] if f.filename.startswith(_REPO)]
    frames = [f for f in frames if "sync_probe" not in f.filename][-4:]
    return " <- ".join(f"{Path(f.filename).name}:{f.lineno}:{f.name}" for f in reversed(frames)) or "?"


class _SyncRecorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.sites: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in _SYNC_OPS:
            self.sites[(func.overloadpacket.__name__, _site())] += 1
        return func(*args, **(kwargs or {}))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    add_model_arguments(ap)
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args(argv)
    out = output_dir(args, "profile")
    variant, rc = build(args, args.device)
    fn = forward_fn(rc, args.frames, args.image_size, args.device)
    compiled = variant.compile != "none"
    rows = []
    with torch.inference_mode():
        for _ in range(2):
            fn()
        if not compiled:
            rec = _SyncRecorder()
            with rec:
                fn()
            rows = [
                {"op": op, "calls_per_forward": n, "site": site} for (op, site), n in rec.sites.most_common()
            ]
        else:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU], with_stack=True) as prof:
                fn()
            for e in prof.key_averages(group_by_stack_n=12):
                if any(s in e.key for s in ("aten::item", "_local_scalar_dense", "aten::nonzero")):
                    stack = [s for s in e.stack if "profiler" not in s][:8]
                    rows.append({"op": e.key, "calls_per_forward": e.count, "site": " <- ".join(stack)})
    total = sum(r["calls_per_forward"] for r in rows)
    label = args.variant.split(":")[0]
    result = {"variant": args.variant, "frames": args.frames, "syncs_per_forward": total, "sites": rows}
    table = f"host reads per forward: {total}\n\n" + markdown_table(rows)
    write_result(out / f"sync_probe_{label}_f{args.frames}.json", result, table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
