"""What the benchmarks share: the summary of repeated measurements on a noisy machine."""

from __future__ import annotations

import statistics


def spread(values: list[float]) -> dict:
    """Median, extremes and quartiles of repeated measurements."""
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "q1": q[0], "q3": q[2]}
