"""Step-time statistics: how long a step takes and how much of it waits on data."""
from __future__ import annotations

import statistics


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def step_time_stats(step_s: list[float], data_wait_s: list[float]) -> dict[str, float]:
    """On CUDA a step's host time includes waiting for the previous step's kernels, so per-step figures
    are exact over windows between syncs (every log) and approximate inside them."""
    if not step_s:
        return {}
    return {
        "step_time_mean_s": statistics.fmean(step_s),
        "step_time_p50_s": percentile(step_s, 0.5),
        "step_time_p90_s": percentile(step_s, 0.9),
        "step_time_max_s": max(step_s),
        "data_wait_share": sum(data_wait_s) / max(sum(step_s), 1e-12),
    }
