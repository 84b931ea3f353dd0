"""Campaign benchmark: 10,000 numbers in one request, the web's time to accept them, the worker's memory over the
campaign, and how close the sends keep to CAMPAIGN_SEND_RATE.

Starts its own redis-server, the lean fakes (``bench/fakes.py``: the fake Twilio records each SMS's arrival time),
the Procfile's web line (gunicorn) and one ``sms-gateway worker``; posts the numbers to ``POST /admin/campaigns``;
samples the worker's RSS (its scheduler child included) every second until every number is texted; prints the
figures. Traffic stays on 127.0.0.1; every process is stopped at the end; logs go to bench/results/campaign/.

    .venv/bin/python bench/campaign.py                      # 10,000 numbers at 200/s, about a minute
    .venv/bin/python bench/campaign.py --numbers 2000 --rate 50
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import psutil
import requests
from redis import Redis
from rq import Worker

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import procs  # noqa: E402

RESULTS = procs.ROOT / "bench" / "results" / "campaign"

ACCOUNT_SID = "AC" + "b" * 32
AUTH_TOKEN = "bec4" * 8
UPONAI_KEY = "bench-uponai-key"
ADMIN_TOKEN = "bench-admin-token-0123"
GATEWAY_NUMBER = "+15005550006"
AREA_CODES = ("415", "628", "510", "650", "408", "925", "707", "831")
SAMPLE_SECONDS = 1.0
WINDOW_SECONDS = 5.0  # the pacing is also shown per window of this length
STEADY_SKIP_SECONDS = 2.0  # the first seconds, while the batch jobs start, are left out of the steady-state rate


def numbers(count: int) -> list[str]:
    """``count`` distinct valid US numbers (exchanges 200-299 of a few area codes)."""
    return [f"+1{AREA_CODES[index // 10000]}{200 + (index % 10000) // 100:03d}{index % 100:04d}"
            for index in range(count)]


def family_rss_mb(pid: int) -> float:
    try:
        process = psutil.Process(pid)
        return sum(member.memory_info().rss for member in [process, *process.children(recursive=True)]) / 2**20
    except psutil.NoSuchProcess:
        return 0.0


def sent_times(twilio_port: int) -> list[float]:
    answer = requests.get(f"http://127.0.0.1:{twilio_port}/bench/sent", timeout=30).json()
    return sorted(arrived for _token, arrived, _to in answer["sent"])


def run(count: int, rate: float, parallel: int, batch_size: int, threads: int, worker_count: int) -> int:
    work = RESULTS / time.strftime("%Y%m%d-%H%M%S")  # its processes' logs and Redis's files
    work.mkdir(parents=True, exist_ok=True)
    redis_port, uponai_port, twilio_port, web_port = (procs.free_port() for _ in range(4))
    settings = {
        "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "UPONAI_API_KEY": UPONAI_KEY, "UPONAI_AGENT_ID": "bench-agent", "UPONAI_API_STYLE": "reference",
        "UPONAI_WORKSPACE_ID": "1", "UPONAI_BASE_URL": f"http://127.0.0.1:{uponai_port}",
        "TWILIO_ACCOUNT_SID": ACCOUNT_SID, "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "TWILIO_API_BASE_URL": f"http://127.0.0.1:{twilio_port}", "TWILIO_FROM_NUMBER": GATEWAY_NUMBER,
        "ADMIN_API_TOKEN": ADMIN_TOKEN, "CAMPAIGN_SEND_RATE": str(rate), "CAMPAIGN_BATCH_SIZE": str(batch_size),
        "CAMPAIGN_PARALLEL_BATCHES": str(parallel), "WORKER_THREADS": str(threads), "LOG_LEVEL": "WARNING",
    }
    started: list = []
    try:
        started.append(procs.start_redis(work / "redis", redis_port))
        started.append(procs.start_fakes(uponai_port, twilio_port, settings, work / "fakes.log"))
        started.append(procs.start_web(procs.GATEWAY_APP, web_port, settings, work / "web.log"))
        workers = procs.start_workers(worker_count, settings, work)
        started.extend(workers)
        worker = workers[0]  # whose memory is sampled (each worker process runs the same jobs)
        listed = numbers(count)
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
        session.get(f"http://127.0.0.1:{web_port}/admin/campaigns", timeout=30).raise_for_status()  # warm up
        redis = Redis(port=redis_port)
        procs_deadline = time.monotonic() + 60
        while Worker.count(connection=redis) < worker_count and time.monotonic() < procs_deadline:
            time.sleep(0.1)  # until the workers have registered: their idle memory is then their own
        idle_rss = family_rss_mb(worker.pid)
        pids = [process.pid for process in workers]
        cpu_before = procs.cpu_seconds(pids, children=True)
        begin = time.perf_counter()
        response = session.post(f"http://127.0.0.1:{web_port}/admin/campaigns",
                                json={"numbers": listed, "message": "Your appointment is tomorrow at 10."}, timeout=60)
        web_seconds = time.perf_counter() - begin
        response.raise_for_status()
        answer = response.json()
        print(f"accepted {answer['accepted']} of {count} numbers in one request: {web_seconds:.2f} s of web time "
              f"({len(answer['skipped'])} skipped), campaign {answer['campaign_id']}")
        samples = []  # (seconds since the request, sent so far, worker RSS MB)
        deadline = time.monotonic() + 3 * count / rate + 120
        while time.monotonic() < deadline:
            time.sleep(SAMPLE_SECONDS)  # the sampling period
            view = session.get(f"http://127.0.0.1:{web_port}/admin/campaigns/{answer['campaign_id']}",
                               timeout=30).json()
            samples.append((time.perf_counter() - begin, view["counts"]["sent"], family_rss_mb(worker.pid)))
            if view["status"] == "done":
                break
        times = sent_times(twilio_port)
        report(count, rate, answer, web_seconds, idle_rss, samples, times)
        worker_cpu = procs.cpu_seconds(pids, children=True) - cpu_before
        print(f"CPU of {worker_count} worker process(es): {worker_cpu:.1f} s for {len(times)} sends, "
              f"{1000 * worker_cpu / max(1, len(times)):.1f} ms "
              f"each (a rate above about {len(times) / max(worker_cpu, 1e-9):.0f}/s needs more than one core "
              f"of workers); machine load average {psutil.getloadavg()[0]:.1f} on {psutil.cpu_count()} cores")
        return 0 if len(times) == answer["accepted"] else 1
    finally:
        procs.stop(started)


def report(count: int, rate: float, answer: dict, web_seconds: float, idle_rss: float,
           samples: list[tuple[float, int, float]], times: list[float]) -> None:
    print(f"texted {len(times)} of {answer['accepted']} accepted (the fake Twilio's count)")
    if len(times) < 2:
        return
    span = times[-1] - times[0]
    overall = (len(times) - 1) / span
    steady = [t for t in times if t >= times[0] + STEADY_SKIP_SECONDS]
    steady_rate = (len(steady) - 1) / (steady[-1] - steady[0]) if len(steady) > 1 else float("nan")
    windows = []
    edge = times[0]
    while edge + WINDOW_SECONDS <= times[-1]:
        windows.append(sum(1 for t in times if edge <= t < edge + WINDOW_SECONDS) / WINDOW_SECONDS)
        edge += WINDOW_SECONDS
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    print(f"pacing at CAMPAIGN_SEND_RATE={rate:g}/s: {overall:.1f}/s over the whole campaign "
          f"({100 * (overall - rate) / rate:+.1f}%), {steady_rate:.1f}/s after the first {STEADY_SKIP_SECONDS:g} s "
          f"({100 * (steady_rate - rate) / rate:+.1f}%), {span:.1f} s for {len(times)} sends")
    if windows:
        print(f"  per {WINDOW_SECONDS:g} s window: min {min(windows):.1f}/s, median {statistics.median(windows):.1f}/s,"
              f" max {max(windows):.1f}/s ({len(windows)} windows)")
    print(f"  gap between sends: median {1000 * statistics.median(gaps):.1f} ms "
          f"(interval {1000 / rate:.1f} ms), p99 {1000 * sorted(gaps)[int(0.99 * (len(gaps) - 1))]:.1f} ms")
    rss = [mb for _, _, mb in samples]
    quarter = max(1, len(rss) // 4)
    print(f"worker RSS (the first worker process, with its scheduler child): {idle_rss:.1f} MB idle before; "
          f"during the campaign first quarter max {max(rss[:quarter]):.1f} MB, "
          f"last quarter max {max(rss[-quarter:]):.1f} MB, "
          f"overall {min(rss):.1f}-{max(rss):.1f} MB over {len(rss)} samples")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--numbers", type=int, default=10_000, help="numbers in the one request (default 10000)")
    parser.add_argument("--rate", type=float, default=200.0, help="CAMPAIGN_SEND_RATE (default 200)")
    parser.add_argument("--parallel", type=int, default=8, help="CAMPAIGN_PARALLEL_BATCHES (default 8)")
    parser.add_argument("--batch-size", type=int, default=100, help="CAMPAIGN_BATCH_SIZE (default 100)")
    parser.add_argument("--threads", type=int, default=64, help="WORKER_THREADS (default 64)")
    parser.add_argument("--workers", type=int, default=1, help="sms-gateway worker processes (default 1)")
    args = parser.parse_args()
    return run(args.numbers, args.rate, args.parallel, args.batch_size, args.threads, args.workers)


if __name__ == "__main__":
    sys.exit(main())
