"""GET /admin/failed says per job whether its messages still need an operator (issue 10, point 10)."""

from __future__ import annotations

import threading
import time

import pytest
from rq.registry import StartedJobRegistry

from gateway import create_app
from sandbox.httpfake import Fault
from tests.conftest import inbound_form, post_signed, wait_for, wait_idle

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


# Twilio's answer to a request whose credentials it refuses: HTTP 401, error 20003 "Authenticate"
# (https://www.twilio.com/docs/errors/20003: "Permission Denied" / the AccountSid or AuthToken was incorrect).
TWILIO_20003 = {"code": 20003, "message": "Authenticate", "more_info": "https://www.twilio.com/docs/errors/20003",
                "status": 401}


def test_a_reply_twilio_refuses_for_credentials_waits_in_the_failed_registry_and_a_requeue_sends_it_once(
        start_workers, admin, client, redis, uponai, twilio, caplog):
    """The auth token was rotated: the reply is not dropped; it waits, named, for the operator (issue 21, item 2)."""
    start_workers(1)
    twilio.inject("send", Fault(status=401, body=TWILIO_20003))
    assert post_signed(client, "/twilio/sms", inbound_form("are you there?", from_=PERSON)).status_code == 200
    wait_for(lambda: failed_jobs(admin), message="the drain job to fail")

    [job] = failed_jobs(admin)
    assert "20003" in job["reason"] and job["needs_operator"] is True
    assert twilio.sent_to(PERSON) == []  # no apology either: it could not go
    assert any(r.levelname == "ERROR" and "refused the gateway's credentials" in r.getMessage() for r in caplog.records)
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'smsgw_credentials_refused_total{service="twilio"} 1.0' in metrics

    # The operator fixes the token (here: the next send is accepted) and requeues the job.
    assert admin.post(f"/admin/failed/{job['job_id']}/requeue", headers=AUTH).status_code == 200
    wait_for(lambda: twilio.sent_to(PERSON), message="the reply after the requeue")
    wait_idle(redis)
    assert twilio.sent_to(PERSON) == ["You said: are you there?"]
    assert len(uponai.calls("complete")) == 1  # the agent's answer was kept, not asked for again
    assert failed_jobs(admin) == []


def test_an_agent_call_uponai_refuses_for_credentials_waits_for_a_requeue(start_workers, admin, client, redis, uponai,
                                                                         twilio):
    start_workers(1)
    uponai.inject("complete", Fault(status=401, body={"detail": "Invalid API key"}))
    assert post_signed(client, "/twilio/sms", inbound_form("hello?", from_=PERSON)).status_code == 200
    wait_for(lambda: failed_jobs(admin), message="the drain job to fail")
    [job] = failed_jobs(admin)
    assert "401" in job["reason"] and job["needs_operator"] is True and twilio.sent_to(PERSON) == []

    assert admin.post(f"/admin/failed/{job['job_id']}/requeue", headers=AUTH).status_code == 200
    wait_for(lambda: twilio.sent_to(PERSON), message="the reply after the requeue")
    wait_idle(redis)
    assert twilio.sent_to(PERSON) == ["You said: hello?"]
