"""Speed benchmark: the gateway against a bare Flask ceiling and the naive inline design, in one run.

    .venv/bin/python bench/run.py [--quick] [--workers N]
    .venv/bin/python bench/run.py --scenario slow-agent [--quick] [--worker-threads N]  (bench/slow_agent.py)

Starts its own redis-server, the lean fakes (``bench/fakes.py``), three web processes with the
Procfile's exact gunicorn line (the gateway, ``bench.refs.bare:app``, ``bench.refs.naive:app``) and
N copies of the Procfile's ``worker`` line, then runs these phases:

1. ack sweep: each web app gets a closed-loop throughput probe and open-loop fixed-rate steps of
   signed webhooks; the gateway's workers are not started yet, so the web tiers are compared alone;
2. drain: the workers start and answer the gateway's backlog (messages/second per worker, CPU, RSS);
3. end to end at 50 msg/s with 100 ms injected on each UponAI completion (gateway, then naive);
4. end to end at 20 msg/s with 3 s agent latency (gateway, then naive while the gateway's workers drain);
5. exactly-once: every message the gateway acknowledged is answered exactly once at the fake Twilio.

Writes ``bench/results/report.md``, ``latency.png``, ``results.json`` and the processes' logs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twilio.request_validator import RequestValidator  # noqa: E402

from bench import loadgen, measure, procs, report  # noqa: E402

RESULTS = procs.ROOT / "bench" / "results"
ACCOUNT_SID = "AC" + "b" * 32
AUTH_TOKEN = "bec4" * 8  # well-formed (32 hex characters): the settings check the format
UPONAI_KEY = "bench-uponai-key"
GATEWAY_NUMBER = "+15005550006"
TARGETS = {"bare": "bench.refs.bare:app", "gateway": procs.GATEWAY_APP, "naive": "bench.refs.naive:app"}


@dataclass(frozen=True)
class Plan:
    """How long and how hard each phase runs."""

    rates: tuple[float, ...]
    step_seconds: float
    probe_seconds: float
    probe_rounds: int
    probe_concurrency: int
    e2e_fast_seconds: float
    e2e_slow_seconds: float
    drain_timeout_seconds: float
    request_timeout_seconds: float = 30.0
    stop_above_p99_ms: float = 100.0  # the sweep stops raising the rate for an app past this
    conversations: int = 1000
    e2e_conversations: int = 200

    @classmethod
    def for_mode(cls, quick: bool) -> Plan:
        if quick:
            return cls(rates=(250, 500, 1000, 2000, 3000), step_seconds=1.0, probe_seconds=0.5, probe_rounds=1,
                       probe_concurrency=16, e2e_fast_seconds=3.0, e2e_slow_seconds=2.0, drain_timeout_seconds=90)
        return cls(rates=(250, 500, 750, 1000, 1500, 2000, 2500, 3000, 4000, 5000), step_seconds=2.0,
                   probe_seconds=1.0, probe_rounds=3, probe_concurrency=16, e2e_fast_seconds=10.0,
                   e2e_slow_seconds=6.0, drain_timeout_seconds=240, stop_above_p99_ms=100.0)


class Bench:
    """The processes of one run and the helpers that drive them."""

    def __init__(self, plan: Plan, workers: int, results: Path):
        self.plan, self.worker_count, self.results = plan, workers, results
        self.logs = results / "logs"
        self.redis_port, self.uponai_port, self.twilio_port = procs.free_port(), procs.free_port(), procs.free_port()
        self.web_ports = {name: procs.free_port() for name in TARGETS}
        self.validator = RequestValidator(AUTH_TOKEN)
        self.webs: dict[str, object] = {}
        self.infra: list = []
        self.workers: list = []
        self.gateway_acked: list[str] = []  # tokens the gateway answered 200 to
        self.send_times: dict[str, float] = {}
        self._counter = 0
        self._blocks: dict[str, int] = {}
        self.default_quiet_window = False  # workers started with INBOUND_QUIET_SECONDS at its default

    # -- processes --------------------------------------------------------------------------------

    def settings(self, target: str) -> dict[str, str]:
        return {
            "REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "UPONAI_API_KEY": UPONAI_KEY, "UPONAI_AGENT_ID": "bench-agent", "UPONAI_API_STYLE": "reference",
            "UPONAI_WORKSPACE_ID": "1", "UPONAI_BASE_URL": f"http://127.0.0.1:{self.uponai_port}",
            "TWILIO_ACCOUNT_SID": ACCOUNT_SID, "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
            "TWILIO_API_BASE_URL": f"http://127.0.0.1:{self.twilio_port}", "TWILIO_FROM_NUMBER": GATEWAY_NUMBER,
            "PUBLIC_BASE_URL": f"http://127.0.0.1:{self.web_ports[target]}",
            "LOOP_BREAKER_REPLIES": "0",  # the load texts faster than a person: the loop breaker would hold it
            # The gateway's own overhead; phase 6 restarts the workers with the default window.
            **({} if self.default_quiet_window else {"INBOUND_QUIET_SECONDS": "0"}),
        }

    def start(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.infra.append(procs.start_redis(self.results / "redis", self.redis_port))
        self.infra.append(procs.start_fakes(self.uponai_port, self.twilio_port, self.settings("gateway"),
                                            self.logs / "fakes.log"))
        for name, spec in TARGETS.items():
            self.webs[name] = procs.start_web(spec, self.web_ports[name], self.settings(name),
                                              self.logs / f"web-{name}.log")

    def start_workers(self) -> None:
        """Start the workers and wait until each has registered with RQ (fail fast if one exits)."""
        from redis import Redis
        from rq import Worker

        self.workers = procs.start_workers(self.worker_count, self.settings("gateway"), self.logs)
        redis = Redis(port=self.redis_port)
        deadline = time.monotonic() + 60
        while Worker.count(connection=redis) < self.worker_count:
            self.check_workers()
            if time.monotonic() > deadline:
                raise RuntimeError("workers did not register with RQ within 60 s; see bench/results/logs")
            time.sleep(0.1)
        redis.close()

    def queue_is_idle(self) -> bool:
        """No drain job waiting or running."""
        from redis import Redis
        from rq import Queue
        from rq.registry import StartedJobRegistry

        from core.queues import QUEUE_NAME

        with Redis(port=self.redis_port) as redis:
            queue = Queue(QUEUE_NAME, connection=redis)
            return queue.count == 0 and StartedJobRegistry(queue=queue).count == 0

    def wait_until_idle(self, timeout: float) -> float:
        """Seconds until the queue is idle (or ``timeout``)."""
        started = time.monotonic()
        while not self.queue_is_idle() and time.monotonic() - started < timeout:
            self.check_workers()
            time.sleep(0.1)
        return time.monotonic() - started

    def jobs_executed(self) -> int:
        """Jobs the running workers have finished (RQ's own counters)."""
        from redis import Redis
        from rq import Worker

        with Redis(port=self.redis_port) as redis:
            return sum(w.successful_job_count + w.failed_job_count for w in Worker.all(connection=redis))

    def check_workers(self) -> None:
        for index, worker in enumerate(self.workers):
            if worker.poll() is not None:
                tail = (self.logs / f"worker-{index}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"worker {index} exited with {worker.returncode}:\n{tail}")

    def stop(self) -> None:
        procs.stop(self.workers + list(self.webs.values()))
        procs.stop(self.infra)

    # -- fakes ------------------------------------------------------------------------------------

    def set_upstream_latency(self, seconds: float) -> None:
        body = json.dumps({"completion_latency_seconds": seconds}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.uponai_port}/bench/config", data=body,
                                         headers={"Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=5).read()

    def sent_records(self) -> list[tuple[str, float, str]]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.twilio_port}/bench/sent", timeout=30) as answer:
            return [tuple(r) for r in json.load(answer)["sent"]]

    def fakes_stats(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.twilio_port}/bench/stats", timeout=5) as answer:
            return json.load(answer)

    # -- load -------------------------------------------------------------------------------------

    def payloads(self, target: str, count: int, conversations: int, tag: str) -> list[tuple[str, bytes]]:
        port = self.web_ports[target]
        public = f"http://127.0.0.1:{port}/twilio/sms"
        block = self._blocks.setdefault(tag, len(self._blocks))  # each tag talks in its own conversations
        batch = []
        for index in range(count):
            self._counter += 1
            token = f"{tag}{self._counter:08d}"
            person = f"+1555{block:02d}{index % conversations:05d}"
            form = loadgen.inbound_form(token, person, GATEWAY_NUMBER, ACCOUNT_SID)
            batch.append((token, loadgen.build_request("127.0.0.1", port, "/twilio/sms", public, form,
                                                       self.validator)))
        return batch

    def remember(self, target: str, result: loadgen.StepResult) -> None:
        if target != "gateway":
            return
        for outcome in result.outcomes:
            if outcome.status == 200 and not outcome.error:
                self.gateway_acked.append(outcome.token)
                self.send_times[outcome.token] = outcome.sent

    async def step(self, target: str, rate: float, seconds: float, conversations: int, tag: str,
                   timeout: float | None = None) -> loadgen.StepResult:
        payloads = self.payloads(target, max(1, int(rate * seconds)), conversations, tag)
        result = await loadgen.run_step("127.0.0.1", self.web_ports[target], payloads, rate,
                                        timeout=timeout or self.plan.request_timeout_seconds)
        self.remember(target, result)
        return result

    async def probe(self, target: str) -> loadgen.StepResult:
        payloads = self.payloads(target, int(20000 * self.plan.probe_seconds), self.plan.conversations, "p")
        result = await loadgen.run_closed("127.0.0.1", self.web_ports[target], payloads,
                                          self.plan.probe_concurrency, self.plan.probe_seconds)
        self.remember(target, result)
        return result

    def wait_for_replies(self, tokens: set[str], timeout: float) -> dict[str, list[float]]:
        """Poll the fake Twilio until every token has a reply or ``timeout``; token -> reply times."""
        deadline = time.monotonic() + timeout
        while True:
            replies: dict[str, list[float]] = {}
            for token, arrived, _to in self.sent_records():
                if token in tokens:
                    replies.setdefault(token, []).append(arrived)
            if len(replies) >= len(tokens) or time.monotonic() > deadline:
                return replies
            self.check_workers()
            time.sleep(0.25)


# -- phases ---------------------------------------------------------------------------------------


async def probe(bench: Bench, target: str) -> dict:
    """Closed-loop throughput of one web app, with the CPU its gunicorn workers and Redis spent per request."""
    cpu_pids = [p.pid for p in procs.gunicorn_workers(bench.webs[target])]
    cpu_before, redis_before = procs.cpu_seconds(cpu_pids), procs.cpu_seconds([bench.infra[0].pid])
    result = measure.summarize_step(await bench.probe(target), token_in_body=target == "naive")
    result["web_cpu_ms_per_request"] = 1000 * (procs.cpu_seconds(cpu_pids) - cpu_before) / max(1, result["requests"])
    result["redis_cpu_ms_per_request"] = (1000 * (procs.cpu_seconds([bench.infra[0].pid]) - redis_before)
                                          / max(1, result["requests"]))
    print(f"  {target:8s} closed-loop probe ({bench.plan.probe_concurrency} connections): "
          f"{result['achieved_rps']:.0f} req/s, p99 {result['p99_ms']:.1f} ms, web CPU "
          f"{result['web_cpu_ms_per_request']:.2f} ms/req, Redis CPU {result['redis_cpu_ms_per_request']:.3f} ms/req",
          flush=True)
    await asyncio.sleep(0.3)
    return result


async def probes(bench: Bench) -> dict[str, dict]:
    """Warm each app up, then probe them in interleaved rounds (drift on a shared machine hits all alike)."""
    for target in TARGETS:
        await bench.step(target, 200, 0.5, bench.plan.conversations, "w")  # imports, connections, scripts
    rounds = [{target: await probe(bench, target) for target in TARGETS} for _ in range(bench.plan.probe_rounds)]
    best = {}
    for target in TARGETS:  # the median round by throughput
        ordered = sorted((r[target] for r in rounds), key=lambda p: p["achieved_rps"])
        best[target] = {**ordered[len(ordered) // 2], "rounds_rps": [p["achieved_rps"] for p in ordered]}
    return best


async def sweep(bench: Bench, target: str, probe_result: dict) -> dict:
    plan = bench.plan
    naive = target == "naive"
    steps = []
    for rate in plan.rates:
        summary = measure.summarize_step(await bench.step(target, rate, plan.step_seconds, plan.conversations, "s"),
                                         token_in_body=naive)
        steps.append(summary)
        print(f"  {target:8s} {rate:6.0f} req/s: p50 {summary['p50_ms']:7.2f}  p95 {summary['p95_ms']:7.2f}  "
              f"p99 {summary['p99_ms']:8.2f} ms  errors {summary['errors']}  "
              f"gen {summary['generator_cpu_us_per_request']:.0f} us/req lag p99 {summary['lag_p99_ms']:.1f} ms",
              flush=True)
        if summary["p99_ms"] > plan.stop_above_p99_ms or summary["errors"]:
            break
        await asyncio.sleep(0.3)
    return {"probe": probe_result, "steps": steps, "highest_sustained_rps": measure.highest_sustained(steps)}


def drain(bench: Bench) -> dict:
    """Start the workers on the gateway's backlog and time how fast they answer it."""
    tokens = set(bench.gateway_acked)
    started = time.monotonic()
    bench.start_workers()
    pids = [w.pid for w in bench.workers]
    replies = bench.wait_for_replies(tokens, bench.plan.drain_timeout_seconds)
    cpu_answered = procs.cpu_seconds(pids, children=True)
    times = sorted(t for values in replies.values() for t in values)
    span = times[-1] - times[0] if len(times) > 1 else math.nan
    # One job was queued per message; those that find their conversation drained already still cost a job.
    bench.wait_until_idle(bench.plan.drain_timeout_seconds)
    result = {
        "backlog": len(tokens), "answered": len(replies), "seconds_first_to_last_reply": span,
        "seconds_from_worker_start": (times[-1] - started) if times else math.nan,
        "seconds_until_queue_idle": time.monotonic() - started, "jobs": len(tokens),
        "workers": bench.worker_count, "messages_per_second": len(times) / span if span else math.nan,
        "worker_cpu_ms_per_message": 1000 * cpu_answered / max(1, len(times)),
        "worker_cpu_ms_per_job": 1000 * procs.cpu_seconds(pids, children=True) / max(1, len(tokens)),
        "worker_rss_mb": procs.rss_mb(pids), "jobs_executed": bench.jobs_executed(),
    }
    result["jobs_per_second"] = len(tokens) / result["seconds_until_queue_idle"]
    result["messages_per_second_per_worker"] = result["messages_per_second"] / bench.worker_count
    return result


async def end_to_end(bench: Bench, latency: float, rate: float, seconds: float, *, overlap_naive: bool) -> dict:
    """Gateway then naive at ``rate`` with ``latency`` on each completion; overhead = e2e minus latency."""
    plan = bench.plan
    bench.set_upstream_latency(latency)
    tag = "a" if latency < 1 else "b"
    pids = [w.pid for w in bench.workers]
    cpu_before = procs.cpu_seconds(pids, children=True)
    gateway = await bench.step("gateway", rate, seconds, plan.e2e_conversations, tag + "g")
    tokens = {o.token for o in gateway.outcomes if o.status == 200 and not o.error}
    reply_timeout = plan.drain_timeout_seconds
    if overlap_naive:  # the naive run takes long; the gateway's workers drain meanwhile
        naive = await bench.step("naive", rate, seconds, plan.e2e_conversations, tag + "n",
                                 timeout=plan.request_timeout_seconds)
        replies = bench.wait_for_replies(tokens, reply_timeout)
        bench.wait_until_idle(reply_timeout)
    else:
        replies = bench.wait_for_replies(tokens, reply_timeout)
        bench.wait_until_idle(reply_timeout)
        naive = await bench.step("naive", rate, seconds, plan.e2e_conversations, tag + "n")
    gateway_cpu = procs.cpu_seconds(pids, children=True) - cpu_before
    overheads = [1000 * (min(times) - bench.send_times[token] - latency) for token, times in replies.items()]
    naive_ok = [o for o in naive.outcomes if measure.is_ok(o, token_in_body=True)]
    bench.set_upstream_latency(0.0)
    return {
        "upstream_latency_s": latency, "rate": rate, "seconds": seconds,
        "gateway_ack": measure.summarize_step(gateway),
        "gateway_overhead": measure.overhead_summary(overheads, len(tokens)),
        "gateway_worker_cpu_ms_per_message": 1000 * gateway_cpu / max(1, len(replies)),
        "naive_ack": measure.summarize_step(naive, token_in_body=True),
        "naive_overhead": measure.overhead_summary([1000 * (o.latency - latency) for o in naive_ok],
                                                   len(naive.outcomes)),
    }


async def end_to_end_default_window(bench: Bench, rate: float = 10, seconds: float = 3.0) -> dict:
    """End to end as a person sees it with the default quiet window (the workers restarted without the override).

    One text per conversation at ``rate``, 100 ms on each completion; overhead = reply minus send minus latency.
    """
    procs.stop(bench.workers)
    bench.default_quiet_window = True
    bench.start_workers()  # and wait until they have registered: their start is not the window's
    bench.set_upstream_latency(0.1)
    count = max(1, int(rate * seconds))
    step = await bench.step("gateway", rate, seconds, count, "w")
    tokens = {o.token for o in step.outcomes if o.status == 200 and not o.error}
    replies = bench.wait_for_replies(tokens, bench.plan.drain_timeout_seconds)
    bench.set_upstream_latency(0.0)
    return {"rate": rate, "seconds": seconds, "upstream_latency_s": 0.1, "overhead": measure.overhead_summary(
        [1000 * (min(times) - bench.send_times[token] - 0.1) for token, times in replies.items()], len(tokens))}


def exactly_once(bench: Bench) -> dict:
    acked = set(bench.gateway_acked)
    counts = Counter(token for token, _t, _to in bench.sent_records())
    return {"acknowledged": len(acked), "answered_once": sum(1 for t in acked if counts[t] == 1),
            "missing": sorted(t for t in acked if counts[t] == 0)[:20],
            "missing_count": sum(1 for t in acked if counts[t] == 0),
            "doubled": sorted(t for t in acked if counts[t] > 1)[:20],
            "doubled_count": sum(1 for t in acked if counts[t] > 1),
            "unexpected_count": sum(1 for t in counts if t not in acked)}


async def run(bench: Bench, quick: bool, load_average: float) -> dict:
    results: dict = {"mode": "quick" if quick else "full", "workers": bench.worker_count,
                     "web_command": procs.web_command(), "plan": bench.plan.__dict__,
                     "load_average_before": load_average, "commit": _commit()}
    began = time.monotonic()
    print("phase 1: webhook ack sweep (workers not started)", flush=True)
    probed = await probes(bench)
    # The gateway last, so that its backlog waits as briefly as possible for the workers.
    results["sweep"] = {target: await sweep(bench, target, probed[target]) for target in ("bare", "naive", "gateway")}
    results["web_rss_mb"] = {name: procs.rss_mb([p.pid for p in procs.gunicorn_workers(web)])
                             for name, web in bench.webs.items()}
    print(f"phase 2: {bench.worker_count} workers drain the gateway's backlog of {len(bench.gateway_acked)}",
          flush=True)
    results["drain"] = drain(bench)
    print(f"  {results['drain']['messages_per_second']:.0f} msg/s", flush=True)
    print("phase 3: end to end, 50 msg/s, 100 ms on each completion", flush=True)
    results["e2e_fast"] = await end_to_end(bench, 0.1, 50, bench.plan.e2e_fast_seconds, overlap_naive=False)
    print("phase 4: end to end, 20 msg/s, 3 s agent latency", flush=True)
    results["e2e_slow"] = await end_to_end(bench, 3.0, 20, bench.plan.e2e_slow_seconds, overlap_naive=True)
    print("phase 5: exactly-once check", flush=True)
    results["exactly_once"] = exactly_once(bench)
    print("phase 6: end to end with the default quiet window (INBOUND_QUIET_SECONDS), 100 ms upstream", flush=True)
    results["e2e_default_window"] = await end_to_end_default_window(bench)
    print(f"  p50 {results['e2e_default_window']['overhead']['p50_ms']:.0f} ms over the agent's latency", flush=True)
    results["worker_rss_mb_end"] = procs.rss_mb([w.pid for w in bench.workers])
    results["fakes"] = bench.fakes_stats()
    results["seconds"] = time.monotonic() - began
    return results


def _commit() -> str:
    """The measured tree: HEAD, marked when files differ from it (others may be editing the tree)."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=procs.ROOT, capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + (" + uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def main(argv: list[str] | None = None) -> int:
    from bench import slow_agent  # it builds on this module's Bench

    parser = argparse.ArgumentParser(description="Speed benchmark of the gateway (see bench/README.md).")
    parser.add_argument("--quick", action="store_true", help="short steps; runs in under about two minutes")
    parser.add_argument("--workers", type=int, default=8,
                        help="worker processes, copies of the Procfile's worker line (default 8)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the report goes (bench/results)")
    parser.add_argument("--scenario", choices=("speed", "slow-agent"), default="speed",
                        help="speed: the phases above (default); slow-agent: bench/slow_agent.py")
    slow_agent.add_arguments(parser)
    args = parser.parse_args(argv)
    if args.scenario == "slow-agent":
        return slow_agent.run(quick=args.quick, worker_threads=args.worker_threads, results_dir=args.results)
    plan = Plan.for_mode(args.quick)
    shutil.rmtree(args.results / "redis", ignore_errors=True)
    shutil.rmtree(args.results / "logs", ignore_errors=True)
    bench = Bench(plan, args.workers, args.results)
    load_average = os.getloadavg()[0]  # other work on the machine skews every number: say how much there was
    try:
        bench.start()
        results = asyncio.run(run(bench, args.quick, load_average))
    finally:
        bench.stop()
    (args.results / "results.json").write_text(json.dumps(results, indent=2, default=str))
    markdown = report.markdown(results)
    (args.results / "report.md").write_text(markdown)
    report.chart(results, args.results / "latency.png")
    print(markdown)
    print(f"written: {args.results / 'report.md'}, {args.results / 'latency.png'}, {args.results / 'results.json'}")
    return 0 if results["exactly_once"]["missing_count"] == 0 and results["exactly_once"]["doubled_count"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
