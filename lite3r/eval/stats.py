"""Aggregation over samples: means with percentile-bootstrap confidence intervals, and paired
differences between two variants evaluated on identical samples.

NaN values (a metric undefined for a sample, e.g. depth with < 100 valid pixels) are dropped per
metric, and the count that remains is reported. Bootstrap: ``n_resamples`` resamples of the samples
with replacement (seeded), the CI is the (α/2, 1 − α/2) percentile of the resampled means.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def bootstrap_mean_ci(
    values, n_resamples: int = 10_000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float, float, int]:
    """(mean, ci_low, ci_high, n) of the finite ``values``; NaNs when none are finite."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    v = v[np.isfinite(v)]
    n = int(v.size)
    if n == 0:
        return float("nan"), float("nan"), float("nan"), 0
    mean = float(v.mean())
    if n == 1 or n_resamples <= 0:
        return mean, float("nan"), float("nan"), n
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    chunk = max(1, 2_000_000 // n)
    for a in range(0, n_resamples, chunk):
        b = min(n_resamples, a + chunk)
        means[a:b] = v[rng.integers(0, n, size=(b - a, n))].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return mean, float(lo), float(hi), n


def summarize(
    per_sample: Mapping[str, Mapping[str, float]], n_resamples: int = 10_000, seed: int = 0
) -> dict:
    """{metric: {mean, ci_low, ci_high, median, n}} over samples ({sample_id: {metric: value}})."""
    metrics = sorted({k for flat in per_sample.values() for k in flat})
    out = {}
    for m in metrics:
        vals = np.array([per_sample[s].get(m, np.nan) for s in per_sample], dtype=np.float64)
        mean, lo, hi, n = bootstrap_mean_ci(vals, n_resamples, seed=seed)
        finite = vals[np.isfinite(vals)]
        out[m] = {
            "mean": mean,
            "ci_low": lo,
            "ci_high": hi,
            "median": float(np.median(finite)) if finite.size else float("nan"),
            "n": n,
        }
    return out


def paired_comparison(
    a: Mapping[str, Mapping[str, float]],
    b: Mapping[str, Mapping[str, float]],
    n_resamples: int = 10_000,
    seed: int = 0,
) -> dict:
    """Per metric, the paired difference b − a over samples present (and finite) in both:
    {metric: {mean_a, mean_b, diff, ci_low, ci_high, n}}. The CI is the bootstrap CI of the mean
    difference, so it reflects the pairing (the two variants saw the same views)."""
    common = sorted(set(a) & set(b))
    metrics = sorted({k for s in common for k in a[s]} & {k for s in common for k in b[s]})
    out = {}
    for m in metrics:
        va = np.array([a[s].get(m, np.nan) for s in common], dtype=np.float64)
        vb = np.array([b[s].get(m, np.nan) for s in common], dtype=np.float64)
        ok = np.isfinite(va) & np.isfinite(vb)
        diff, lo, hi, n = bootstrap_mean_ci(vb[ok] - va[ok], n_resamples, seed=seed)
        out[m] = {
            "mean_a": float(va[ok].mean()) if n else float("nan"),
            "mean_b": float(vb[ok].mean()) if n else float("nan"),
            "diff": diff,
            "ci_low": lo,
            "ci_high": hi,
            "n": n,
        }
    return out
