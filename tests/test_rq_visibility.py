"""Every text is an RQ job: RQ's own tools see the gateway's traffic with no worker running (issue 20)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from rq import Queue

from core.queues import QUEUE_NAME
from tests.conftest import inbound_form, post_signed

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
