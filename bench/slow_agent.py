"""Slow-agent scenario: one worker process waiting on hundreds of agent turns at once (issue 13).

    .venv/bin/python bench/run.py --scenario slow-agent [--quick] [--worker-threads 256]
    .venv/bin/python -m bench.slow_agent [--quick] [--worker-threads 256]

An agent turn mostly waits on UponAI, so a worker process's capacity is the turns it waits on at once
divided by the agent's latency. With 3 s on every completion (the lean fakes inject it), this runs

1. steady: 50 msg/s for a while into the gateway, ONE worker process (``WORKER_THREADS`` job threads);
2. naive: the same 50 msg/s at 3 s into the naive inline design (given enough gunicorn threads to hold it);
3. peak: a faster step (70 msg/s: about 210 turns in flight) into the gateway;

and reports the turns in flight (peak, counted at the fake UponAI), the messages per second answered, the
worker's RSS (peak, sampled), the gateway's overhead (end to end minus the agent's 3 s) p50/p99, the
exactly-once check at the fake Twilio, and the CPU per answered message of the gateway (webhook + worker)
against the naive design's (its whole request), with the ratio. Targets: >= 200 in flight, <= 400 MB,
50 msg/s held with overhead p99 < 100 ms, exactly once; gateway CPU <= 2x naive's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import sys
import threading
from collections import Counter
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import measure, procs  # noqa: E402
from bench.run import RESULTS, Bench, Plan  # noqa: E402

AGENT_LATENCY_SECONDS = 3.0
STEADY_RATE = 50.0
PEAK_RATE = 70.0
CONVERSATIONS = 2000  # each conversation texts again only every 40 s at 50 msg/s: every text is its own turn
NAIVE_WEB_THREADS = 100  # per gunicorn process (2 of them): 150 requests wait on the agent at once at 50/s, 3 s
TARGETS = {"in_flight": 200, "rss_mb": 400.0, "rate": 50.0, "overhead_p99_ms": 100.0, "cpu_ratio": 2.0}


class SlowAgentBench(Bench):
    """The run's processes: one worker process with ``worker_threads`` job threads, a naive web that can hold 50/s."""

    def __init__(self, plan: Plan, results: Path, worker_threads: int):
        super().__init__(plan, 1, results)
        self.worker_threads = worker_threads

    def settings(self, target: str) -> dict[str, str]:
        settings = {**super().settings(target), "WORKER_THREADS": str(self.worker_threads)}
        if target == "naive":
            settings["WEB_THREADS"] = str(NAIVE_WEB_THREADS)
        return settings

    def fakes_in_flight(self) -> dict:
        stats = self.fakes_stats()
        return {"now": stats["completions_in_flight"], "peak": stats["peak_completions_in_flight"]}


class Sampler:
    """Samples the worker's RSS and the turns in flight at the fake every ``every`` seconds, in a thread."""

    def __init__(self, bench: SlowAgentBench, every: float = 0.25):
        self.bench, self.every = bench, every
        self.rss_mb: list[float] = []
        self.in_flight: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        pids = [w.pid for w in self.bench.workers]
        while not self._stop.wait(self.every):
            self.rss_mb.extend(procs.rss_mb(pids))
            with contextlib.suppress(OSError):
                self.in_flight.append(self.bench.fakes_in_flight()["now"])


def _cpu(pids: list[int]) -> float:
    return procs.cpu_seconds(pids, children=True)  # a worker's scheduler child counts (gunicorn workers have none)


async def gateway_step(bench: SlowAgentBench, rate: float, seconds: float, tag: str) -> dict:
    """``rate`` msg/s for ``seconds`` into the gateway; every reply awaited; CPU, RSS, in flight, overhead."""
    web_pids = [p.pid for p in procs.gunicorn_workers(bench.webs["gateway"])]
    worker_pids = [w.pid for w in bench.workers]
    redis_pid = bench.infra[0].pid
    bench.set_upstream_latency(AGENT_LATENCY_SECONDS)  # also resets the fake's peak in flight
    web_before, worker_before, redis_before = _cpu(web_pids), _cpu(worker_pids), _cpu([redis_pid])
    with Sampler(bench) as sampler:
        ack = await bench.step("gateway", rate, seconds, CONVERSATIONS, tag)
        tokens = {o.token for o in ack.outcomes if o.status == 200 and not o.error}
        replies = bench.wait_for_replies(tokens, bench.plan.drain_timeout_seconds)
        bench.wait_until_idle(bench.plan.drain_timeout_seconds)
    web_cpu, worker_cpu = _cpu(web_pids) - web_before, _cpu(worker_pids) - worker_before
    redis_cpu = _cpu([redis_pid]) - redis_before
    peak = bench.fakes_in_flight()["peak"]
    firsts = sorted(min(times) for times in replies.values())
    overheads = [1000 * (min(times) - bench.send_times[token] - AGENT_LATENCY_SECONDS)
                 for token, times in replies.items()]
    answered = max(1, len(replies))
    return {
        "rate": rate, "seconds": seconds, "sent": len(ack.outcomes), "acknowledged": len(tokens),
        "ack": measure.summarize_step(ack), "answered": len(replies),
        "answered_per_second": (len(firsts) - 1) / (firsts[-1] - firsts[0]) if len(firsts) > 1 else math.nan,
        "overhead": measure.overhead_summary(overheads, len(tokens)),
        "peak_in_flight_at_uponai": peak, "peak_in_flight_sampled": max(sampler.in_flight, default=0),
        "worker_rss_mb_peak": max(sampler.rss_mb, default=math.nan),
        "webhook_cpu_ms_per_message": 1000 * web_cpu / answered,
        "worker_cpu_ms_per_message": 1000 * worker_cpu / answered,
        "gateway_cpu_ms_per_message": 1000 * (web_cpu + worker_cpu) / answered,
        "redis_cpu_ms_per_message": 1000 * redis_cpu / answered,
        "tokens": sorted(tokens),
    }


async def naive_step(bench: SlowAgentBench, rate: float, seconds: float, tag: str) -> dict:
    """The same load into the naive design: CPU of its whole request (webhook + the inline agent call)."""
    web_pids = [p.pid for p in procs.gunicorn_workers(bench.webs["naive"])]
    bench.set_upstream_latency(AGENT_LATENCY_SECONDS)
    before = _cpu(web_pids)
    result = await bench.step("naive", rate, seconds, CONVERSATIONS, tag, timeout=AGENT_LATENCY_SECONDS + 30)
    cpu = _cpu(web_pids) - before
    ok = [o for o in result.outcomes if measure.is_ok(o, token_in_body=True)]
    overheads = [1000 * (o.latency - AGENT_LATENCY_SECONDS) for o in ok]
    return {"rate": rate, "seconds": seconds, "sent": len(result.outcomes), "answered": len(ok),
            "overhead": measure.overhead_summary(overheads, len(result.outcomes)),
            "cpu_ms_per_message": 1000 * cpu / max(1, len(ok))}


def exactly_once(bench: SlowAgentBench, tokens: set[str]) -> dict:
    counts = Counter(token for token, _t, _to in bench.sent_records())
    return {"acknowledged": len(tokens), "answered_once": sum(1 for t in tokens if counts[t] == 1),
            "missing_count": sum(1 for t in tokens if counts[t] == 0),
            "doubled_count": sum(1 for t in tokens if counts[t] > 1)}


async def warm_up(bench: SlowAgentBench) -> None:
    """Imports, connections, Lua scripts, and every job thread's first turn (it builds its HTTP clients then),
    before anything is measured: with the agent at 3 s, 100 msg/s for 2.5 s keeps about 250 threads busy."""
    bench.set_upstream_latency(AGENT_LATENCY_SECONDS)
    for target in ("gateway", "naive"):
        await bench.step(target, 100, 2.5, CONVERSATIONS, "w", timeout=AGENT_LATENCY_SECONDS + 30)
    bench.wait_for_replies(set(bench.gateway_acked), bench.plan.drain_timeout_seconds)
    bench.wait_until_idle(bench.plan.drain_timeout_seconds)


async def scenario(bench: SlowAgentBench, seconds: float) -> dict:
    results: dict = {"worker_threads": bench.worker_threads, "agent_latency_s": AGENT_LATENCY_SECONDS,
                     "load_average_before": os.getloadavg(), "targets": TARGETS}
    await warm_up(bench)
    print(f"slow agent: {STEADY_RATE:.0f} msg/s for {seconds:.0f} s at {AGENT_LATENCY_SECONDS:.0f} s, "
          f"1 worker process with WORKER_THREADS={bench.worker_threads}", flush=True)
    results["steady"] = await gateway_step(bench, STEADY_RATE, seconds, "sa")
    print(f"  naive design, same load ({NAIVE_WEB_THREADS} threads per gunicorn process)", flush=True)
    results["naive"] = await naive_step(bench, STEADY_RATE, seconds, "sn")
    print(f"  peak: {PEAK_RATE:.0f} msg/s for {seconds:.0f} s", flush=True)
    results["peak"] = await gateway_step(bench, PEAK_RATE, seconds, "sp")
    tokens = set(results["steady"].pop("tokens")) | set(results["peak"].pop("tokens"))
    results["exactly_once"] = exactly_once(bench, tokens)
    results["load_average_after"] = os.getloadavg()
    results["cpu_ratio"] = results["steady"]["gateway_cpu_ms_per_message"] / results["naive"]["cpu_ms_per_message"]
    return results


def report(results: dict) -> str:
    """The scenario's figures against its targets, as Markdown."""
    steady, peak, naive, once = results["steady"], results["peak"], results["naive"], results["exactly_once"]

    def mark(ok: bool) -> str:
        return "met" if ok else "MISSED"

    in_flight = max(steady["peak_in_flight_at_uponai"], peak["peak_in_flight_at_uponai"])
    rss = max(steady["worker_rss_mb_peak"], peak["worker_rss_mb_peak"])
    held = steady["answered"] == steady["acknowledged"] == steady["sent"] and \
        steady["answered_per_second"] >= 0.95 * steady["rate"]
    exact = once["missing_count"] == 0 and once["doubled_count"] == 0
    lines = [
        f"## Slow agent: one worker process, WORKER_THREADS={results['worker_threads']}, "
        f"{results['agent_latency_s']:.0f} s agent latency",
        "",
        f"load average before {results['load_average_before'][0]:.2f}, after {results['load_average_after'][0]:.2f}"
        " (2 shared cores)",
        "",
        "| figure | steady 50 msg/s | peak 70 msg/s | target |",
        "|---|---|---|---|",
        f"| turns in flight (peak, at the fake UponAI) | {steady['peak_in_flight_at_uponai']} | "
        f"{peak['peak_in_flight_at_uponai']} | >= 200: {mark(in_flight >= TARGETS['in_flight'])} |",
        f"| messages answered / s (answered/sent) | {steady['answered_per_second']:.1f} "
        f"({steady['answered']}/{steady['sent']}) | "
        f"{peak['answered_per_second']:.1f} ({peak['answered']}/{peak['sent']}) | 50 held: {mark(held)} |",
        f"| worker RSS peak (MB) | {steady['worker_rss_mb_peak']:.0f} | {peak['worker_rss_mb_peak']:.0f} | "
        f"<= 400: {mark(rss <= TARGETS['rss_mb'])} |",
        f"| gateway overhead p50 / p99 (ms) | {steady['overhead']['p50_ms']:.0f} / {steady['overhead']['p99_ms']:.0f}"
        f" | {peak['overhead']['p50_ms']:.0f} / {peak['overhead']['p99_ms']:.0f} | p99 < 100 at 50 msg/s: "
        f"{mark(steady['overhead']['p99_ms'] < TARGETS['overhead_p99_ms'])} |",
        f"| webhook ack p99 (ms) | {steady['ack']['p99_ms']:.1f} | {peak['ack']['p99_ms']:.1f} | |",
        f"| CPU per answered message, webhook + worker (ms) | {steady['webhook_cpu_ms_per_message']:.2f} + "
        f"{steady['worker_cpu_ms_per_message']:.2f} = {steady['gateway_cpu_ms_per_message']:.2f} | "
        f"{peak['webhook_cpu_ms_per_message']:.2f} + {peak['worker_cpu_ms_per_message']:.2f} = "
        f"{peak['gateway_cpu_ms_per_message']:.2f} | |",
        f"| Redis CPU per answered message (ms, not counted) | {steady['redis_cpu_ms_per_message']:.2f} | "
        f"{peak['redis_cpu_ms_per_message']:.2f} | |",
        "",
        f"Naive design at the same 50 msg/s, 3 s: {naive['answered']}/{naive['sent']} answered, overhead p50/p99 "
        f"{naive['overhead']['p50_ms']:.0f} / {naive['overhead']['p99_ms']:.0f} ms, CPU "
        f"{naive['cpu_ms_per_message']:.2f} ms per answered request.",
        "",
        f"**CPU per answered message: gateway {steady['gateway_cpu_ms_per_message']:.2f} ms vs naive "
        f"{naive['cpu_ms_per_message']:.2f} ms: ratio {results['cpu_ratio']:.2f}x** (target <= 2x: "
        f"{mark(results['cpu_ratio'] <= TARGETS['cpu_ratio'])})",
        "",
        f"Exactly once: {once['answered_once']}/{once['acknowledged']} answered once, "
        f"{once['missing_count']} missing, {once['doubled_count']} doubled: {mark(exact)}",
    ]
    return "\n".join(lines) + "\n"


def run(*, quick: bool, worker_threads: int, results_dir: Path) -> int:
    plan = Plan.for_mode(quick)
    seconds = 15.0 if quick else 40.0
    shutil.rmtree(results_dir / "redis", ignore_errors=True)
    shutil.rmtree(results_dir / "logs", ignore_errors=True)
    bench = SlowAgentBench(plan, results_dir, worker_threads)
    try:
        bench.start()
        bench.start_workers()
        results = asyncio.run(scenario(bench, seconds))
    finally:
        bench.stop()
    (results_dir / "slow_agent.json").write_text(json.dumps(results, indent=2, default=str))
    markdown = report(results)
    (results_dir / "slow_agent.md").write_text(markdown)
    print(markdown)
    print(f"written: {results_dir / 'slow_agent.md'}, {results_dir / 'slow_agent.json'}")
    once = results["exactly_once"]
    return 0 if once["missing_count"] == 0 and once["doubled_count"] == 0 else 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--worker-threads", type=int, default=256,
                        help="WORKER_THREADS of the one worker process in the slow-agent scenario (default 256)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="15 s steps instead of 40 s")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the report goes (bench/results)")
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run(quick=args.quick, worker_threads=args.worker_threads, results_dir=args.results)


if __name__ == "__main__":
    sys.exit(main())
