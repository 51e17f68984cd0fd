"""Latency figures of a demo run: engine stages from /diagnostics, end-to-end from stamps."""

from __future__ import annotations

import numpy as np

STAGE_PREFIX, STAGE_SUFFIX = "time ", " (ms)"


def stage_times(diagnostics) -> dict[str, list[float]]:
    """stage -> per-window mean milliseconds, from the node's /diagnostics messages.

    The node reports each stage's mean over the frames of one diagnostics period; the demo
    sets a short period and paces frames, so a window holds one frame.
    """
    stages: dict[str, list[float]] = {}
    for array in diagnostics:
        for status in array.status:
            for kv in status.values:
                if kv.key.startswith(STAGE_PREFIX) and kv.key.endswith(STAGE_SUFFIX) and kv.value != "n/a":
                    stages.setdefault(kv.key[len(STAGE_PREFIX) : -len(STAGE_SUFFIX)], []).append(float(kv.value))
    return stages


def _row(name: str, values_ms) -> str:
    v = np.asarray(values_ms, dtype=np.float64)
    p50, p90 = np.percentile(v, [50, 90])
    return f"  {name:<28} {p50:>10.1f} {p90:>10.1f} {v.max():>10.1f} {len(v):>6d}"


def latency_table(stages: dict[str, list[float]], end_to_end: dict[str, list[float]]) -> list[str]:
    """Text rows: p50 / p90 / max milliseconds per engine stage and per output topic."""
    header = f"  {'':<28} {'p50 ms':>10} {'p90 ms':>10} {'max ms':>10} {'n':>6}"
    lines = ["Engine stages (node /diagnostics):", header]
    # 'total' last: it is the sum of the others.
    for name in sorted(stages, key=lambda s: (s == "total", s)):
        lines.append(_row(name, stages[name]))
    if not stages:
        lines.append("  (no stage times reported)")
    lines += ["End-to-end latency, image stamp -> output received:", header]
    for topic, values in end_to_end.items():
        if values:
            lines.append(_row(topic, values))
    return lines
