"""Where a kernel's warps stall, from an Nsight Compute report's per-instruction (source page) CSV.

    ncu --profile-from-start off --set full -o rep python benchmarks/probes/sla_forward_ncu.py --frames 64
    ncu --import rep.ncu-rep --page source --print-source sass --csv > rep_sass.csv
    python benchmarks/probes/ncu_stall_summary.py rep_sass.csv [--top 25] [--out FILE.md]

Prints the instructions with the most warp-stall samples (share of all samples and their top three
stall reasons) and the samples summed per opcode: what the kernel waits on, not just how long it takes.
"""

from __future__ import annotations

import argparse
import collections
import csv
import re
from pathlib import Path


def summarize(csv_path: str, top: int = 25) -> str:
    with open(csv_path, newline="") as f:
        rows = list(csv.reader(f))
    head = next(i for i, r in enumerate(rows) if r and r[0] == "Address")
    hdr = rows[head]
    data = [r for r in rows[head + 1 :] if len(r) == len(hdr)]
    i_src, i_all = hdr.index("Source"), hdr.index("Warp Stall Sampling (All Samples)")
    reasons = [i for i, h in enumerate(hdr) if h.startswith("stall_") and "Not Issued" not in h]
    total = sum(float(r[i_all] or 0) for r in data) or 1.0
    lines = [f"{len(data)} SASS instructions, {total:.0f} warp-stall samples", "",
             "| share | instruction | top stall reasons (samples) |", "|---|---|---|"]  # fmt: skip
    for r in sorted(data, key=lambda r: -float(r[i_all] or 0))[:top]:
        why = sorted(((float(r[i] or 0), hdr[i][6:]) for i in reasons), reverse=True)[:3]
        src = re.sub(r"\s+", " ", r[i_src]).strip()
        lines.append(
            f"| {100 * float(r[i_all]) / total:.1f} % | `{src}` | "
            + ", ".join(f"{n} {v:.0f}" for v, n in why if v)
            + " |"
        )
    by_op = collections.Counter()
    for r in data:
        words = [w for w in r[i_src].split() if not w.startswith("@")]
        by_op[words[0].split(".")[0] if words else "?"] += float(r[i_all] or 0)
    lines += [
        "",
        "Samples per opcode: " + ", ".join(f"{k} {100 * v / total:.1f} %" for k, v in by_op.most_common(15)),
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    text = summarize(args.csv, args.top)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
