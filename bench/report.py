"""The benchmark's markdown report and its PNG chart (latency against offered load)."""

from __future__ import annotations

import math
import os
from pathlib import Path

NAMES = {"bare": "bare Flask (ceiling)", "gateway": "gateway", "naive": "naive inline design"}


def _ms(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if math.isinf(value):
        return "failed"
    return f"{value:.1f} ms" if value < 1000 else f"{value / 1000:.2f} s"


def _check(passed: bool) -> str:
    return "**met**" if passed else "**not met**"


def _step_at(steps: list[dict], rate: float) -> dict | None:
    return next((s for s in steps if s["offered_rps"] == rate), None)


def targets(results: dict) -> list[tuple[str, str, bool]]:
    """(target, measured, met?) for each of the issue's targets."""
    sweep = results["sweep"]
    bare_probe, gw_probe = sweep["bare"]["probe"]["achieved_rps"], sweep["gateway"]["probe"]["achieved_rps"]
    ratio = gw_probe / bare_probe if bare_probe else 0.0
    at500 = _step_at(sweep["gateway"]["steps"], 500)
    p99_500 = at500["p99_ms"] if at500 else math.inf
    fast = results["e2e_fast"]["gateway_overhead"]
    slow = results["e2e_slow"]
    once = results["exactly_once"]
    return [
        ("webhook throughput >= 60% of bare Flask (closed-loop probe)",
         f"{gw_probe:.0f} vs {bare_probe:.0f} req/s = {100 * ratio:.0f}%; highest sustained (p99 < 100 ms): "
         f"{sweep['gateway']['highest_sustained_rps']:.0f} vs {sweep['bare']['highest_sustained_rps']:.0f} req/s",
         ratio >= 0.6),
        ("webhook p99 <= 15 ms at 500 req/s", _ms(p99_500), p99_500 <= 15),
        ("overhead p50 <= 15 ms, p99 <= 60 ms at 50 msg/s, 100 ms upstream",
         f"p50 {_ms(fast['p50_ms'])}, p99 {_ms(fast['p99_ms'])} ({fast['answered']}/{fast['messages']} answered)",
         fast["p50_ms"] <= 15 and fast["p99_ms"] <= 60),
        ("3 s agent at 20 msg/s: no gateway ack > 1 s; naive p99 > 15 s",
         f"gateway acks > 1 s: {slow['gateway_ack']['over_1s']}, ack p99 {_ms(slow['gateway_ack']['p99_ms'])}; "
         f"naive p99 {_ms(slow['naive_ack']['p99_ms'])}",
         slow["gateway_ack"]["over_1s"] == 0 and slow["naive_ack"]["p99_ms"] > 15000),
        ("every message answered exactly once",
         f"{once['answered_once']}/{once['acknowledged']} once, {once['missing_count']} not answered by the end "
         f"of the run, {once['doubled_count']} doubled", once["missing_count"] == 0 and once["doubled_count"] == 0),
    ]


def generator_note(results: dict) -> str:
    steps = results["sweep"]["bare"]["steps"]
    probe = results["sweep"]["bare"]["probe"]
    top = max(steps, key=lambda s: s["offered_rps"])
    per_request = min(s["generator_cpu_us_per_request"] for s in steps)
    return (f"Load generator: {top['generator_cpu_us_per_request']:.0f} us CPU per request at "
            f"{top['offered_rps']:.0f} req/s ({100 * top['generator_core_share']:.0f}% of one core; lowest "
            f"{per_request:.0f} us/req, i.e. about {1e6 / per_request:.0f} req/s per core open-loop), send lag p99 "
            f"{max(s['lag_p99_ms'] for s in steps):.1f} ms; in the closed-loop probe of bare Flask "
            f"({probe['achieved_rps']:.0f} req/s) it used {100 * probe['generator_core_share']:.0f}% of one core. "
            "It shares the 2 cores with everything else, so the highest rates are a whole-machine limit.")


def markdown(results: dict) -> str:
    lines = [f"# Benchmark ({results['mode']} mode, {results['workers']} worker processes, "
             f"{results['seconds']:.0f} s)", "", f"Tree: {results.get('commit', 'unknown')}. "
             f"Web command (Procfile): `{results['web_command']}` "
             "(with ./gunicorn.conf.py, for all three apps)", "",
             f"Machine: {os.cpu_count()} cores; 1-minute load average before the run "
             f"{results['load_average_before']:.1f} (anything above 0 is other work competing for the cores).", "",
             "## Targets", "", "| target | measured | |", "|---|---|---|"]
    lines += [f"| {name} | {measured} | {_check(ok)} |" for name, measured, ok in targets(results)]
    lines += ["", generator_note(results), "", "## Webhook acknowledgement latency by offered rate", "",
              "Open loop, fixed rate, signed webhooks, keep-alive connections; the gateway's workers not running.",
              "", "| app | offered req/s | achieved req/s | p50 | p95 | p99 | max | errors |",
              "|---|---|---|---|---|---|---|---|"]
    for target in NAMES:
        for step in results["sweep"][target]["steps"]:
            lines.append(f"| {NAMES[target]} | {step['offered_rps']:.0f} | {step['achieved_rps']:.0f} | "
                         f"{_ms(step['p50_ms'])} | {_ms(step['p95_ms'])} | {_ms(step['p99_ms'])} | "
                         f"{_ms(step['max_ms'])} | {step['errors']} |")
    lines += ["", "| app | closed-loop req/s (rounds) | p99 | highest rate with p99 < 100 ms | web CPU per request "
              "| Redis CPU per request | gunicorn worker RSS MB |", "|---|---|---|---|---|---|---|"]
    for target in NAMES:
        sweep = results["sweep"][target]
        rss = ", ".join(f"{v:.0f}" for v in results["web_rss_mb"].get(target, []))
        probe = sweep["probe"]
        rounds = "/".join(f"{v:.0f}" for v in probe.get("rounds_rps", []))
        lines.append(f"| {NAMES[target]} | {probe['achieved_rps']:.0f} ({rounds}) | {_ms(probe['p99_ms'])} | "
                     f"{sweep['highest_sustained_rps']:.0f} | {probe['web_cpu_ms_per_request']:.2f} ms | "
                     f"{probe['redis_cpu_ms_per_request']:.3f} ms | {rss} |")
    drain = results["drain"]
    lines += ["", "## Workers", "",
              f"Backlog of {drain['backlog']} messages ({drain['answered']} answered) drained by {drain['workers']} "
              f"workers at {drain['messages_per_second']:.0f} msg/s = **{drain['messages_per_second_per_worker']:.0f} "
              f"msg/s per worker** ({drain['worker_cpu_ms_per_message']:.1f} ms CPU per message, several messages "
              f"per conversation and drain; all {drain['jobs']} done after "
              f"{drain['seconds_until_queue_idle']:.1f} s = {drain['jobs_per_second']:.0f} msg/s; RQ counted "
              f"{drain['jobs_executed']} jobs executed: one per text, plus retries; a job that finds its conversation "
              f"held or drained ends at once). Worker RSS MB: "
              f"{', '.join(f'{v:.0f}' for v in results['worker_rss_mb_end'])}.", ""]
    lines += ["## End to end (overhead = reply at fake Twilio minus webhook sent minus injected latency)", "",
              "| scenario | design | ack p50 | ack p99 | ack > 1 s | overhead p50 | overhead p99 | answered |",
              "|---|---|---|---|---|---|---|---|"]
    for key in ("e2e_fast", "e2e_slow"):
        e2e = results[key]
        scenario = f"{e2e['rate']:.0f} msg/s, {e2e['upstream_latency_s'] * 1000:.0f} ms upstream"
        for design in ("gateway", "naive"):
            ack, over = e2e[f"{design}_ack"], e2e[f"{design}_overhead"]
            lines.append(f"| {scenario} | {NAMES[design]} | {_ms(ack['p50_ms'])} | {_ms(ack['p99_ms'])} | "
                         f"{ack['over_1s']} | {_ms(over['p50_ms'])} | {_ms(over['p99_ms'])} | "
                         f"{over['answered']}/{over['messages']} |")
        lines.append(f"| {scenario} | worker CPU per message | | | | "
                     f"{e2e['gateway_worker_cpu_ms_per_message']:.1f} ms CPU | | |")
    window = results.get("e2e_default_window")
    if window:
        over = window["overhead"]
        lines += ["", f"With the default quiet window (`INBOUND_QUIET_SECONDS`, workers restarted; the rows above "
                  f"run with it at 0), one text per conversation at {window['rate']:.0f} msg/s, 100 ms upstream: "
                  f"end to end minus upstream p50 {_ms(over['p50_ms'])}, p95 {_ms(over['p95_ms'])}, "
                  f"{over['answered']}/{over['messages']} answered (the window is waited out before each turn)."]
    fakes = results["fakes"]
    lines += ["", f"Fakes: {fakes['requests']} requests on {fakes['cpu_seconds']:.1f} s CPU "
              f"({1e6 * fakes['cpu_seconds'] / max(1, fakes['requests']):.0f} us per request).", ""]
    return "\n".join(lines)


def chart(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(9, 5.5), dpi=110)
    colours = {"bare": "tab:green", "gateway": "tab:blue", "naive": "tab:red"}
    for target, sweep in results["sweep"].items():
        steps = [s for s in sweep["steps"] if math.isfinite(s["p99_ms"])]
        rates = [s["offered_rps"] for s in steps]
        axis.plot(rates, [s["p99_ms"] for s in steps], "o-", color=colours[target], label=f"{NAMES[target]} p99")
        axis.plot(rates, [s["p50_ms"] for s in steps], "o--", color=colours[target], alpha=0.6,
                  label=f"{NAMES[target]} p50")
    for level, label in ((100, "100 ms: sustained"), (15, "15 ms: p99 target at 500 req/s")):
        axis.axhline(level, color="grey", linewidth=0.8, linestyle=":")
        axis.annotate(label, (0.01, level), xycoords=("axes fraction", "data"), fontsize=7, color="grey",
                      va="bottom")
    axis.set_yscale("log")
    axis.set_xlabel("offered webhooks per second (open loop)")
    axis.set_ylabel("webhook acknowledgement latency (ms, log)")
    axis.set_title(f"Webhook latency vs offered load ({results['mode']} run, 2 cores)")
    axis.legend(fontsize=8)
    axis.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
