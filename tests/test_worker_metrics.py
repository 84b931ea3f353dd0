"""A worker serves its own metrics on METRICS_PORT, for hosts that run workers without a web (issue 23, item 4).

Real ``sms-gateway worker`` processes, with no ``PROMETHEUS_MULTIPROC_DIR`` (a host with no gunicorn), scraped
over HTTP as Prometheus would. What listens is read from the kernel (``/proc``), for the worker and every
process of its session (its scheduler child included).
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from config import SettingsError, load_settings
from tests.conftest import WorkerPool, free_port, settings_env, wait_for

PERSON = "+14155550177"

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="reads listening sockets from /proc (Linux); run on Linux")


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(page: dict, name: str, **labels: str) -> float:
    return page.get((name, tuple(sorted(labels.items()))), 0.0)


def session_pids(session_id: int) -> list[int]:
    """Every process of the session ``session_id`` (a worker started in a session of its own, and its children)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process ended while we looked
        if int(fields[3]) == session_id:  # after "pid (comm)": state, ppid, pgrp, session
            pids.append(int(stat.parent.name))
    return pids


def listening_ports(pids: list[int]) -> dict[int, set[int]]:
    """The TCP ports each of ``pids`` listens on, IPv4 and IPv6, from the kernel's socket tables."""
    inode_ports: dict[str, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            columns = line.split()
            if columns[3] == "0A":  # TCP_LISTEN
                inode_ports[columns[9]] = int(columns[1].rsplit(":", 1)[1], 16)
    found: dict[int, set[int]] = {}
    for pid in pids:
        ports = set()
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = fd.readlink().as_posix()
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inode_ports:
                ports.add(inode_ports[target[8:-1]])
        found[pid] = ports
    return found


def scheduler_started(pool: WorkerPool) -> list[int]:
    [worker] = pool.processes
    pids = session_pids(worker.pid)
    return pids if len(pids) >= 2 else []


def test_a_worker_with_metrics_port_serves_its_own_counters_of_a_turn(start_worker_processes, text_in, twilio):
    port = free_port()
    pool = start_worker_processes(1, METRICS_PORT=port)
    url = f"http://127.0.0.1:{port}/metrics"
    before = samples(requests.get(url, timeout=5).text)
    assert value(before, "smsgw_messages_out_total") == 0

    text_in("hello there", from_=PERSON)
    wait_for(lambda: twilio.sent_to(PERSON), message="the reply")

    def scrape() -> dict:
        return samples(requests.get(url, timeout=5).text)

    # The worker counts a job once it has returned, a send once Twilio has answered it.
    wait_for(lambda: value(scrape(), "smsgw_job_seconds_count", kind="conversation", job="drain", outcome="ok") >= 1,
             message="the worker's count of the turn")
    page = scrape()
    assert value(page, "smsgw_messages_out_total") == 1
    assert value(page, "smsgw_segments_sent_total", encoding="GSM-7") == 1
    assert value(page, "smsgw_uponai_seconds_count", operation="complete") == 1
    assert value(page, "smsgw_twilio_seconds_count", operation="send") == 1
    assert value(page, "smsgw_turn_texts_count") == 1
    assert value(page, "smsgw_queue_wait_seconds_count", kind="conversation", job="drain") >= 1
    # The process's own figures come along (memory, CPU), as from any prometheus-client process.
    assert value(page, "process_resident_memory_bytes") > 0

    # Only the worker itself listens, on that port alone: its scheduler child closed its copy of the socket.
    [worker] = pool.processes
    pids = wait_for(lambda: scheduler_started(pool), message="the scheduler child")
    assert listening_ports(pids) == {pid: ({port} if pid == worker.pid else set()) for pid in pids}


def test_a_worker_without_metrics_port_listens_on_nothing(start_worker_processes, text_in, twilio):
    pool = start_worker_processes(1)
    text_in("hello there", from_=PERSON)
    wait_for(lambda: twilio.sent_to(PERSON), message="the reply")
    pids = wait_for(lambda: scheduler_started(pool), message="the scheduler child")
    assert listening_ports(pids) == {pid: set() for pid in pids}


def test_a_taken_metrics_port_stops_the_worker_with_one_line(redis_server, uponai_server, twilio_server, tmp_path):
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        pool = WorkerPool(settings_env(redis_server, uponai_server, twilio_server, METRICS_PORT=port), 1, tmp_path)
        [worker] = pool.processes
        try:
            assert worker.wait(timeout=30) == 1
        finally:
            pool.stop()
    output = pool.output()
    assert f"metrics port {port} not usable: address already in use; the worker stops (fix METRICS_PORT)" in output
    assert "Traceback" not in output


@pytest.mark.parametrize("port", ["0", "65536", "9100x"])
def test_a_metrics_port_out_of_range_is_refused_at_start(env, port):
    with pytest.raises(SettingsError, match="METRICS_PORT"):
        load_settings({**env, "METRICS_PORT": port}, dotenv_path=None)
    assert load_settings(env, dotenv_path=None).metrics_port is None
