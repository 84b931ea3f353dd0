"""A wake-up drained at once on a free job thread (no RQ job of its own), and what still goes through RQ:
its retries, the messages it gives up (a failed drain job an operator can replay), a wake-up no thread is
free for."""

from __future__ import annotations

import threading

from rq import Queue
from rq.job import Job
from rq.registry import FinishedJobRegistry

from gateway import create_app
from sandbox.httpfake import Fault
from tests.conftest import inbound_form, post_signed, wait_for, wait_idle

TOKEN = "wakeups-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PERSON = "+14155550177"


def drain_jobs_ever(redis) -> int:
    """RQ drain jobs waiting, scheduled, finished (kept a minute) or failed."""
    queue = Queue("sms", connection=redis)
    ids = queue.job_ids + [job_id for registry in (FinishedJobRegistry("sms", connection=redis),
                                                   queue.scheduled_job_registry, queue.failed_job_registry)
                           for job_id in registry.get_job_ids()]
    return sum(1 for job in Job.fetch_many(ids, connection=redis) if job and job.func_name == "workers.jobs.drain")


def test_a_text_is_answered_straight_from_its_wakeup_with_no_rq_job(start_worker_processes, client, redis, twilio):
    start_worker_processes(1, WORKER_THREADS="4")
    for index in range(3):
        assert post_signed(client, "/twilio/sms", inbound_form(f"hello {index}", from_=PERSON)).status_code == 200
        wait_for(lambda i=index: len(twilio.sent_to(PERSON)) == i + 1, message="the answer")
    wait_idle(redis)

    assert twilio.sent_to(PERSON) == ["You said: hello 0", "You said: hello 1", "You said: hello 2"]
    assert drain_jobs_ever(redis) == 0


def test_a_drain_from_a_wakeup_retries_as_an_rq_job_and_answers_once(start_worker_processes, client, redis, uponai,
                                                                      twilio):
    start_worker_processes(1, WORKER_THREADS="4")
    uponai.inject("complete", Fault(status=500))
    assert post_signed(client, "/twilio/sms", inbound_form("try again", from_=PERSON)).status_code == 200
    wait_for(lambda: twilio.sent_to(PERSON), timeout=30, message="the answer after the retry")
    wait_idle(redis)

    assert twilio.sent_to(PERSON) == ["You said: try again"]
    assert len(uponai.calls("complete")) == 2
    assert drain_jobs_ever(redis) == 1  # the retry, an RQ drain job


def test_messages_a_drain_from_a_wakeup_gives_up_are_a_failed_job_an_operator_replays(
        start_worker_processes, env, client, redis, uponai, twilio):
    admin = create_app({**env, "ADMIN_API_TOKEN": TOKEN}).test_client()
    start_worker_processes(1, WORKER_THREADS="4")
    uponai.inject("complete", Fault(status=400))  # refused for good: given up in the drain from the wake-up
    form = inbound_form("please answer", from_=PERSON)
    assert post_signed(client, "/twilio/sms", form).status_code == 200
    wait_for(lambda: admin.get("/admin/failed", headers=AUTH).get_json()["jobs"], timeout=30,
             message="the failed drain job")

    [job] = admin.get("/admin/failed", headers=AUTH).get_json()["jobs"]
    assert job["function"] == "workers.jobs.drain" and job["messages"] == "given_up" and job["needs_operator"]
    assert "400" in job["reason"] and job["failed_at"] is not None
    assert drain_jobs_ever(redis) == 1  # the failed one: no RQ job ran
    assert len(twilio.sent_to(PERSON)) == 1  # the apology
    assert admin.post(f"/admin/failed/{job['job_id']}/requeue", headers=AUTH).status_code == 200
    wait_for(lambda: len(twilio.sent_to(PERSON)) == 2, timeout=30, message="the answer after the replay")
    wait_idle(redis)
    assert twilio.sent_to(PERSON)[1] == "You said: please answer"
    assert admin.get("/admin/failed", headers=AUTH).get_json()["jobs"] == []


def test_a_drain_from_a_wakeup_killed_with_its_worker_is_answered_once_by_the_recovery_sweep(
        start_worker_processes, client, redis, uponai, twilio):
    release = threading.Event()
    uponai.responder = lambda chat, text: (release.wait(30), [f"re: {text}"])[1]
    pool = start_worker_processes(1, WORKER_THREADS="4")
    assert post_signed(client, "/twilio/sms", inbound_form("are you there?", from_=PERSON)).status_code == 200
    wait_for(lambda: uponai.calls("complete"), message="the turn to start")
    pool.crash(pool.processes[0])  # SIGKILL mid-turn: no RQ job records this drain
    release.set()

    pool.spawn()  # its maintenance sweeps the conversation once its lock has expired
    wait_for(lambda: twilio.sent_to(PERSON), timeout=120, message="the answer after the crash")
    wait_idle(redis)
    assert twilio.sent_to(PERSON) == ["re: are you there?"]
    assert Queue("sms", connection=redis).failed_job_registry.count == 0  # nothing for an operator to do
