"""GET /admin/failed says per job whether its messages still need an operator (issue 10, point 10)."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest
from rq.registry import StartedJobRegistry

from config import load_settings
from core.state import ConversationStore
from gateway import create_app
from sandbox.httpfake import Fault
from tests.conftest import inbound_form, post_signed, wait_for
from workers.jobs import RQJobPort
from workers.wakeups import queue_woken

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


def test_a_killed_workers_job_answered_by_the_sweep_needs_no_operator(start_worker_processes, env, admin, client,
                                                                      redis, queue, uponai, twilio):
    release = threading.Event()
    uponai.responder = lambda chat, text: (release.wait(30), [f"re: {text}"])[1]
    assert post_signed(client, "/twilio/sms", inbound_form("still there?", from_=PERSON)).status_code == 200
    # Its drain as an RQ job (a wake-up that found every job thread busy, a retry, a recovery): a killed
    # worker's RQ job is what lands in the failed registry (a wake-up drained at once has no job to fail).
    store = ConversationStore(redis)
    assert queue_woken(SimpleNamespace(store=store, jobs=RQJobPort(queue, load_settings(env, dotenv_path=None)))) == 1
    pool = start_worker_processes(1)
    wait_for(lambda: uponai.calls("complete"), message="the turn to start")
    pool.crash(pool.processes[0])
    release.set()
    # What a worker's maintenance does once the dead job's execution has expired (about a minute later):
    # the job is moved to the failed registry as abandoned.
    StartedJobRegistry("sms", connection=redis).cleanup(timestamp=time.time() + 3600)

    [job] = failed_jobs(admin)
    assert "AbandonedJobError" in job["reason"]
    assert job["messages"] == "waiting" and job["needs_operator"] is False

    pool.spawn()  # its recovery sweep answers the conversation
    wait_for(lambda: twilio.sent_to(PERSON), timeout=90, message="the answer after the crash")
    wait_for(lambda: failed_jobs(admin)[0]["messages"] == "answered", message="the job to show as answered")
    [job] = failed_jobs(admin)
    assert job["needs_operator"] is False
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
