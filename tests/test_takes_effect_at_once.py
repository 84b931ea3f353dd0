"""What a person or an operator says takes effect at once (issue 22, items 1 and 2).

A handoff holds every agent reply not yet sent, whenever the agent wrote it: while the turn waits for a retry, and
while the agent is still writing. A STOP counts from the moment the webhook accepts it: an operator's message and a
new outbound conversation are refused (409 ``opted_out``) before any drain reaches the STOP, and an agent reply
waiting for its retry is withheld. Each test drives the real webhook, admin API and in-process RQ workers against
the fake UponAI and Twilio, and asserts on what reached them.
"""

from __future__ import annotations

import threading

import pytest

from core.model import conversation_id
from gateway import create_app
from sandbox.httpfake import Fault
from tests.conftest import GATEWAY_NUMBER, inbound_form, new_store, post_signed, wait_for, wait_idle

TOKEN = "admin-at-once-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PERSON = "+14155550163"
CID = conversation_id(GATEWAY_NUMBER, PERSON)
# A retry comes 2 to 4 s after UponAI's 503: time enough for the operator or the person to act in between.
SLOW_RETRY = {"RETRY_INTERVALS_SECONDS": "3"}


@pytest.fixture
def app(env, redis):
    return create_app({**env, **SLOW_RETRY, "ADMIN_API_TOKEN": TOKEN, "ADMIN_WAIT_SECONDS": "15"})


@pytest.fixture
def admin(app):
    return app.test_client()


def text(admin, body: str) -> str:
    form = inbound_form(body, from_=PERSON)
    response = post_signed(admin, "/twilio/sms", form)
    assert response.status_code == 200, response.get_data(as_text=True)
    return form["MessageSid"]


def answered(admin, twilio, body: str = "hi") -> None:
    """The person texts and the agent answers: the conversation exists, with a chat."""
    before = len(twilio.sent_to(PERSON))
    text(admin, body)
    wait_for(lambda: len(twilio.sent_to(PERSON)) > before, message="the agent's answer")


def waiting_for_retry(redis, uponai, body: str, admin) -> str:
    """The person texts; UponAI answers 503; the turn now waits for its retry. Returns the text's sid."""
    uponai.inject("complete", Fault(status=503))
    sid = text(admin, body)
    store = new_store(redis)
    wait_for(lambda: store.conversation(CID).get("retry_at") and store.lock_holder(CID) is None,
             message="the turn to wait for its retry")
    return sid


def test_a_handoff_during_a_retry_wait_holds_the_agents_answer(start_workers, admin, redis, uponai, twilio):
    start_workers(1, **SLOW_RETRY)
    answered(admin, twilio)
    sid = waiting_for_retry(redis, uponai, "what time do you open?", admin)

    response = admin.post(f"/admin/conversations/{PERSON}/handoff", headers=AUTH)
    assert response.status_code == 200 and response.get_json()["turn_running"] is False
    wait_idle(redis)

    assert twilio.sent_to(PERSON) == ["You said: hi"]  # no answer to the text that waited
    assert [t for _, t in uponai.completion_log] == ["hi"]  # nor was the agent asked again
    store = new_store(redis)
    assert [(e["who"], e["text"], e["ref"]) for e in store.away_log(CID)] == [
        ("person", "what time do you open?", sid)]  # the operator has it
    assert store.inbox_length(CID) == 0


def test_a_handoff_while_the_agent_writes_holds_its_answer(start_workers, admin, redis, uponai, twilio):
    start_workers(1)
    answered(admin, twilio)
    writing = threading.Event()
    uponai.inject("complete", Fault(hold=writing))
    sid = text(admin, "can I speak to someone?")
    wait_for(lambda: sum(op == "complete" for op, _ in uponai.requests) == 2, message="the agent to be writing")

    response = admin.post(f"/admin/conversations/{PERSON}/handoff", headers=AUTH)
    assert response.status_code == 200 and response.get_json()["turn_running"] is True
    writing.set()
    wait_idle(redis)

    assert twilio.sent_to(PERSON) == ["You said: hi"]
    assert new_store(redis).progress(sid).parts == {"reply:0": "withheld:handoff"}


def test_a_handoff_between_the_parts_of_a_long_answer_holds_the_rest(env, redis, text_in, uponai, twilio):
    from config import load_settings
    from workers import flow
    from workers.jobs import build_services

    services = build_services(load_settings({**env, "SMS_MAX_SEGMENTS": "1"}, dotenv_path=None), redis)
    store = services.store
    twilio_sends = threading.Event()
    twilio.inject("send", Fault(hold=twilio_sends))  # the first part is on its way
    long_text = "word " * 60  # the fake agent echoes it: a reply of several parts
    sid = text_in(long_text, from_=PERSON)["MessageSid"]
    drain = threading.Thread(target=flow.drain_conversation, args=(services, CID, "job"))
    drain.start()
    wait_for(lambda: any(op == "send" for op, _ in twilio.requests), message="the first part to be sent")
    assert store.start_handoff(CID, by="admin-api")
    twilio_sends.set()
    drain.join(timeout=30)

    parts = store.progress(sid).parts
    assert parts["reply:0"].startswith("SM") and len(twilio.sent_to(PERSON)) == 1
    assert set(parts) - {"reply:0"} and all(parts[p] == "withheld:handoff" for p in set(parts) - {"reply:0"})


def test_stop_counts_from_the_webhook_not_from_the_drain(start_workers, admin, redis, uponai, twilio):
    start_workers(1, **SLOW_RETRY)
    answered(admin, twilio)
    waiting_for_retry(redis, uponai, "and on Sundays?", admin)

    text(admin, "STOP")
    # At once, before any drain reached the STOP: the flag is set and the admin API refuses.
    assert new_store(redis).conversation(CID)["opted_out"] == "1"
    said = admin.post(f"/admin/conversations/{PERSON}/messages", json={"message": "Still there?"}, headers=AUTH)
    assert said.status_code == 409 and said.get_json()["error"]["code"] == "opted_out"
    started = admin.post("/admin/sms", json={"to": PERSON, "message": "We miss you"}, headers=AUTH)
    assert started.status_code == 409 and started.get_json()["error"]["code"] == "opted_out"
    wait_idle(redis)

    assert twilio.sent_to(PERSON) == ["You said: hi"]  # the waiting answer is withheld; nothing else went
    assert [t for _, t in uponai.completion_log] == ["hi"]


def test_a_start_counts_from_the_webhook_too_and_texts_between_are_judged_as_they_came(env, redis, text_in,
                                                                                      uponai, twilio):
    """STOP, a text, START, a text, all waiting: the first text came while opted out (never forwarded), the START
    opts back in, the last is answered. The flag follows the webhook, not the drain."""
    from config import load_settings
    from workers import flow
    from workers.jobs import build_services

    services = build_services(load_settings(env, dotenv_path=None), redis)
    store = services.store
    text_in("STOP", from_=PERSON)
    assert store.conversation(CID)["opted_out"] == "1"
    text_in("is this thing on", from_=PERSON)
    text_in("start", from_=PERSON)
    assert "opted_out" not in store.conversation(CID)  # back in, before any drain
    text_in("hello again", from_=PERSON)
    text_in("yes", from_=PERSON)  # from a person who is not opted out: an answer, for the agent

    flow.drain_conversation(services, CID, "job")
    assert [t for _, t in uponai.completion_log] == ["hello again\nyes"]
    assert "opted_out" not in store.conversation(CID)


def test_a_second_stop_keeps_the_first_opt_out_time(client, redis):
    store = new_store(redis)
    post_signed(client, "/twilio/sms", inbound_form("STOP", from_=PERSON))
    first = store.conversation(CID)["opted_out_at"]
    post_signed(client, "/twilio/sms", inbound_form("stop", from_=PERSON))
    assert store.conversation(CID)["opted_out_at"] == first
