"""GET /admin/failed says per job whether its messages still need an operator (issue 10, point 10)."""

from __future__ import annotations

import threading
import time

import pytest
from rq.registry import StartedJobRegistry

from gateway import create_app
from sandbox.httpfake import Fault
from tests.conftest import inbound_form, post_signed, wait_for

TOKEN = "admin-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PERSON = "+14155550166"


@pytest.fixture
def admin(env, redis):
    return create_app({**env, "ADMIN_API_TOKEN": TOKEN}).test_client()


def failed_jobs(admin) -> list[dict]:
    response = admin.get("/admin/failed", headers=AUTH)
    assert response.status_code == 200, response.get_json()
    return response.get_json()["jobs"]


def test_a_killed_workers_job_is_retried_by_rq_and_needs_no_operator(start_worker_processes, admin, client, redis,
                                                                     uponai, twilio):
    release = threading.Event()
    uponai.responder = lambda chat, text: (release.wait(30), [f"re: {text}"])[1]
    pool = start_worker_processes(1)
    assert post_signed(client, "/twilio/sms", inbound_form("still there?", from_=PERSON)).status_code == 200
    wait_for(lambda: uponai.calls("complete"), message="the turn to start")
    pool.crash(pool.processes[0])
    release.set()
    # What a worker's maintenance does once the dead job's execution has expired (ABANDONED_AFTER_SECONDS past
    # its last beat, when the dead run's conversation lock has expired too): RQ retries the job (its retries are
    # the drain job's), it is not failed.
    wait_for(lambda: not list(redis.scan_iter("smsgw:lock:*")), timeout=30, message="the dead run's lock to expire")
    StartedJobRegistry("sms", connection=redis).cleanup(timestamp=time.time() + 3600)
    assert failed_jobs(admin) == []

    pool.spawn()  # the retry: the same job, the same conversation lock, the turn read back
    wait_for(lambda: twilio.sent_to(PERSON), timeout=60, message="the answer after the crash")
    assert failed_jobs(admin) == []
    assert twilio.sent_to(PERSON) == ["re: still there?"]


def test_given_up_messages_need_an_operator_until_replayed(start_workers, admin, client, redis, uponai, twilio):
    start_workers(1)
    uponai.inject("complete", *[Fault(status=500)] * 4)  # every attempt (RETRY_INTERVALS_SECONDS has 3 waits)
    assert post_signed(client, "/twilio/sms", inbound_form("please answer", from_=PERSON)).status_code == 200
    wait_for(lambda: failed_jobs(admin), message="the drain job to fail")

    [job] = failed_jobs(admin)
    assert job["messages"] == "given_up" and job["needs_operator"] is True
    assert admin.post(f"/admin/failed/{job['job_id']}/requeue", headers=AUTH).status_code == 200
    wait_for(lambda: len(twilio.sent_to(PERSON)) == 2, message="the answer after the requeue")
    assert twilio.sent_to(PERSON)[1] == "You said: please answer"
    assert failed_jobs(admin) == []
