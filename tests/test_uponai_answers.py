"""What the person gets when UponAI answers oddly: malformed 2xx answers, turns without text, chats gone.

Real workers, the fake UponAI and the fake Twilio: the assertions are on the SMS that reached Twilio,
the completions UponAI applied, and what the operator sees (conversation view, log, metric).
"""

from __future__ import annotations

import json

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from rq import Queue

from core.model import conversation_id
from core.state import ConversationStore
from gateway import create_app
from sandbox.httpfake import Fault
from sandbox.uponai_sim import MALFORMED_SHAPES
from tests.conftest import GATEWAY_NUMBER, wait_for

PERSON = "+14155550177"
ADMIN_TOKEN = "admin-test-token-for-uponai-answers"
FAST_RETRIES = {"RETRY_INTERVALS_SECONDS": "0.2,0.2", "AMBIGUOUS_RETRY_DELAY_SECONDS": "0.3"}  # 3 attempts


def failed_jobs(redis) -> int:
    return Queue("sms", connection=redis).failed_job_registry.count


def settled(redis, person: str = PERSON) -> bool:
    """The person's inbox is empty and no job holds the conversation (nothing more will be sent)."""
    cid = conversation_id(GATEWAY_NUMBER, person)
    return not redis.exists(ConversationStore.key("inbox", cid), ConversationStore.key("lock", cid))


def test_each_malformed_completion_answer_is_retried_then_apologised_for_once(start_workers, redis, text_in,
                                                                               uponai, twilio):
    start_workers(1, **FAST_RETRIES)
    people = {shape: f"+1415555{index:04d}" for index, shape in enumerate(MALFORMED_SHAPES, start=300)}
    for count, (shape, person) in enumerate(people.items(), start=1):
        uponai.answer_malformed("complete", shape, shape, shape, applied=False)  # every attempt: nonsense
        text_in(f"hello {shape}", from_=person)
        wait_for(lambda person=person: twilio.sent_to(person), message=f"the apology after {shape}")
        wait_for(lambda count=count: failed_jobs(redis) == count, message="the job given up")  # idle: count now
        assert len(twilio.sent_to(person)) == 1 and "sorry" in twilio.sent_to(person)[0].lower(), shape
    # Each text was posted three times (never applied, so each read-back found nothing), then given up.
    assert len(uponai.calls("complete")) == 3 * len(MALFORMED_SHAPES)
    assert uponai.completion_log == []
    assert all(len(twilio.sent_to(person)) == 1 for person in people.values())


@pytest.mark.parametrize("shape", ["empty", "html", "items_without_content"])
def test_a_malformed_answer_to_an_applied_turn_is_read_back_not_posted_twice(start_workers, redis, text_in,
                                                                           uponai, twilio, shape):
    start_workers(1, **FAST_RETRIES)
    uponai.answer_malformed("complete", shape)  # the turn happened; only the answer was mangled
    text_in("applied", from_=PERSON)
    wait_for(lambda: twilio.sent_to(PERSON), message="the reply read back from the chat")
    wait_for(lambda: settled(redis), message="the drain to finish")
    assert [text for _, text in uponai.completion_log] == ["applied"]
    assert twilio.sent_to(PERSON) == ["You said: applied"]
    assert failed_jobs(redis) == 0


def test_a_turn_without_text_is_a_warning_a_metric_and_shown_to_operators(start_worker_processes, redis, text_in,
                                                                         uponai, twilio, env, tmp_path):
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    pool = start_worker_processes(1, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    uponai.responder = lambda chat, text: [] if text == "silent" else [f"You said: {text}"]
    text_in("silent", from_=PERSON)
    wait_for(lambda: uponai.completion_log, message="the silent turn")  # not one turn with the next text
    text_in("loud", from_=PERSON)
    wait_for(lambda: twilio.sent_to(PERSON), message="the reply to the second text")
    wait_for(lambda: settled(redis), message="the drain to finish")
    assert twilio.sent_to(PERSON) == ["You said: loud"]  # the empty turn sent nothing, not even an apology
    assert [text for _, text in uponai.completion_log] == ["silent", "loud"]

    warnings = [json.loads(line) for line in pool.output().splitlines() if "had no text" in line]
    assert len(warnings) == 1 and warnings[0]["level"] == "warning"
    assert "silent" not in warnings[0]["message"] and "5550177" not in warnings[0]["message"]

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(metrics_dir))
    assert registry.get_sample_value("smsgw_uponai_empty_turns_total") == 1

    admin = create_app({**env, "ADMIN_API_TOKEN": ADMIN_TOKEN, "ADMIN_WAIT_SECONDS": "15"}).test_client()
    view = admin.get(f"/admin/conversations/{PERSON}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert view.status_code == 200
    data = view.get_json()
    assert data["empty_turns"] == 1
    assert data["last_empty_turn_at"] and data["last_empty_turn_at"].endswith("Z")


def test_a_read_back_that_finds_the_chat_gone_answers_in_a_new_chat_once(start_workers, redis, text_in, uponai,
                                                                        twilio):
    start_workers(1, **FAST_RETRIES)
    text_in("first", from_=PERSON)
    wait_for(lambda: twilio.sent_to(PERSON), message="the first reply")
    (old_chat,) = uponai.chats
    uponai.inject("complete", Fault(drop=True))  # ambiguous: the connection dropped (not applied)
    uponai.inject("get_chat", Fault(status=422, body={"status": "error", "message": "chat not found"}))
    text_in("second", from_=PERSON)
    wait_for(lambda: len(twilio.sent_to(PERSON)) == 2, message="the second reply")
    wait_for(lambda: settled(redis), message="the drain to finish")
    assert twilio.sent_to(PERSON) == ["You said: first", "You said: second"]  # no apology
    new_chats = [chat_id for chat_id in uponai.chats if chat_id != old_chat]
    assert len(new_chats) == 1
    assert uponai.completion_log == [(old_chat, "first"), (new_chats[0], "second")]
    assert failed_jobs(redis) == 0


def test_a_read_back_that_finds_the_chat_ended_answers_in_a_new_chat_once(start_workers, redis, text_in, uponai,
                                                                         twilio):
    start_workers(1, **{**FAST_RETRIES, "AMBIGUOUS_RETRY_DELAY_SECONDS": "1"})
    text_in("first", from_=PERSON)
    wait_for(lambda: twilio.sent_to(PERSON), message="the first reply")
    (old_chat,) = uponai.chats
    uponai.inject("complete", Fault(drop=True))
    text_in("second", from_=PERSON)
    wait_for(lambda: len(uponai.calls("complete")) == 2, message="the dropped completion")
    uponai.end(old_chat)  # the agent's auto-close, before the retry reads the chat back
    wait_for(lambda: len(twilio.sent_to(PERSON)) == 2, message="the second reply")
    wait_for(lambda: settled(redis), message="the drain to finish")
    assert twilio.sent_to(PERSON) == ["You said: first", "You said: second"]
    assert [text for _, text in uponai.completion_log] == ["first", "second"]
    assert len(uponai.chats) == 2
