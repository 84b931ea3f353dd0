"""Summaries of load steps: latency percentiles, throughput, errors, and the generator's own cost."""

from __future__ import annotations

import math
from collections import Counter

from bench.loadgen import Outcome, StepResult

SUSTAINED_P99_MS = 100.0


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile; ``inf`` values (failed requests) sort last."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def is_ok(outcome: Outcome, token_in_body: bool = False) -> bool:
    if outcome.error or outcome.status != 200:
        return False
    return not token_in_body or f"#{outcome.token}".encode() in outcome.body


def summarize_step(result: StepResult, *, token_in_body: bool = False) -> dict:
    """Percentiles count failed requests as infinitely slow, so a step with >1% failures has p99 = inf."""
    outcomes = result.outcomes
    ok = [o for o in outcomes if is_ok(o, token_in_body)]
    latencies_ms = [o.latency * 1000 if is_ok(o, token_in_body) else math.inf for o in outcomes]
    span = (max(o.done for o in outcomes) - min(o.sent for o in outcomes)) if outcomes else 0.0
    summary = {
        "offered_rps": result.rate,
        "requests": len(outcomes),
        "ok": len(ok),
        "errors": len(outcomes) - len(ok),
        "timeouts": sum(1 for o in outcomes if o.error == "TimeoutError"),
        "error_kinds": dict(Counter(o.error or f"HTTP {o.status}" for o in outcomes if not is_ok(o, token_in_body))),
        "achieved_rps": len(ok) / span if span > 0 else 0.0,
        "p50_ms": percentile(latencies_ms, 50),
        "p95_ms": percentile(latencies_ms, 95),
        "p99_ms": percentile(latencies_ms, 99),
        "max_ms": max(latencies_ms) if latencies_ms else math.nan,
        "over_1s": sum(1 for v in latencies_ms if v > 1000),
        "over_15s": sum(1 for v in latencies_ms if v > 15000),
        "lag_p99_ms": percentile([o.lag * 1000 for o in outcomes], 99),
        "generator_cpu_us_per_request": 1e6 * result.generator_cpu_seconds / max(1, len(outcomes)),
        "generator_core_share": result.generator_cpu_seconds / result.wall_seconds if result.wall_seconds else 0.0,
        "connections_opened": result.connections_opened,
    }
    summary["sustained"] = summary["errors"] == 0 and summary["p99_ms"] < SUSTAINED_P99_MS
    return summary


def overhead_summary(overheads_ms: list[float], expected: int) -> dict:
    """End-to-end latency minus the injected upstream latency; unanswered messages count as inf."""
    values = overheads_ms + [math.inf] * max(0, expected - len(overheads_ms))
    return {"messages": expected, "answered": len(overheads_ms), "p50_ms": percentile(values, 50),
            "p95_ms": percentile(values, 95), "p99_ms": percentile(values, 99),
            "max_ms": max(values) if values else math.nan}


def highest_sustained(steps: list[dict]) -> float:
    """The highest offered rate whose step (and every lower one) kept p99 under 100 ms without errors."""
    best = 0.0
    for step in sorted(steps, key=lambda s: s["offered_rps"]):
        if not step["sustained"]:
            break
        best = step["offered_rps"]
    return best
