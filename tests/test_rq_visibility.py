"""Every text is an RQ job: RQ's own tools see the gateway's traffic with no worker running (issue 20)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from rq import Queue

from core.queues import QUEUE_NAME
from tests.conftest import free_port, inbound_form, post_signed, stop_process, wait_for

RQ_CLI = Path(sys.executable).with_name("rq")


def test_five_people_texting_with_no_worker_show_as_five_jobs_in_rq_info_readyz_and_metrics(client, redis, queue,
                                                                                             redis_server):
    for index in range(5):
        form = inbound_form(f"hello {index}", from_=f"+1415555{index:04d}")
        assert post_signed(client, "/twilio/sms", form).status_code == 200

    assert Queue(QUEUE_NAME, connection=redis).count == 5
    assert all(job.enqueued_at is not None for job in queue.get_jobs())  # what latency autoscalers read
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.get_json()["queue_depth"] == 5  # no worker yet: not ready
    metrics = client.get("/metrics").get_data(as_text=True)
    assert "smsgw_queue_depth 5.0" in metrics

    info = subprocess.run([str(RQ_CLI), "info", "--url", redis_server.url, "--only-queues", QUEUE_NAME],
                          capture_output=True, text=True, timeout=60, check=True).stdout
    line = next(line for line in info.splitlines() if line.startswith(QUEUE_NAME))
    assert " 5, 0 executing" in line, info  # e.g. "sms |█████ 5, 0 executing, 0 finished, 0 failed"


def test_rq_dashboard_lists_the_gateway_queue_with_its_waiting_job(client, redis, queue, redis_server, tmp_path):
    """rq-dashboard (the optional ``dashboard`` extra), run as its own command against the gateway's Redis."""
    if importlib.util.find_spec("rq_dashboard") is None:
        pytest.skip('rq-dashboard is not installed: pip install -e ".[dashboard]"')
    assert post_signed(client, "/twilio/sms", inbound_form("is anyone there?", from_="+14155550111")).status_code == 200
    port = free_port()
    with open(tmp_path / "dashboard.log", "wb") as log:
        process = subprocess.Popen([str(Path(sys.executable).with_name("rq-dashboard")), "--bind", "127.0.0.1",
                                    "--port", str(port), "--redis-url", redis_server.url],
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        def queues():
            try:
                return requests.get(f"{base}/0/data/queues.json", timeout=5).json()["queues"]
            except (requests.RequestException, ValueError):
                assert process.poll() is None, (tmp_path / "dashboard.log").read_text()
                return None

        listed = {entry["name"]: entry for entry in wait_for(queues, message="rq-dashboard to answer")}
        assert listed[QUEUE_NAME]["count"] == 1
        page = requests.get(f"{base}/0/view/queues", timeout=5)
        assert page.status_code == 200 and "RQ" in page.text
    finally:
        stop_process(process)
