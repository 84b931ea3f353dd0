"""Readiness: a worker counts while its heartbeat is recent, not while its registry entry outlives it."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from rq import Worker

from core.queues import WORKER_TTL_SECONDS
from tests.conftest import wait_for
from tests.test_observability import samples, value
from workers.worker import JOB_MONITORING_INTERVAL_SECONDS

PERSON = "+14155550177"


def workers_gauge(client) -> float:
    return value(samples(client.get("/metrics").get_data(as_text=True)), "smsgw_workers")


def test_readiness_drops_workers_killed_with_sigkill(start_worker_processes, redis, client):
    pool = start_worker_processes(2)
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["workers"] == 2
    assert workers_gauge(client) == 2

    for process in list(pool.processes):
        pool.crash(process)  # no goodbye: their registry entries stay for minutes

    wait_for(lambda: client.get("/readyz").status_code == 503, timeout=WORKER_TTL_SECONDS + 20,
             interval=0.5, message="readiness to notice that no worker is alive")
    body = client.get("/readyz").get_json()
    assert body["status"] == "degraded" and body["workers"] == 0
    assert workers_gauge(client) == 0
    # What readiness used to count: the dead workers' entries (two per process: its sms and sms-events workers).
    assert Worker.count(connection=redis) == 2 * 2


def test_a_worker_busy_with_a_long_turn_keeps_its_heartbeat(start_workers, redis, client, uponai, text_in):
    release = threading.Event()
    uponai.responder = lambda chat, text: (release.wait(60), [f"re: {text}"])[1]
    start_workers(1, UPONAI_READ_TIMEOUT_SECONDS="60")  # the turn really lasts (not 2 s timeouts and retries)
    try:
        text_in("take your time", from_=PERSON)
        wait_for(lambda: uponai.calls("complete"), message="the turn to start")
        turn_started = datetime.now(UTC)

        def beat_during_the_turn() -> bool:
            return any(worker.get_state() == "busy" and worker.last_heartbeat > turn_started + timedelta(seconds=1)
                       for worker in Worker.all(connection=redis))

        def seen() -> str:
            return str([(w.name, w.get_state(), w.last_heartbeat) for w in Worker.all(connection=redis)])

        try:
            wait_for(beat_during_the_turn, timeout=4 * JOB_MONITORING_INTERVAL_SECONDS,
                     message="a heartbeat while the worker runs its job")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; turn started {turn_started}; workers: {seen()}") from None
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.get_json()["workers"] == 1
    finally:
        release.set()
