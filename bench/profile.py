"""Profile the gateway's web process under load and one worker with py-spy; count Redis round trips.

    .venv/bin/python bench/profile.py [--seconds 8] [--messages 1500] [--round-trips-only]

py-spy samples only threads holding the GIL (``--gil``): Python CPU, not time spent waiting on sockets.

1. The gateway's web process (the Procfile's gunicorn line, run under ``py-spy record --subprocesses``)
   takes a closed-loop load of signed webhooks; Redis ``INFO commandstats`` gives commands per webhook.
2. After a FLUSHDB, ``--messages`` webhooks, each in its own conversation (one job per message, the
   common case), are queued through an unprofiled web process; then one worker (the Procfile's worker
   line under py-spy) answers them with no upstream latency, giving messages/second of one worker and
   Redis commands per message.

Each profile is summarised (CPU samples by package and the top functions, self and inclusive) into
``bench/results/profile.md``; the raw py-spy stacks are kept beside it (``profile-web.txt``,
``profile-worker.txt``) for a flamegraph tool.
3. Round trips, in this process: the gateway app (Flask test client) takes signed webhooks and the
   real ``sms-gateway worker --burst`` answers them, while every Redis round trip (one
   ``send_packed_command``) is counted and attributed to the innermost gateway/workers/core function (and
   the RQ function under it) that made it. Then the worker loop of ``sms-gateway worker`` (in a thread)
   answers webhooks sent one at a time, as people text: the worker's round trips per message at that pace.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil  # noqa: E402
from redis import Redis  # noqa: E402

from bench import loadgen, procs  # noqa: E402
from bench.run import RESULTS, TARGETS, Bench, Plan  # noqa: E402

PACKAGES = [  # (label, pattern in a frame's file path), first match wins
    ("redis-py", "/redis/"), ("rq", "/rq/"), ("twilio", "/twilio/"), ("requests+urllib3", "/requests/"),
    ("requests+urllib3", "/urllib3/"), ("http.client", "http/client.py"), ("werkzeug", "/werkzeug/"),
    ("flask", "/flask/"), ("gunicorn", "/gunicorn/"), ("prometheus_client", "/prometheus_client/"),
    ("logging", "logging/"), ("json", "json/"), ("gateway (ours)", "/gateway/"), ("workers (ours)", "/workers/"),
    ("core (ours)", "/core/"), ("cli (ours)", "/cli/"), ("config (ours)", "/config/"),
    ("socket/selectors", "socket.py"), ("socket/selectors", "selectors.py"),
    ("threading", "threading.py"), ("email/http parsing", "/email/"), ("uuid", "uuid.py"),
]
OUTER_LOOPS = ("cli.main", "workers.worker")  # frames that hold the whole worker loop: not the caller
FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>.+?)(?::(?P<line>\d+))?\)$")


def py_spy(output: Path) -> tuple[str, ...]:
    binary = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
    return (binary, "record", "--gil", "--subprocesses", "--rate", "250", "--format", "raw", "--output", str(output),
            "--")


def stop_profiled(wrapper: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGTERM the profiled program (py-spy's child); py-spy then writes its output and exits."""
    try:
        for child in psutil.Process(wrapper.pid).children():
            child.send_signal(signal.SIGTERM)
    except psutil.NoSuchProcess:
        pass
    try:
        wrapper.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        wrapper.kill()
        wrapper.wait()


def command_counts(redis: Redis) -> Counter:
    return Counter({name.removeprefix("cmdstat_"): stats["calls"]
                    for name, stats in redis.info("commandstats").items()})


def short(path: str) -> str:
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def parse_stacks(path: Path) -> list[tuple[list[tuple[str, str]], int]]:
    """py-spy raw output: ``frame;frame;... count`` per line, outermost first; process frames dropped."""
    stacks = []
    for line in path.read_text(errors="replace").splitlines():
        head, _, count = line.rpartition(" ")
        if not head or not count.isdigit():
            continue
        frames = []
        for raw in head.split(";"):
            match = FRAME.match(raw)
            if raw.startswith("process ") or not match:
                continue
            frames.append((match["func"], short(match["file"])))
        if frames:
            stacks.append((frames, int(count)))
    return stacks


def package_of(file: str) -> str:
    probe = "/" + file
    return next((label for label, pattern in PACKAGES if pattern in probe), "other")


def summarise(path: Path, title: str, units: int, unit: str, top: int = 18) -> list[str]:
    stacks = parse_stacks(path)
    total = sum(count for _, count in stacks)
    if not total:
        return [f"## {title}", "", "no samples", ""]
    by_package, self_time, inclusive = Counter(), Counter(), Counter()
    for frames, count in stacks:
        leaf_func, leaf_file = frames[-1]
        by_package[package_of(leaf_file)] += count
        self_time[f"{leaf_func} ({leaf_file})"] += count
        for name in {f"{func} ({file})" for func, file in frames}:
            inclusive[name] += count
    ms_per_sample = 1000 / 250
    cpu_ms = total * ms_per_sample
    lines = [f"## {title}", "", f"{total} GIL-holding samples at 250 Hz = {cpu_ms / 1000:.1f} s of Python CPU "
             f"for {units} {unit} = **{cpu_ms / max(1, units):.2f} ms CPU per {unit}**.", "",
             "| package (self time) | share |", "|---|---|"]
    lines += [f"| {name} | {100 * count / total:.1f}% |" for name, count in by_package.most_common(12)]
    lines += ["", "| function (inclusive) | share |", "|---|---|"]
    lines += [f"| `{name}` | {100 * count / total:.1f}% |" for name, count in inclusive.most_common(top + 12)
              if not name.startswith(("<module>", "run (", "_bootstrap", "worker_main"))][:top]
    lines += ["", "| function (self) | share |", "|---|---|"]
    lines += [f"| `{name}` | {100 * count / total:.1f}% |" for name, count in self_time.most_common(top)]
    return lines + [""]


def redis_table(counts: Counter, units: int, unit: str) -> list[str]:
    total = sum(counts.values())
    lines = [f"Redis commands: {total / max(1, units):.1f} per {unit} "
             f"({', '.join(f'{name} {n / max(1, units):.2f}' for name, n in counts.most_common(14))}).", ""]
    return lines


async def profile_web(bench: Bench, seconds: float, out: Path) -> list[str]:
    redis = Redis(port=bench.redis_port)
    web = procs.start_web(TARGETS["gateway"], bench.web_ports["gateway"], bench.settings("gateway"),
                          bench.logs / "web-profiled.log", wrapper=py_spy(out))
    procs.wait_for_port(bench.web_ports["gateway"], web, "profiled gunicorn")
    await bench.step("gateway", 200, 1.0, 1000, "w")
    before = command_counts(redis)
    payloads = bench.payloads("gateway", int(5000 * seconds), 1000, "p")
    result = await loadgen.run_closed("127.0.0.1", bench.web_ports["gateway"], payloads, 16, seconds)
    handled = sum(1 for o in result.outcomes if o.status == 200)
    counts = command_counts(redis) - before
    stop_profiled(web)
    redis.close()
    lines = summarise(out, f"Web process (gateway) under closed-loop load: {handled / result.wall_seconds:.0f} "
                           "webhooks/s, 16 connections, under py-spy", handled, "webhook")
    return lines + redis_table(counts, handled, "webhook")


async def profile_worker(bench: Bench, messages: int, out: Path) -> list[str]:
    redis = Redis(port=bench.redis_port)
    redis.flushdb()
    web = procs.start_web(TARGETS["gateway"], bench.web_ports["gateway"], bench.settings("gateway"),
                          bench.logs / "web-plain.log")
    queued = await bench.step("gateway", 300, messages / 300, messages, "u")  # one conversation per message
    procs.stop([web])
    tokens = {o.token for o in queued.outcomes if o.status == 200 and not o.error}
    before = command_counts(redis)
    worker = procs.start_workers(1, bench.settings("gateway"), bench.logs, wrapper=py_spy(out))[0]
    bench.workers = []
    started = time.monotonic()
    replies = bench.wait_for_replies(tokens, 120)
    answered_after = time.monotonic() - started
    bench.wait_until_idle(120)
    counts = command_counts(redis) - before
    stop_profiled(worker)
    redis.close()
    lines = summarise(out, f"One worker answering {len(replies)} messages (one per conversation, no upstream "
                           f"latency) in {answered_after:.1f} s from its start = {len(replies) / answered_after:.0f} "
                           "msg/s, under py-spy", len(replies), "message")
    return lines + redis_table(counts, len(replies), "message")


class RoundTrips:
    """Counts Redis round trips while installed, by the code that made them."""

    COMMAND = re.compile(rb"\*\d+\r\n\$\d+\r\n([A-Za-z]+)\r\n")

    def __init__(self, *, skip_thread=None):
        self.by_caller: Counter = Counter()
        self.commands: Counter = Counter()
        self.total = 0
        self.skip_thread = skip_thread  # a thread whose round trips are not counted (the web's, in one process)

    def __enter__(self) -> RoundTrips:
        from redis.connection import AbstractConnection

        self._original = original = AbstractConnection.send_packed_command
        counter = self

        def counting(connection, command, check_health=True):
            counter.record(command)
            return original(connection, command, check_health)

        AbstractConnection.send_packed_command = counting
        return self

    def __exit__(self, *exc) -> None:
        from redis.connection import AbstractConnection

        AbstractConnection.send_packed_command = self._original

    def record(self, command) -> None:
        if self.skip_thread is not None and threading.current_thread() is self.skip_thread:
            return
        self.total += 1
        packed = b"".join(command) if isinstance(command, list | tuple) else bytes(command)
        names = [name.decode().upper() for name in self.COMMAND.findall(packed)]
        self.commands["+".join(names[:1] if len(names) == 1 else ["PIPELINE"])] += 1
        ours, rq_inner = None, None
        frame = sys._getframe(2)
        while frame is not None and ours is None:
            module = frame.f_globals.get("__name__", "")
            if module.startswith(("workers.", "gateway.", "core.", "cli.")) and module not in OUTER_LOOPS:
                ours = f"{module.split('.')[-1]}.{frame.f_code.co_name}"
            elif module.startswith("rq.") and rq_inner is None:
                rq_inner = frame.f_code.co_name
            frame = frame.f_back
        caller = ours or "rq worker loop"
        self.by_caller[f"{caller} > rq {rq_inner}" if rq_inner else caller] += 1

    def table(self, units: int, unit: str) -> list[str]:
        lines = [f"**{self.total / max(1, units):.1f} Redis round trips per {unit}** "
                 f"({', '.join(f'{n} {c / max(1, units):.2f}' for n, c in self.commands.most_common(10))}).", "",
                 "| made by | round trips per " + unit + " |", "|---|---|"]
        lines += [f"| `{caller}` | {count / max(1, units):.2f} |" for caller, count in self.by_caller.most_common(25)]
        return lines + [""]


async def round_trips(bench: Bench, count: int) -> list[str]:
    """Webhooks through the app in this process, then the real worker command in burst mode, counted."""
    from cli.main import main as cli_main
    from gateway import create_app

    redis = Redis(port=bench.redis_port)
    redis.flushdb()
    settings = bench.settings("gateway")
    client = create_app(settings).test_client()
    forms = [loadgen.inbound_form(f"r{i:08d}", f"+1556{i:07d}", "+15005550006", settings["TWILIO_ACCOUNT_SID"])
             for i in range(count)]
    url = settings["PUBLIC_BASE_URL"] + "/twilio/sms"
    for form in forms[:5]:  # warm-up: script loading, connections
        client.post("/twilio/sms", data=form, headers={"X-Twilio-Signature": bench.validator.compute_signature(
            url, form)})
    with RoundTrips() as web:
        for form in forms[5:]:
            signature = bench.validator.compute_signature(url, form)
            assert client.post("/twilio/sms", data=form, headers={"X-Twilio-Signature": signature}).status_code == 200
    http_before, sent_before = bench.fakes_stats()["requests"], len(bench.sent_records())
    os.environ.update(settings)
    with RoundTrips() as worker:
        cli_main(["--log-level", "WARNING", "worker", "--burst"])
    http = bench.fakes_stats()["requests"] - http_before
    answered = len(bench.sent_records()) - sent_before
    noop = _noop_jobs(redis, settings, cli_main)
    paced_answered, paced = _paced(bench, settings, client, url)
    redis.close()
    lines = ["## Redis round trips (in process)", "",
             f"Web: {count - 5} webhooks through the app (Flask test client), each in its own conversation.", ""]
    lines += web.table(count - 5, "webhook")
    lines += [f"Worker: `sms-gateway worker --burst` answered {answered} messages with {http} HTTP requests to the "
              f"fakes ({http / max(1, answered):.1f} per message: create chat, completion, send).", ""]
    lines += worker.table(answered, "message")
    lines += [f"Worker at a person's pace: the worker loop of `sms-gateway worker` (8 job threads; in this process) "
              f"answered {paced_answered} webhooks sent one at a time, each once the one before was answered, each "
              f"in its own conversation: each text's RQ job taken alone, the worker marked busy and idle again for "
              f"each, heartbeats as they come at that pace.", ""]
    lines += paced.table(paced_answered, "message")
    jobs, cpu, trips = noop
    lines += [f"A drain job whose conversation has nothing waiting (what each extra job per message and each recovery "
              f"re-queue costs): **{1000 * cpu / jobs:.2f} ms CPU and {trips.total / jobs:.1f} Redis round trips per "
              f"job** ({jobs} jobs, `sms-gateway worker --burst` in this process).", ""]
    return lines + trips.table(jobs, "empty job")


def _paced(bench: Bench, settings: dict[str, str], client, url: str, count: int = 60) -> tuple[int, RoundTrips]:
    """Webhooks one at a time, each sent once the one before was answered, to the real worker loop in a thread."""
    from config import load_settings
    from core.queues import ADMIN_QUEUE_NAME, QUEUE_NAME, WORKER_TTL_SECONDS
    from core.redis import connect_redis
    from workers import jobs
    from workers.worker import ThreadWorker, redis_connections_needed, work_until_stopped

    loaded = load_settings(settings, dotenv_path=None)
    connection = connect_redis(loaded, max_connections=redis_connections_needed(8))
    jobs.install_services(jobs.build_services(loaded, connection))
    stop = threading.Event()
    worker = threading.Thread(target=work_until_stopped, name="paced-worker", args=(
        ThreadWorker, connection, [ADMIN_QUEUE_NAME, QUEUE_NAME], stop), kwargs={
        "with_scheduler": False, "burst": False, "max_jobs": None, "logging_level": "WARNING",
        "ttl": WORKER_TTL_SECONDS, "concurrency": 8})
    forms = [loadgen.inbound_form(f"q{i:08d}", f"+1557{i:07d}", "+15005550006", settings["TWILIO_ACCOUNT_SID"])
             for i in range(count + 2)]
    sent = len(bench.sent_records())

    def send_and_wait(form) -> None:
        nonlocal sent
        signature = bench.validator.compute_signature(url, form)
        assert client.post("/twilio/sms", data=form, headers={"X-Twilio-Signature": signature}).status_code == 200
        deadline = time.monotonic() + 30
        while len(bench.sent_records()) <= sent:
            if time.monotonic() > deadline:
                raise RuntimeError("a paced message was not answered within 30 s")
            time.sleep(0.005)
        sent += 1

    worker.start()
    try:
        for form in forms[:2]:  # warm-up: the worker registers, scripts load, connections open
            send_and_wait(form)
        with RoundTrips(skip_thread=threading.current_thread()) as trips:  # the webhooks are the web's
            for form in forms[2:]:
                send_and_wait(form)
    finally:
        stop.set()
        worker.join(60)
        connection.close()
    return count, trips


def _noop_jobs(redis: Redis, settings: dict[str, str], cli_main, count: int = 400) -> tuple[int, float, RoundTrips]:
    """Queue drain jobs for conversations with empty inboxes and time the real worker on them."""
    from rq import Queue

    from config import load_settings
    from core.queues import QUEUE_NAME, enqueue_drain

    queue = Queue(QUEUE_NAME, connection=redis)
    loaded = load_settings(settings, dotenv_path=None)
    for index in range(count):
        enqueue_drain(queue, f"empty{index:06d}", loaded)
    started = time.process_time()
    with RoundTrips() as trips:
        cli_main(["--log-level", "WARNING", "worker", "--burst"])
    return count, time.process_time() - started, trips


async def main_async(args: argparse.Namespace) -> list[str]:
    bench = Bench(Plan.for_mode(quick=True), workers=0, results=args.results)
    bench.logs.mkdir(parents=True, exist_ok=True)
    bench.infra.append(procs.start_redis(args.results / "redis", bench.redis_port))
    bench.infra.append(procs.start_fakes(bench.uponai_port, bench.twilio_port, bench.settings("gateway"),
                                         bench.logs / "fakes.log"))
    try:
        lines = ["# Profiles (py-spy --gil: samples of the thread holding the GIL, i.e. Python CPU)", "",
                 f"Web command (Procfile): `{procs.web_command()}`; worker: the Procfile's worker line.", ""]
        if not args.round_trips_only:
            lines += await profile_web(bench, args.seconds, args.results / "profile-web.txt")
            lines += await profile_worker(bench, args.messages, args.results / "profile-worker.txt")
        lines += await round_trips(bench, 205)
        return lines
    finally:
        procs.stop(bench.infra)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Profile the gateway's web process and one worker (py-spy).")
    parser.add_argument("--seconds", type=float, default=8.0, help="closed-loop load on the web process")
    parser.add_argument("--messages", type=int, default=1500, help="messages the profiled worker answers")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--round-trips-only", action="store_true",
                        help="skip the py-spy profiles: only count Redis round trips (part 3, about 20 s)")
    args = parser.parse_args(argv)
    shutil.rmtree(args.results / "redis", ignore_errors=True)
    lines = asyncio.run(main_async(args))
    (args.results / "profile.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
