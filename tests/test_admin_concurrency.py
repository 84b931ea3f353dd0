"""Admin requests under concurrency: one Idempotency-Key is one outbound start, and waits are bounded."""

from __future__ import annotations

import threading

import pytest
from rq import Queue

from core.queues import ADMIN_QUEUE_NAME
from gateway import create_app
from tests.conftest import wait_for, wait_idle

TOKEN = "admin-concurrency-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CONCURRENT = 20
ROUNDS = 4


@pytest.fixture
def admin_env(env):
    return {**env, "ADMIN_API_TOKEN": TOKEN, "ADMIN_WAIT_SECONDS": "20"}


def post_at_once(app, count: int, body: dict, headers: dict) -> list:
    """``count`` identical requests released together from as many threads; their answers."""
    barrier = threading.Barrier(count)
    answers: list = [None] * count

    def post(index: int) -> None:
        client = app.test_client()
        barrier.wait()
        answers[index] = client.post("/admin/sms", json=body, headers=headers)

    threads = [threading.Thread(target=post, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def test_twenty_concurrent_requests_with_one_key_start_one_conversation_every_time(start_workers, admin_env, redis,
                                                                                   uponai, twilio):
    start_workers(2)  # two workers, so that two jobs of one key could run side by side
    app = create_app({**admin_env, "ADMIN_MAX_WAITING": str(CONCURRENT), "WEB_THREADS": str(CONCURRENT + 1)})
    persons = [f"+1415555{index:04d}" for index in range(200, 200 + ROUNDS)]

    for round_number, person in enumerate(persons):
        answers = post_at_once(app, CONCURRENT, {"to": person, "message": "Once"},
                               {**AUTH, "Idempotency-Key": f"race-{round_number}"})

        bodies = [answer.get_json() for answer in answers]
        assert [answer.status_code for answer in answers] == [202] * CONCURRENT, bodies
        assert {body["status"] for body in bodies} == {"sent"}, bodies
        assert len({body["job_id"] for body in bodies}) == 1, bodies
        assert len({body["chat_id"] for body in bodies}) == 1, bodies
        assert len({tuple(body["message_sids"]) for body in bodies}) == 1, bodies

    wait_idle(redis)
    for person in persons:
        assert twilio.sent_to(person) == ["Once"]
    created = uponai.calls("create_chat")
    assert len(created) == ROUNDS
    assert sorted(chat.status for chat in uponai.chats.values()) == ["ongoing"] * ROUNDS  # none orphaned


def test_past_the_waiting_bound_requests_with_one_key_are_answered_queued_with_the_same_job(start_workers, admin_env,
                                                                                             redis, uponai, twilio):
    start_workers(2)
    app = create_app(admin_env)  # ADMIN_MAX_WAITING is 2 by default: most of these answer at once

    answers = post_at_once(app, 8, {"to": "+14155550100", "message": "Once"}, {**AUTH, "Idempotency-Key": "k"})

    bodies = [answer.get_json() for answer in answers]
    assert [answer.status_code for answer in answers] == [202] * 8, bodies
    assert {body["status"] for body in bodies} <= {"sent", "queued"} and len({b["job_id"] for b in bodies}) == 1
    assert "queued" in {body["status"] for body in bodies}
    queued = next(body for body in bodies if body["status"] == "queued")
    assert queued["job_url"] == f"/admin/jobs/{queued['job_id']}"
    job = wait_for(lambda: app.test_client().get(queued["job_url"], headers=AUTH).get_json().get("ok"),
                   message="the queued job's result")
    wait_idle(redis)
    assert twilio.sent_to("+14155550100") == ["Once"] and job["message_sids"] == [twilio.messages[0].sid]
    assert len(uponai.calls("create_chat")) == 1


def test_with_no_place_to_wait_changes_are_queued_and_reads_refused(start_workers, admin_env, redis, uponai,
                                                                     twilio):
    admin = create_app({**admin_env, "ADMIN_MAX_WAITING": "0"}).test_client()
    person = "+14155550100"

    started = admin.post("/admin/sms", json={"to": person, "message": "Later"}, headers=AUTH)
    chats = admin.get("/admin/chats", headers=AUTH)

    assert started.status_code == 202, started.get_json()
    assert started.get_json()["status"] == "queued"
    assert chats.status_code == 503 and chats.headers["Retry-After"] == "1"
    assert chats.get_json()["error"]["code"] == "admin_busy" and "ADMIN_MAX_WAITING" in chats.get_json()["error"][
        "message"]
    # The refused read queued nothing.
    assert Queue(ADMIN_QUEUE_NAME, connection=redis).job_ids == [started.get_json()["job_id"]]
    start_workers(1)
    job = wait_for(lambda: admin.get(started.get_json()["job_url"], headers=AUTH).get_json().get("ok"),
                   message="the queued start to run once a worker is there")
    assert twilio.sent_to(person) == ["Later"]

    shown = admin.get(f"/admin/conversations/{person}", headers=AUTH).get_json()
    assert shown["chat_id"] == job["chat_id"] and shown["chat"] is None
    assert shown["chat_error"]["code"] == "admin_busy"
    ended = admin.post(f"/admin/conversations/{person}/end", headers=AUTH)
    assert ended.status_code == 202 and ended.get_json()["status"] == "queued"
    wait_for(lambda: uponai.chats[job["chat_id"]].status == "ended", message="the queued end to run")


def test_two_runs_of_one_outbound_start_at_once_send_once(start_workers, redis, uponai, twilio):
    from tests.conftest import GATEWAY_NUMBER

    start_workers(2)
    request = {"to": "+14155550100", "gateway": GATEWAY_NUMBER, "messaging_service_sid": None, "message": "Once",
               "agent_id": None, "dynamic_variables": {}, "metadata": {}}
    queue = Queue(ADMIN_QUEUE_NAME, connection=redis)
    uponai.latency_seconds = 0.3  # the first run is still creating the chat when the second one starts

    # The same operation queued twice (a requeue of a job that is still running, say).
    jobs = [queue.enqueue("workers.admin_ops.start_outbound_job", "op-1", request) for _ in range(2)]

    results = [wait_for(lambda job=job: job.latest_result(), message="both runs to end") for job in jobs]
    wait_idle(redis)
    assert results[0].return_value == results[1].return_value and "ok" in results[0].return_value
    assert twilio.sent_to("+14155550100") == ["Once"] and len(uponai.calls("create_chat")) == 1
